"""Validate OpenLineage events, core and every facet, against the official JSON Schemas offline.

Official facets are checked against ../shared/openlineage-spec; Thresher's custom ``thresher_``
facets against the schema files Thresher ships (thresher/lineage_facets/), which must be the very
documents their ``_schemaURL`` names. Each facet must also sit in the right container: a run facet
under ``run.facets``, an input facet (dataQualityMetrics, dataQualityAssertions) under
``inputFacets``, and so on. Formats (uuid, date-time, uri) are checked too.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import cache
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

from tests.conftest import SHARED
from thresher.lineage import facet_schema_files

SPEC_DIR = SHARED / "openlineage-spec"

# Which base facet of the core schema each container's facets must extend.
CONTAINER_BASES = {
    "run": "RunFacet",
    "job": "JobFacet",
    "facets": "DatasetFacet",
    "inputFacets": "InputDatasetFacet",
    "outputFacets": "OutputDatasetFacet",
}

FORMATS = FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    return not isinstance(value, str) or ("T" in value and datetime.fromisoformat(value).tzinfo is not None)


@FORMATS.checks("uri")
def _uri(value: object) -> bool:
    return not isinstance(value, str) or bool(urlsplit(value).scheme)


def _base_of(schema: dict) -> str | None:
    """The core base facet (RunFacet, DatasetFacet, ...) the facet schema's definition extends."""
    for definition in schema.get("$defs", {}).values():
        for part in definition.get("allOf", []):
            ref = part.get("$ref", "")
            if "OpenLineage.json#/$defs/" in ref:
                return ref.rsplit("/", 1)[-1]
    return None


@cache
def _registry() -> tuple[Registry, dict, dict[tuple[str, str], dict]]:
    core = json.loads((SPEC_DIR / "OpenLineage.json").read_text())
    resources = [(core["$id"], Resource.from_contents(core))]
    facets: dict[tuple[str, str], dict] = {}  # (base, key) -> schema
    paths = [*sorted((SPEC_DIR / "facets").glob("*.json")), *facet_schema_files().values()]
    for path in paths:
        schema = json.loads(path.read_text())
        resources.append((schema["$id"], Resource.from_contents(schema)))
        for key in schema.get("properties", {}):
            facets[(_base_of(schema) or "", key)] = schema
    return Registry().with_resources(resources), core, facets


def custom_facet_schema(schema_url: str) -> dict | None:
    """The shipped schema a custom facet's ``_schemaURL`` points at (None when Thresher ships none)."""
    document = schema_url.split("#", 1)[0]
    path = facet_schema_files().get(document)
    return json.loads(path.read_text()) if path else None


def validate_event(event: dict) -> list[str]:
    """Every schema violation in ``event`` (empty when valid), facets included."""
    registry, core, facets = _registry()
    errors = [
        f"event: {e.message}"
        for e in Draft202012Validator(
            {"$ref": core["$id"] + "#/$defs/RunEvent"}, registry=registry, format_checker=FORMATS
        ).iter_errors(event)
    ]
    containers = [
        ("run", "run", event["run"].get("facets", {})),
        ("job", "job", event["job"].get("facets", {})),
    ]
    for kind in ("inputs", "outputs"):
        for ds in event.get(kind, []):
            for container in ("facets", "inputFacets", "outputFacets"):
                if container in ds:
                    containers.append((f"{kind}:{ds['name']}.{container}", container, ds[container]))
    for where, container, facet_map in containers:
        base = CONTAINER_BASES[container]
        for key, facet in facet_map.items():
            schema = facets.get((base, key))
            if key.startswith("thresher_"):
                shipped = custom_facet_schema(facet.get("_schemaURL", ""))
                if shipped is None:
                    errors.append(f"{where}: custom facet {key!r} has no shipped schema at its _schemaURL")
                    continue
                if _base_of(shipped) != base or key not in shipped.get("properties", {}):
                    errors.append(f"{where}: custom facet {key!r} does not belong in {container}")
                    continue
                schema = shipped
            elif schema is None:
                others = sorted(b for b, k in facets if k == key)
                errors.append(
                    f"{where}: facet {key!r} is not a {base}"
                    + (f" (it is a {', '.join(others)})" if others else " and has no official schema")
                )
                continue
            validator = Draft202012Validator(schema, registry=registry, format_checker=FORMATS)
            errors.extend(f"{where}.{key}: {e.message}" for e in validator.iter_errors({key: facet}))
    return errors
