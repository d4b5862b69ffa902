"""What every route shares: the services opened in the lifespan, JSON answers, errors, auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from receiver.errors import InvalidRequest, PayloadTooLarge, ProviderError, ReceiverError
from receiver.jobs.base import Workflow
from receiver.metrics import STREAMS_OPEN, RedisGauges
from receiver.outages import Outages
from receiver.settings import Settings
from receiver.store import Callback, EventLog, Store
from receiver.store.batching import Batcher
from receiver.tokens import PassthroughSigner

if TYPE_CHECKING:
    from receiver.streams import EventFeed

log = logging.getLogger(__name__)

# Paths that answer whatever Host they are asked for: providers call the callback paths and
# load balancers the health paths by names and addresses we are not told, and neither hands
# anything out to a caller that it could not have without us (a callback proves itself by
# its signature, a health answer holds no data).
ANY_HOST_PATHS = frozenset({"/callbacks/decodo", "/callbacks/firecrawl", "/healthz", "/readyz"})


@dataclass
class StreamSlots:
    """The event streams open in this process, and how many may be."""

    limit: int
    open: int = 0

    def take(self) -> bool:
        """One more stream, unless `limit` are open."""
        if self.open >= self.limit:
            return False
        self.open += 1
        STREAMS_OPEN.inc()
        return True

    def give(self) -> None:
        self.open -= 1
        STREAMS_OPEN.dec()


@dataclass
class Services:
    """What the routes share, opened in the lifespan."""

    settings: Settings
    store: Store
    signer: PassthroughSigner
    committer: Batcher[Callback, str]  # callbacks recorded in group commits
    http: httpx.AsyncClient
    workflows: dict[str, Workflow]  # each provider's, for what the API asks of them (cancel)
    gauges: RedisGauges
    outages: Outages
    # The events stream on a client and pool of its own: its reads never hold a connection
    # that a callback waits for.
    events: EventLog
    streams: StreamSlots
    feeds: list[EventFeed]  # per partition: the one reader of its events for every stream


Endpoint = Callable[[Request, Services], Awaitable[Response]]
Handler = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def error_response(status: int, code: str, message: str) -> Response:
    return json_response({"error": code, "message": message}, status)


def handler(current: Callable[[], Services], endpoint: Endpoint) -> Handler:
    """An endpoint with the services, and our errors turned into JSON answers."""

    async def handle(request: Request) -> Response:
        services = current()
        try:
            response = await endpoint(request, services)
        except ReceiverError as exc:
            return _error_for(exc)
        except RedisError as exc:
            # An outage is logged once by `outages`; anything else is a bug worth a trace.
            if not services.outages.failed(exc):
                log.exception("redis refused a command", extra={"path": request.url.path})
            return json_response(
                {"error": "unavailable", "message": "storage is unavailable; retry later"},
                503,
                {"Retry-After": "1"},
            )
        services.outages.recovered()
        return response

    return handle


def authed(current: Callable[[], Services], endpoint: Endpoint) -> Handler:
    """An endpoint behind `Authorization: Bearer $RECEIVER_API_TOKEN` (constant-time check)."""

    async def check(request: Request, services: Services) -> Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = services.settings.api_token
        if (
            scheme.lower() != "bearer"
            or not expected
            or not hmac.compare_digest(token.strip().encode(), expected.encode())
        ):
            return json_response(
                {"error": "unauthorized", "message": "Authorization: Bearer <token> required"},
                401,
                {"WWW-Authenticate": 'Bearer realm="receiver"'},
            )
        return await endpoint(request, services)

    return handler(current, check)


def _error_for(exc: ReceiverError) -> Response:
    if isinstance(exc, ProviderError):
        status = 503 if exc.status == 0 or exc.status >= 500 or exc.status == 429 else 502
        return error_response(status, f"provider_{exc.reason}", str(exc))
    status = getattr(exc, "status_code", 500)
    code = getattr(exc, "code", "error")
    return error_response(status, code, str(exc))


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing (413) anything above `limit` bytes without reading the rest."""
    return await read_asgi_body(request.scope, request.receive, limit)


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The raw body, refusing (413) anything above `limit` bytes without reading the rest."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(f"body over the {limit} byte limit")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidRequest("the client went away before the body was read")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body over the {limit} byte limit")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequest("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    return data


class AllowedHosts:
    """Middleware that answers 421 to a request whose Host header is not one of `hosts`
    (None: any), but on ANY_HOST_PATHS: a page that rebinds its DNS name to this machine
    then reads nothing from the API, /metrics or /openapi.json."""

    def __init__(self, app: ASGIApp, hosts: frozenset[str] | None) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.hosts is None
            or scope["type"] != "http"
            or scope["path"] in ANY_HOST_PATHS
            or request_host(scope) in self.hosts
        ):
            await self.app(scope, receive, send)
            return
        message = "the Host header names no host this receiver serves (RECEIVER_ALLOWED_HOSTS)"
        await error_response(421, "misdirected", message)(scope, receive, send)


def request_host(scope: Scope) -> str:
    """The host name of the Host header, lower case, without its port ("" when none)."""
    for name, value in scope["headers"]:
        if name == b"host":
            host: str = value.decode("latin-1").lower()
            if host.startswith("["):  # an IPv6 address, [::1]:8000
                return host[1 : host.find("]")] if "]" in host else ""
            return host.partition(":")[0].rstrip(".")
    return ""
