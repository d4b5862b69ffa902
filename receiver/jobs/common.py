"""Validation shared by the providers' job requests."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from receiver.errors import InvalidRequest

# An id we put in a provider's URL path: letters, digits and - _ . only.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def optional_stall_after(body: Mapping[str, Any]) -> float | None:
    """The request's own stall timeout in seconds, if it gives one."""
    value = body.get("stall_after")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise InvalidRequest("stall_after must be a positive number of seconds")
    return float(value)


def safe_id(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value) or ".." in value:
        raise InvalidRequest(f"{name} must be an id of letters, digits, - and _")
    return value
