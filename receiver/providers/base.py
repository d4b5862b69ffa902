"""What the provider clients share: one way to call, and one translation of failures."""

from __future__ import annotations

import email.utils
import html
import os
import re
import socket
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from receiver.errors import (
    NotFound,
    PaymentRequired,
    ProviderError,
    RateLimited,
    Rejected,
    Unauthorized,
    Unavailable,
)
from receiver.settings import Settings

# Seconds to connect to a provider; the whole request's bound is RECEIVER_PROVIDER_TIMEOUT.
CONNECT_TIMEOUT = 5.0

_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HEADING = re.compile(r"<h1[^>]*>(.*?)</h1>", re.IGNORECASE | re.DOTALL)
_RETRY_IN_MESSAGE = re.compile(r"retry after (\d+(?:\.\d+)?)\s*s", re.IGNORECASE)


def open_http(settings: Settings) -> httpx.AsyncClient:
    """The one HTTP client of a process; it never follows redirects with our keys.

    httpx's interface on aiohttp's connections: aiohttp parses HTTP in C, and costs half
    the CPU per request of httpx's own transport (pure-Python h11), the most of a fetch.
    """
    connections = settings.fetch_concurrency + settings.poll_concurrency * 2 + 20
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    transport = AiohttpTransport(limits=limits, trust_env=False)
    timeout = httpx.Timeout(settings.provider_timeout, connect=CONNECT_TIMEOUT)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)


class ProviderClient:
    """A client of one provider's API: every request goes to `base_url`'s origin only."""

    name = "provider"

    def __init__(self, http: httpx.AsyncClient, base_url: str, headers: Mapping[str, str]) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.origin = httpx.URL(self.base_url).copy_with(path="/", query=None, fragment=None)
        self._prefix = str(self.origin)  # scheme://host[:port]/: a URL under it is ours
        self._headers = dict(headers)

    def url(self, path: str) -> str:
        return self.base_url + path

    def same_origin(self, url: str) -> bool:
        if url.startswith(self._prefix):  # the common case, without parsing the URL
            return True
        other = httpx.URL(url)
        return (other.scheme, other.host, other.port) == (
            self.origin.scheme,
            self.origin.host,
            self.origin.port,
        )

    async def request(
        self, method: str, url: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> httpx.Response:
        """Send a request with our credentials, which only ever go to the provider's origin.

        Whatever keeps it from an answer we can read is a ProviderError: a URL that cannot
        be requested is Rejected (`bad_url`), an answer that is not HTTP is Unavailable
        (`bad_answer`), so the job's work fails or is retried, and ends, never loops."""
        try:
            ours = self.same_origin(url)
        except httpx.InvalidURL as exc:
            raise _bad_url(self.name, exc) from None
        if not ours:
            raise Rejected(f"refusing to send {self.name} credentials to {httpx.URL(url).host}")
        content = orjson.dumps(json) if json is not None else None
        headers = dict(self._headers)
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            return await self.http.request(
                method,
                url,
                content=content,
                params=params,
                headers=headers,
            )
        except (httpx.InvalidURL, httpx.UnsupportedProtocol, ValueError) as exc:
            # httpx's own check of the URL, and aiohttp's (credentials in it, say)
            raise _bad_url(self.name, exc) from None
        except httpx.HTTPError as exc:
            raise Unavailable(f"{self.name} {transport_problem(exc)}") from None
        except aiohttp.ClientError as exc:  # what httpx-aiohttp passes on as it is
            raise Unavailable(
                f"{self.name} answered something that is not HTTP: {_first_line(exc)}",
                reason="bad_answer",
            ) from None


def _bad_url(name: str, exc: Exception) -> Rejected:
    return Rejected(f"{name} URL cannot be requested: {_first_line(exc)}", reason="bad_url")


def _first_line(exc: Exception, most: int = 200) -> str:
    """An exception's words on one line (aiohttp's quote the bad bytes over several), without
    the URL or the made-up status aiohttp puts around a response's."""
    said = exc.message if isinstance(exc, aiohttp.ClientResponseError) else str(exc)
    flat = " ".join(said.split()) or type(exc).__name__
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def transport_problem(exc: httpx.HTTPError) -> str:
    """What kept a request from an answer, in a few words: `unreachable: connection
    refused`, `timed out: ReadTimeout`. The OS's own error, when one is behind it, says
    more than the transport's class (which calls a refused connection a ConnectTimeout)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "unreachable: its host name does not resolve"
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError) and cause.errno:
            return f"unreachable: {os.strerror(cause.errno).lower()}"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out: {type(exc).__name__}"
    return f"unreachable: {type(exc).__name__}"


def raise_for_status(name: str, response: httpx.Response) -> None:
    """Turn a provider's non-success answer into the matching ProviderError."""
    status = response.status_code
    if status < 400:
        return
    body = response.text
    message = f"{name} answered {status}: {error_message(response) or summary(response)}"
    if status == 429:
        raise RateLimited(message, body=body, retry_after=retry_after(response))
    if status >= 500:
        raise Unavailable(message, status=status, body=body)
    error: type[ProviderError] = {
        401: Unauthorized,
        402: PaymentRequired,
        403: Unauthorized,
        404: NotFound,
    }.get(status, Rejected)
    raise error(message, status=status, body=body)


def summary(response: httpx.Response, most: int = 200) -> str:
    """A body that is not the provider's JSON error, on one line: an HTML page by its title
    (a proxy's, or Flask's several-line 404), any other text by its start."""
    text = response.text
    if looks_like_html(response):
        title = _TITLE.search(text) or _HEADING.search(text)
        text = html.unescape(title.group(1)) if title else "an HTML page"
    flat = " ".join(text.split())
    return flat if len(flat) <= most else flat[: most - 1] + "…"


def error_message(response: httpx.Response) -> str:
    """The provider's own words from an error body: `error`, `message` or nothing."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(body, dict):
        for key in ("error", "message"):
            if isinstance(body.get(key), str):
                return str(body[key])
    return ""


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """Seconds to wait: `Retry-After` (seconds or HTTP date), or "retry after Ns" in the body."""
    header = response.headers.get("retry-after")
    if header:
        header = header.strip()
        try:
            return max(0.0, float(header))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(header) if header else None
            if parsed is not None:
                return max(0.0, parsed.timestamp() - (now or time.time()))
    found = _RETRY_IN_MESSAGE.search(error_message(response))
    return float(found.group(1)) if found else None


def json_object(name: str, response: httpx.Response) -> dict[str, Any]:
    """The JSON object a provider answered. An HTML page (a proxy's or a gateway's, not the
    provider's) and JSON cut short (an answer that lost its end on the way) are worth
    retrying; any other body is not an answer we can use."""
    try:
        answer = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        status, body = response.status_code, response.text
        if looks_like_html(response):
            raise Unavailable(f"{name} answered an HTML page", status=status, body=body) from None
        if cut_short(response.content):
            raise Unavailable(
                f"{name} answered JSON cut short", status=status, body=body, reason="truncated"
            ) from None
        raise Rejected(
            f"{name} answered a body that is not JSON", body=body, reason="bad_answer"
        ) from None
    if not isinstance(answer, dict):
        raise Rejected(f"{name} answered JSON that is not an object", reason="bad_answer")
    return answer


def cut_short(content: bytes) -> bool:
    """Whether a body that is not JSON is the start of some JSON: its parse fails only for
    want of more (empty, or a character cut in two at the end, included)."""
    text = content.decode("utf-8", "ignore").rstrip()  # a character cut in two drops out
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return exc.pos >= len(text)
    return False  # it parses once stray bytes are dropped: not cut, just malformed


def looks_like_html(response: httpx.Response) -> bool:
    if "html" in response.headers.get("content-type", ""):
        return True
    return response.text.lstrip()[:15].lower().startswith(("<!doctype", "<html"))


def path_part(name: str, value: str) -> str:
    """An untrusted id, quoted for a URL path; one that could leave its segment is refused."""
    if not value or value.strip(".") == "" or ".." in value or any(c in value for c in "/?#\\"):
        raise Rejected(f"refusing {name} id {value[:60]!r}", reason="bad_id")
    return quote(value, safe="")
