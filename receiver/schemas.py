"""JSON Schema pieces shared by the OpenAPI document and the providers' request schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Schema = dict[str, Any]

# A URL a job may name: http or https.
HTTP_URL = "^https?://"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Schema, required: Sequence[str] = (), **more: Any) -> Schema:
    """An object with exactly these properties, unless `more` sets additionalProperties."""
    base = {"type": "object", "required": list(required), "properties": properties}
    return {**base, "additionalProperties": False, **more}


def enum(values: Sequence[str]) -> Schema:
    return {"type": "string", "enum": list(values)}


def stall_after() -> Schema:
    return {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Seconds without progress after which the job fails as stalled.",
    }
