"""The Host header against DNS rebinding: a page whose name was pointed at this machine gets
421 from the API, /metrics and /openapi.json, with nothing written; the names the receiver
is known by are served, and the callbacks and health answer whatever Host they are given
(providers and load balancers call them by names and addresses we are not told)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.attack.conftest import API_TOKEN, Target, running_target
from tests.servers import RedisProcess

PUBLIC_URL = "https://receiver.example.com"
# What the checked routes are asked, with a valid token: each would answer if the Host did.
CHECKED = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/job-1"),
    ("DELETE", "/jobs/job-1"),
    ("GET", "/jobs/job-1/results"),
    ("POST", "/jobs/job-1/retry"),
    ("GET", "/jobs/job-1/events"),
    ("GET", "/events"),
    ("GET", "/nowhere"),
    ("GET", "/healthz/"),  # not the health path itself
]
FOREIGN = [
    "evil.example",
    "evil.example:8000",
    "receiver.example.com.evil.example",
    "127.0.0.1.nip.io",
    "localhost.evil.example",
    "[::2]:8000",
    "",
]


@pytest.fixture
def public(redis_process: RedisProcess) -> Iterator[Target]:
    """The receiver known as receiver.example.com, on the default allowed hosts."""
    with running_target(redis_process, public_url=PUBLIC_URL) as running:
        yield running


def ask(target: Target, method: str, path: str, host: str, **kwargs: Any) -> httpx.Response:
    """A request with a valid token and `host` as its Host header."""
    headers = {"Authorization": f"Bearer {API_TOKEN}", "Host": host}
    return target.http.request(method, f"{target.url}{path}", headers=headers, **kwargs)


def port_of(target: Target) -> int:
    port = urlsplit(target.url).port
    assert port is not None
    return port


def raw_request(target: Target, method: str, path: str, host: str | None) -> tuple[int, bytes]:
    """A request written by hand (httpx always sends a Host): its status and body."""
    host_line = b"" if host is None else b"Host: %s\r\n" % host.encode()
    with socket.create_connection(("127.0.0.1", port_of(target)), 10) as sock:
        sock.sendall(
            b"%s %s HTTP/1.1\r\n%sConnection: close\r\n\r\n"
            % (method.encode(), path.encode(), host_line)
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("host", FOREIGN)
def test_a_foreign_host_gets_421_from_the_api_metrics_and_openapi(
    public: Target, host: str
) -> None:
    before = public.snapshot()
    for method, path in CHECKED:
        response = ask(public, method, path, host, json={"provider": "decodo"})
        assert response.status_code == 421, (method, path, host, response.text)
        assert response.json()["error"] == "misdirected"
        assert "RECEIVER_ALLOWED_HOSTS" in response.json()["message"]
    assert public.snapshot() == before


def test_a_request_without_a_host_gets_421(public: Target) -> None:
    status, body = raw_request(public, "GET", "/openapi.json", None)
    assert status == 421 and b"misdirected" in body
    status, _ = raw_request(public, "GET", "/healthz", None)
    assert status == 200


def test_the_names_the_receiver_is_known_by_are_served(public: Target) -> None:
    port = port_of(public)
    for host in (
        "receiver.example.com",
        "RECEIVER.example.COM",
        "receiver.example.com.",
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
    ):
        assert ask(public, "GET", "/openapi.json", host).status_code == 200, host
        assert ask(public, "GET", "/metrics", host).status_code == 200, host
        response = ask(public, "GET", "/jobs", host)
        assert response.status_code == 200, (host, response.text)


def test_callbacks_and_health_answer_any_host(public: Target) -> None:
    headers = {"Host": "evil.example"}
    assert public.http.get(f"{public.url}/healthz", headers=headers).status_code == 200
    # no worker runs: not ready, and saying so whatever the Host
    assert public.http.get(f"{public.url}/readyz", headers=headers).status_code == 503
    url = f"{public.url}/callbacks/decodo"
    decodo = public.http.post(url, headers=headers, json={"id": "1", "passthrough": "x"})
    assert decodo.status_code == 401, decodo.text
    url = f"{public.url}/callbacks/firecrawl"
    firecrawl = public.http.post(url, headers=headers, json={"type": "batch_scrape.page"})
    assert firecrawl.status_code in (400, 401), firecrawl.text


def test_allowed_hosts_replace_the_loopback_names(redis_process: RedisProcess) -> None:
    settings = {"allowed_hosts": ("api.internal",), "public_url": PUBLIC_URL}
    with running_target(redis_process, **settings) as target:
        port = port_of(target)
        for host in (f"api.internal:{port}", "receiver.example.com"):
            assert ask(target, "GET", "/jobs", host).status_code == 200, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "evil.example"):
            refused = ask(target, "GET", "/jobs", host)
            assert refused.status_code == 421, host


def test_a_star_allows_any_host(redis_process: RedisProcess) -> None:
    with running_target(redis_process, allowed_hosts=("*",)) as target:
        for host in ("evil.example", "anything:1"):
            response = ask(target, "GET", "/openapi.json", host)
            assert response.status_code == 200, host
        assert raw_request(target, "GET", "/openapi.json", None)[0] == 200
