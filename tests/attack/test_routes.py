"""Every route of the app, as an attacker without the API token and with hostile ids sees
it. The routes come from `create_app(settings).routes`, so a new one is covered as soon as
it exists: under /jobs or /events it must refuse every wrong Authorization (401, before it
looks anything up), anywhere else it must be one of the public routes named here; a route
with a path parameter must answer hostile values of it with a clear 4xx. Nothing written,
every Redis key's DUMP the same before and after.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from starlette.routing import Route

from receiver.app import create_app
from receiver.settings import Settings
from tests.attack.conftest import API_TOKEN, KEYS, Target, create_running_job, running_target
from tests.servers import RedisProcess

JOB = "0123456789abcdef0123"  # a job id as store.new_job_id makes them
TASK = "7318426139586371585"
# Routes anyone may call; each checks what it is sent in its own way (a callback's token
# or signature) or shows nothing secret (health, metrics, the OpenAPI document).
PUBLIC = {
    "/callbacks/decodo",
    "/callbacks/firecrawl",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
}
PROTECTED = ("/jobs", "/events")
# What a route takes a body of: POST /jobs a job the right token would create.
BODIES = {("POST", "/jobs"): orjson.dumps({"provider": "decodo", "url": "https://a.example"})}

# Authorization headers (one or more) that must not open a protected route.
WRONG_AUTHORIZATIONS: dict[str, list[str]] = {
    "none": [],
    "wrong": ["Bearer Zq8Wm3Kx1Lv5Tn7Rb2Hc9Jd4Fs6Ga0Pe"],
    "prefixed": [f"Bearer x{API_TOKEN}"],
    "suffixed": [f"Bearer {API_TOKEN}x"],
    "doubled": [f"Bearer {API_TOKEN}{API_TOKEN}"],
    "doubled_with_a_space": [f"Bearer {API_TOKEN} {API_TOKEN}"],
    "truncated": [f"Bearer {API_TOKEN[:-1]}"],
    "upper_case": [f"Bearer {API_TOKEN.upper()}"],
    "without_the_scheme": [API_TOKEN],
    "basic": [f"Basic {API_TOKEN}"],
    "tab_for_the_space": [f"Bearer\t{API_TOKEN}"],
    "empty": ["Bearer"],
    "empty_after_a_space": ["Bearer "],
    "a_wrong_one_first": ["Bearer Zq8Wm3Kx1Lv5Tn7Rb2Hc9Jd4Fs6Ga0Pe", f"Bearer {API_TOKEN}"],
}

# Hostile values of a path parameter as they go on the wire (raw, or percent-encoded).
HOSTILE_IDS = {
    "empty": "",
    "brace_open": "{",
    "brace_close": "}",
    "braces_encoded": "%7B%7D",
    "colon": ":",
    "the_jobs_hash_tag": "{" + JOB + "}",
    "closing_the_hash_tag": JOB + "}",
    "another_key_of_the_job": JOB + "}:tasks",
    "a_key_suffix": JOB + ":tasks",
    "cr_lf_encoded": "%0D%0A",
    "a_header_injected": "x%0D%0ASet-Cookie:%20injected=1",
    "nul_encoded": "%00",
    "not_utf8_encoded": "%FF%FE",
    "ten_thousand_characters": "a" * 10_000,
    "dot_dot": "..",
    "dot_dot_encoded": "%2E%2E",
    "slash_encoded": "%2F",
    "dot_dot_slash_encoded": "..%2F..%2F",
    "glob": "*",
}
# Bytes no request line may hold: the HTTP parser refuses them (400) before the app.
RAW_HOSTILE_IDS = {"nul": "\x00", "cr_lf": "\r\n", "space": "a b", "del": "\x7f"}


def app_routes() -> list[Route]:
    settings = Settings(redis_url="redis://127.0.0.1:9/0", secret_keys=KEYS, api_token=API_TOKEN)
    routes = create_app(settings).routes
    assert all(isinstance(route, Route) for route in routes), routes
    return [route for route in routes if isinstance(route, Route)]


def route_cases(*, with_param: bool = False) -> list[tuple[str, str]]:
    """(method, path template) of every route, HEAD included where GET is."""
    return [
        (method, route.path)
        for route in app_routes()
        for method in sorted(route.methods or ())
        if not with_param or route.param_convertors
    ]


def protected(path: str) -> bool:
    return path.split("/")[1] in {prefix.strip("/") for prefix in PROTECTED}


def filled(path: str, value: str) -> str:
    """The path template with every parameter set to `value` (as it goes on the wire)."""
    for name in {part[1:-1] for part in path.split("/") if part.startswith("{")}:
        path = path.replace("{" + name + "}", value)
    return path


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    def header(self, name: str) -> str:
        return next((value for key, value in self.headers if key.lower() == name), "")


def send(target: Target, method: str, path: str, authorizations: list[str]) -> Answer:
    """One request with exactly these bytes on the request line and these Authorization
    headers, on a connection of its own."""
    address = urlsplit(target.url)
    body = BODIES.get((method, path.split("?")[0]), b"")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address.netloc}", "Connection: close"]
    lines += [f"Authorization: {value}" for value in authorizations]
    lines += [f"Content-Length: {len(body)}", "", ""]
    assert address.hostname and address.port
    with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        response = http.client.HTTPResponse(sock, method=method)
        with contextlib.closing(response):
            response.begin()
            # An open event stream (the right token on an SSE route) is not read to its end.
            streaming = response.getheader("content-type", "").startswith("text/event-stream")
            content = b"" if streaming else response.read()
            return Answer(response.status, response.getheaders(), content)


@pytest.fixture(scope="module")
def server(redis_process: RedisProcess) -> Iterator[Target]:
    """One receiver (web, no worker) for the module's hundreds of requests."""
    with running_target(redis_process, decodo_auth="dXNlcjo0a1E5dlQybVhyN0xwVzNl") as running:
        yield running


@pytest.fixture
def seeded(server: Target) -> Target:
    """The receiver's Redis with nothing but a running job, whose id the routes'
    parameters get."""
    server.redis.flushall()
    server.write(lambda store: create_running_job(store, JOB, [TASK]))
    return server


# -- the routes -----------------------------------------------------------------------------


def test_every_route_is_protected_or_named_public() -> None:
    paths = {route.path for route in app_routes()}
    assert {path for path in paths if not protected(path)} <= PUBLIC
    assert any(protected(path) for path in paths)
    assert "/jobs/{job_id}" in paths  # the hostile ids below have a route to go to


@pytest.mark.parametrize("authorization", WRONG_AUTHORIZATIONS)
@pytest.mark.parametrize(("method", "path"), route_cases())
def test_a_wrong_token_is_refused_on_every_jobs_and_events_route(
    seeded: Target, method: str, path: str, authorization: str
) -> None:
    """401 with the error and a WWW-Authenticate challenge, for an id that exists (the
    check comes before any lookup); on a public route, the header changes nothing."""
    before = seeded.snapshot()
    wrong = send(seeded, method, filled(path, JOB), WRONG_AUTHORIZATIONS[authorization])
    if protected(path):
        assert wrong.status == 401, (wrong.status, wrong.body)
        assert wrong.header("www-authenticate") == 'Bearer realm="receiver"'
        if method != "HEAD":
            assert wrong.json()["error"] == "unauthorized"
    else:
        plain = send(seeded, method, filled(path, JOB), [])
        assert wrong.status == plain.status
        if path != "/metrics":  # its counters move between the two
            assert wrong.body == plain.body
    assert seeded.snapshot() == before


@pytest.mark.parametrize(
    ("method", "path"),
    [(method, path) for method, path in route_cases() if protected(path) and method != "HEAD"],
)
def test_the_right_token_opens_every_jobs_and_events_route(
    seeded: Target, method: str, path: str
) -> None:
    """The control of the test above: the same requests with the token are not refused
    (409: a retry of a job that runs)."""
    answer = send(seeded, method, filled(path, JOB), [f"Bearer {API_TOKEN}"])
    assert answer.status < 400 or answer.status == 409, (answer.status, answer.body)


# -- hostile ids ----------------------------------------------------------------------------


def hostile_cases() -> list[Any]:
    """(method, path, hostile id name) of every route with a parameter and every id."""
    return [
        pytest.param(
            method,
            path,
            name,
            id=f"{method}-{path}-{name}",
        )
        for method, path in route_cases(with_param=True)
        for name in HOSTILE_IDS
    ]


@pytest.mark.parametrize(("method", "path", "hostile"), hostile_cases())
def test_a_hostile_id_is_a_clear_4xx_that_writes_nothing(
    seeded: Target, method: str, path: str, hostile: str
) -> None:
    before = seeded.snapshot()
    answer = send(seeded, method, filled(path, HOSTILE_IDS[hostile]), [f"Bearer {API_TOKEN}"])
    assert answer.status in (400, 404), (answer.status, answer.body[:200])
    if method != "HEAD" and answer.header("content-type").startswith("application/json"):
        assert answer.json()["error"] in ("unknown_job", "invalid_request"), answer.body[:200]
    assert not answer.header("set-cookie")
    assert seeded.snapshot() == before
    # The job itself is untouched and still served.
    job = send(seeded, "GET", f"/jobs/{JOB}", [f"Bearer {API_TOKEN}"])
    assert job.status == 200 and job.json()["status"] == "running"


@pytest.mark.parametrize("hostile", RAW_HOSTILE_IDS)
@pytest.mark.parametrize(("method", "path"), route_cases(with_param=True))
def test_bytes_no_request_line_may_hold_are_refused_before_the_app(
    seeded: Target, method: str, path: str, hostile: str
) -> None:
    before = seeded.snapshot()
    answer = send(seeded, method, filled(path, RAW_HOSTILE_IDS[hostile]), [f"Bearer {API_TOKEN}"])
    assert answer.status == 400, (answer.status, answer.body[:200])
    assert seeded.snapshot() == before
