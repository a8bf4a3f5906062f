"""Launchpad run config generated from the dataset configuration's own models.

Every parameter of a stage's section can be overridden for one run from the Dagster launchpad
without restating the rest: each field is optional, and a set field is deep-merged over the
dataset configuration and validated like the file itself. Generating these classes from the
pydantic models (rather than writing them twice) keeps the launchpad and the YAML in step.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

import dagster as dg
import pydantic
from pydantic import BaseModel

from thresher import config as cfg


def _launchpad_type(annotation: Any, name: str) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:  # Dagster config has no literal type; the dataset model validates the value
        return str
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return overrides_class(annotation, name)
    if origin is list:
        (inner,) = get_args(annotation)
        return list[_launchpad_type(inner, name)]
    if origin is dict:
        key, value = get_args(annotation)
        return dict[key, _launchpad_type(value, name)]
    non_null = [a for a in get_args(annotation) if a is not type(None)]
    if len(non_null) == 1:  # X | None
        return _launchpad_type(non_null[0], name)
    return annotation


def overrides_class(model: type[BaseModel], name: str) -> type[dg.Config]:
    """A Dagster ``Config`` mirroring ``model`` with every field optional (None = keep the file's value)."""
    fields: dict[str, Any] = {}
    for field_name, info in model.model_fields.items():
        field_type = _launchpad_type(info.annotation, name + field_name.title().replace("_", ""))
        fields[field_name] = (
            field_type | None,
            pydantic.Field(default=None, description=info.description),
        )
    return pydantic.create_model(name, __base__=dg.Config, __doc__=model.__doc__, **fields)


IngestOverrides = overrides_class(cfg.IngestConfig, "IngestOverrides")
DedupOverrides = overrides_class(cfg.DedupConfig, "DedupOverrides")
CleanOverrides = overrides_class(cfg.CleanConfig, "CleanOverrides")
SynthesisOverrides = overrides_class(cfg.SynthesisConfig, "SynthesisOverrides")
VerifyOverrides = overrides_class(cfg.VerifyConfig, "VerifyOverrides")
FormatOverrides = overrides_class(cfg.FormatConfig, "FormatOverrides")
