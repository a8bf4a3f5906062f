"""Validate OpenLineage events, core and every facet, against the official JSON Schemas offline."""

from __future__ import annotations

import json
from functools import cache

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from tests.conftest import SHARED

SPEC_DIR = SHARED / "openlineage-spec"


@cache
def _registry() -> tuple[Registry, dict, dict[str, dict]]:
    core = json.loads((SPEC_DIR / "OpenLineage.json").read_text())
    resources = [(core["$id"], Resource.from_contents(core))]
    facets: dict[str, dict] = {}
    for path in sorted((SPEC_DIR / "facets").glob("*.json")):
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
        for key in schema.get("properties", {}):
            facets[key] = schema
    return Registry().with_resources(resources), core, facets


def validate_event(event: dict) -> list[str]:
    """Every schema violation in ``event`` (empty when valid), facets included."""
    registry, core, facets = _registry()
    errors = [
        f"event: {e.message}"
        for e in Draft202012Validator(
            {"$ref": core["$id"] + "#/$defs/RunEvent"}, registry=registry
        ).iter_errors(event)
    ]
    containers = [("run", event["run"].get("facets", {})), ("job", event["job"].get("facets", {}))]
    for kind in ("inputs", "outputs"):
        for ds in event.get(kind, []):
            containers.append((f"{kind}:{ds['name']}", ds.get("facets", {})))
            containers.append(
                (f"{kind}:{ds['name']}", ds.get("inputFacets", {}) or ds.get("outputFacets", {}))
            )
    for where, facet_map in containers:
        for key, facet in facet_map.items():
            schema = facets.get(key)
            if schema is None:
                if not key.startswith("thresher_"):
                    errors.append(
                        f"{where}: facet {key!r} has no official schema and is not a custom thresher_ facet"
                    )
                continue
            validator = Draft202012Validator(schema, registry=registry)
            errors.extend(f"{where}.{key}: {e.message}" for e in validator.iter_errors({key: facet}))
    return errors
