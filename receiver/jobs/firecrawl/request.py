"""A Firecrawl job request: a batch to track, or URLs to submit with options type-checked."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from receiver.errors import InvalidRequest
from receiver.jobs.common import optional_stall_after

# URLs in one batch: beyond it a request is refused here rather than by Firecrawl.
MAX_URLS = 1000
# The scrape and batch options Firecrawl's strict body accepts beside `urls`, each with the
# kind of JSON value its schema takes and, for arrays and objects, the kind of their members.
OPTION_KINDS: dict[str, tuple[str, str | None]] = {
    "formats": ("array", "format"),
    "headers": ("object", "string"),
    "includeTags": ("array", "string"),
    "excludeTags": ("array", "string"),
    "onlyMainContent": ("boolean", None),
    "onlyCleanContent": ("boolean", None),
    "timeout": ("integer", None),
    "waitFor": ("integer", None),
    "mobile": ("boolean", None),
    "parsers": ("array", None),
    "actions": ("array", None),
    "location": ("object", None),
    "skipTlsVerification": ("boolean", None),
    "removeBase64Images": ("boolean", None),
    "fastMode": ("boolean", None),
    "useMock": ("string", None),
    "blockAds": ("boolean", None),
    "proxy": ("proxy", None),
    "maxAge": ("integer", None),
    "minAge": ("integer", None),
    "storeInCache": ("boolean", None),
    "lockdown": ("boolean", None),
    "safeMode": ("boolean", None),
    "redactPII": ("any", None),
    "profile": ("object", None),
    "origin": ("string", None),
    "integration": ("string", None),
    "appendToId": ("uuid", None),
    "ignoreInvalidURLs": ("boolean", None),
    "maxConcurrency": ("positive", None),
    "zeroDataRetention": ("boolean", None),
}
OPTIONS = frozenset(OPTION_KINDS)
PROXIES = ("basic", "stealth", "enhanced", "auto")
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# What each kind of option value accepts, and how an error names it.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "any": (lambda v: True, "anything"),
    "string": (lambda v: isinstance(v, str), "a string"),
    "boolean": (lambda v: isinstance(v, bool), "true or false"),
    "integer": (lambda v: _is_integer(v), "a whole number"),
    "positive": (lambda v: _is_integer(v) and v > 0, "a whole number above 0"),
    "array": (lambda v: isinstance(v, list), "an array"),
    "object": (lambda v: isinstance(v, dict), "an object"),
    "format": (lambda v: _is_format(v), "a format name or an object with a string type"),
    "proxy": (lambda v: v in PROXIES, "one of " + ", ".join(PROXIES)),
    "uuid": (lambda v: isinstance(v, str) and bool(UUID.fullmatch(v)), "a batch id (a UUID)"),
}


@dataclass(frozen=True)
class FirecrawlRequest:
    batch_id: str | None  # track this existing batch
    urls: list[str]  # or submit these
    options: dict[str, Any]
    stall_after: float | None


def parse_request(body: Mapping[str, Any]) -> FirecrawlRequest:
    """Validate a POST /jobs body for Firecrawl; InvalidRequest says what is wrong."""
    extra = set(body) - OPTIONS - {"provider", "batch_id", "urls", "stall_after"}
    if extra:
        raise InvalidRequest(f"unknown Firecrawl option(s): {', '.join(sorted(extra))}")
    stall_after = optional_stall_after(body)
    if ("batch_id" in body) == ("urls" in body):
        raise InvalidRequest("give either batch_id (to track a batch) or urls (to submit one)")
    if "batch_id" in body:
        batch_id = body["batch_id"]
        if not isinstance(batch_id, str) or not UUID.fullmatch(batch_id):
            raise InvalidRequest("batch_id must be a Firecrawl batch id (a UUID)")
        if set(body) & OPTIONS:
            raise InvalidRequest("scrape options only go with urls, not with batch_id")
        return FirecrawlRequest(batch_id.lower(), [], {}, stall_after)
    urls = body["urls"]
    if not isinstance(urls, list) or not urls:
        raise InvalidRequest("urls must be a non-empty list of URLs")
    if len(urls) > MAX_URLS:
        raise InvalidRequest(f"urls holds {len(urls)} URLs; Firecrawl takes at most {MAX_URLS}")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidRequest("every url must be a string starting with http:// or https://")
    options = {k: v for k, v in body.items() if k in OPTIONS}
    for name, value in options.items():
        check_option(name, value)
    return FirecrawlRequest(None, list(urls), options, stall_after)


def check_option(name: str, value: Any) -> None:
    """InvalidRequest unless the option's value has the JSON type Firecrawl's schema takes:
    caught here, a wrong type is a 400 now rather than a job failing later."""
    kind, member = OPTION_KINDS[name]
    accepts, wanted = _KINDS[kind]
    if not accepts(value):
        raise InvalidRequest(f"{name} must be {wanted}, not {_json_type(value)}")
    if member is None:
        return
    members = value.values() if isinstance(value, dict) else value
    accepts, wanted = _KINDS[member]
    for item in members:
        if not accepts(item):
            raise InvalidRequest(f"every member of {name} must be {wanted}, not {_json_type(item)}")


def _is_integer(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and float(value).is_integer()


def _is_format(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, dict) and isinstance(value.get("type"), str)
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
