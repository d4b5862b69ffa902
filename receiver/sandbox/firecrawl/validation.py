"""The body of POST /v2/batch/scrape as Firecrawl's strict zod schema sees it: the issues it
lists in a 400's `details`, or the submission it accepts."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Issue = dict[str, Any]
Check = Callable[[list[Any], Any], list[Issue]]

STRICT_MESSAGE = (
    "Unrecognized key in body -- please review the v2 API documentation for request body changes"
)
NO_TLD_MESSAGE = "URL must have a valid top-level domain or be a valid path"
WEBHOOK_EVENTS = ("completed", "failed", "page", "started")
FORMAT_TYPES = frozenset(
    "markdown html rawHtml rawBase64 links images summary json deterministicJson changeTracking"
    " screenshot attributes branding product menu question highlights query audio video".split()
)
PROXIES = ("basic", "stealth", "enhanced", "auto")


@dataclass
class Webhook:
    url: str  # as submitted, its query string untouched
    headers: dict[str, str]  # sent with every delivery
    metadata: dict[str, Any]  # echoed in every delivery, as submitted
    events: frozenset[str]


@dataclass
class Submission:
    urls: list[str]
    invalid: list[str]
    formats: frozenset[str]
    webhook: Webhook | None
    concurrency: int | None
    append_to: str | None


def _issue(code: str, path: list[Any], message: str, **details: Any) -> Issue:
    """One zod issue, as the real server lists them in `details`."""
    return {"code": code, **details, "path": path, "message": message}


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_issue(path: list[Any], expected: str, value: Any) -> Issue:
    received = _js_type(value)
    if expected == "integer" and received == "number":
        received = "float"
    elif expected == "integer":
        expected = "number"
    message = f"Expected {expected}, received {received}"
    return _issue("invalid_type", path, message, expected=expected, received=received)


def _required(path: list[Any], expected: str) -> Issue:
    return _issue("invalid_type", path, "Required", expected=expected, received="undefined")


def _matches(expected: str, value: Any) -> bool:
    if expected == "integer":
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and float(value).is_integer()
    return _js_type(value) == expected


def _typed(expected: str, item: str | None = None) -> Check:
    """A check of one JSON type; `item` types the elements of an array or values of a record."""

    def check(path: list[Any], value: Any) -> list[Issue]:
        if not _matches(expected, value):
            return [_type_issue(path, expected, value)]
        if item is None:
            return []
        members = enumerate(value) if isinstance(value, list) else value.items()
        return [_type_issue([*path, k], item, v) for k, v in members if not _matches(item, v)]

    return check


def _one_of(options: tuple[str, ...]) -> Check:
    expected = " | ".join(f"'{option}'" for option in options)

    def check(path: list[Any], value: Any) -> list[Issue]:
        if value in options:
            return []
        message = f"Invalid enum value. Expected {expected}, received '{value}'"
        return [_issue("invalid_enum_value", path, message, options=list(options), received=value)]

    return check


def _each(first: Check, then: Check) -> Check:
    """`first` on the value; when it passes, `then` on every element."""

    def check(path: list[Any], value: Any) -> list[Issue]:
        return first(path, value) or [i for n, v in enumerate(value) for i in then([*path, n], v)]

    return check


def _positive(path: list[Any], value: Any) -> list[Issue]:
    issues = _typed("integer")(path, value)
    if issues or value > 0:
        return issues
    details = {"minimum": 0, "type": "number", "inclusive": False, "exact": False}
    return [_issue("too_small", path, "Number must be greater than 0", **details)]


def _uuid(path: list[Any], value: Any) -> list[Issue]:
    issues = _typed("string")(path, value)
    if issues or _is_uuid(value):
        return issues
    return [_issue("invalid_string", path, "Invalid uuid", validation="uuid")]


def _format(path: list[Any], value: Any) -> list[Issue]:
    if _format_type(value) in FORMAT_TYPES:
        return []
    return [_issue("invalid_union", path, "Invalid input", unionErrors=[])]


def _format_type(item: Any) -> str | None:
    if isinstance(item, dict):
        kind = item.get("type")
        return kind if isinstance(kind, str) else None
    return item if isinstance(item, str) else None


def _url(path: list[Any], value: Any) -> list[Issue]:
    return _typed("string")(path, value) or _url_issues(path, value)


def _anything(path: list[Any], value: Any) -> list[Issue]:
    return []


# The keys of a webhook object, each with its check.
WEBHOOK_FIELDS: dict[str, Check] = {
    "url": _url,
    "headers": _typed("object", "string"),
    "metadata": _typed("object"),
    "events": _each(_typed("array"), _one_of(WEBHOOK_EVENTS)),
}


def _webhook(path: list[Any], value: Any) -> list[Issue]:
    if isinstance(value, str):
        return _url_issues(path, value)
    return _typed("object")(path, value) or _strict_object(
        path, value, WEBHOOK_FIELDS, {"url": "string"}
    )


# Every key the body may carry, in schema order: the flat scrape options, then the batch ones.
FIELDS: dict[str, Check] = {
    "formats": _each(_typed("array"), _format),
    "headers": _typed("object", "string"),
    "includeTags": _typed("array", "string"),
    "excludeTags": _typed("array", "string"),
    "onlyMainContent": _typed("boolean"),
    "onlyCleanContent": _typed("boolean"),
    "timeout": _typed("integer"),
    "waitFor": _typed("integer"),
    "mobile": _typed("boolean"),
    "parsers": _typed("array"),
    "actions": _typed("array"),
    "location": _typed("object"),
    "skipTlsVerification": _typed("boolean"),
    "removeBase64Images": _typed("boolean"),
    "fastMode": _typed("boolean"),
    "useMock": _typed("string"),
    "blockAds": _typed("boolean"),
    "proxy": _one_of(PROXIES),
    "maxAge": _typed("integer"),
    "minAge": _typed("integer"),
    "storeInCache": _typed("boolean"),
    "lockdown": _typed("boolean"),
    "safeMode": _typed("boolean"),
    "redactPII": _anything,
    "profile": _typed("object"),
    "urls": _typed("array", "string"),
    "origin": _typed("string"),
    "integration": _typed("string"),
    "webhook": _webhook,
    "appendToId": _uuid,
    "ignoreInvalidURLs": _typed("boolean"),
    "maxConcurrency": _positive,
    "zeroDataRetention": _typed("boolean"),
}


def _strict_object(
    path: list[Any], value: dict[str, Any], fields: dict[str, Check], required: dict[str, str]
) -> list[Issue]:
    """Like zod's `.strict()`: each known key checked, a missing required one or any unknown
    key reported."""
    issues = [
        i for key, check in fields.items() if key in value for i in check([*path, key], value[key])
    ]
    issues += [_required([*path, key], kind) for key, kind in required.items() if key not in value]
    unknown = [key for key in value if key not in fields]
    if unknown:
        issues.append(_issue("unrecognized_keys", path, STRICT_MESSAGE, keys=unknown))
    return issues


def _normalize_url(url: str) -> str:
    return url if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", url) else f"http://{url}"


def _url_issues(path: list[Any], url: str) -> list[Issue]:
    """The zod issues of Firecrawl's URL schema for one string, none when it is acceptable."""
    candidate = _normalize_url(url)
    try:
        parts = urlsplit(candidate)
        host = parts.hostname or ""
    except ValueError:
        host = ""
    no_tld = _issue("custom", path, NO_TLD_MESSAGE)
    if not host or re.search(r"\s", candidate):
        invalid = _issue("invalid_string", path, "Invalid url", validation="url")
        return [invalid, no_tld, _issue("custom", path, "Invalid URL")]
    if parts.scheme.lower() not in ("http", "https"):
        return [_issue("invalid_string", path, "URL uses unsupported protocol", validation="regex")]
    if "." not in host and host != "localhost" and ":" not in host:
        return [no_tld]
    return []


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return len(value) == 36


def validate_submission(body: Any, max_urls: int) -> Submission | list[Issue]:
    """The body of POST /v2/batch/scrape as Firecrawl's strict zod schema sees it."""
    if not isinstance(body, dict):
        return [_type_issue([], "object", body)]
    issues = _strict_object([], body, FIELDS, {"urls": "array"})
    if not any(issue["path"][:1] == ["urls"] for issue in issues):
        issues[:0] = _urls_issues(body["urls"], max_urls, body.get("ignoreInvalidURLs") is True)
    return issues or _submission(body)


def _urls_issues(urls: list[str], max_urls: int, ignore_invalid: bool) -> list[Issue]:
    if len(urls) > max_urls:
        details = {"maximum": max_urls, "type": "array", "inclusive": True, "exact": False}
        return [
            _issue(
                "too_big", ["urls"], f"Array must contain at most {max_urls} element(s)", **details
            )
        ]
    if ignore_invalid:
        return []
    return [issue for i, url in enumerate(urls) for issue in _url_issues(["urls", i], url)]


def _submission(body: dict[str, Any]) -> Submission:
    urls: list[str] = []
    invalid: list[str] = []
    for url in body["urls"]:
        (invalid if _url_issues([], url) else urls).append(url)
    formats = body.get("formats", ["markdown"])
    return Submission(
        urls=[_normalize_url(u) for u in urls],
        invalid=invalid,
        formats=frozenset(t for t in map(_format_type, formats) if t),
        webhook=_parse_webhook(body.get("webhook")),
        concurrency=body.get("maxConcurrency"),
        append_to=body.get("appendToId"),
    )


def _parse_webhook(value: Any) -> Webhook | None:
    if value is None:
        return None
    if isinstance(value, str):
        return Webhook(_normalize_url(value), {}, {}, frozenset(WEBHOOK_EVENTS))
    return Webhook(
        url=_normalize_url(value["url"]),
        headers=dict(value.get("headers", {})),
        metadata=dict(value.get("metadata", {})),
        events=frozenset(value.get("events", WEBHOOK_EVENTS)),
    )
