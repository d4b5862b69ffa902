from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.sandbox.decodo import DEFAULT_AUTH, SEED_CALLBACK, DecodoSandboxConfig, create_app
from tests.receiver_app import seed_callback_body, seed_status_body
from tests.servers import free_port, serve_app, wait_for_port

AUTH = {"Authorization": f"Basic {DEFAULT_AUTH}"}
URL = "https://ip.decodo.com"

# The keys of the seed's submit response example, in its order.
SEED_TASK_KEYS = [
    "url", "page_from", "limit", "geo", "device_type", "headless", "parse", "locale", "domain",
    "output_schema", "created_at", "id", "status", "content_encoding", "updated_at", "page_count",
    "http_method", "cookies", "force_headers", "force_cookies", "headers", "session_id",
    "successful_status_codes", "follow_redirect", "payload", "store_id", "headers_cookies_policy",
]  # fmt: skip
# The keys of the seed's status examples, in their order.
SEED_STATUS_KEYS = [
    "status", "id", "created_at", "updated_at", "target", "query", "page_from", "limit",
    "device_type", "headless", "parse", "domain", "page_count", "force_headers", "force_cookies",
    "headers_cookies_policy",
]  # fmt: skip
# The keys of the seed's callback example, in its order.
SEED_CALLBACK_KEYS = [
    "id", "status", "target", "query", "url", "domain", "limit", "locale", "geo", "device_type",
    "page_from", "parse", "output_schema", "headless", "priority", "persist", "content_encoding",
    "created_at", "updated_at",
]  # fmt: skip
STAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
REPOSITORY = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def open_sandbox(**knobs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A real sandbox on loopback and an authenticated client for it."""
    config = DecodoSandboxConfig(seed=1, **knobs)
    with serve_app(create_app(config)) as base_url:
        async with httpx.AsyncClient(base_url=base_url, headers=AUTH, timeout=10) as client:
            yield client


class CallbackRecorder:
    """Keeps the bodies POSTed to its url; answers the given statuses first, then 200."""

    def __init__(self, url: str, statuses: tuple[int, ...]) -> None:
        self.url = url
        self.bodies: list[dict[str, Any]] = []
        self._statuses = list(statuses)

    def record(self, body: dict[str, Any]) -> Response:
        self.bodies.append(body)
        return Response(status_code=self._statuses.pop(0) if self._statuses else 200)


class CallbackServer:
    """One real callback endpoint for the module; each test records under a path of its own."""

    def __init__(self) -> None:
        self.base_url = ""
        self._recorders: dict[str, CallbackRecorder] = {}

    async def receive(self, request: Request) -> Response:
        recorder = self._recorders[request.path_params["name"]]
        return recorder.record(orjson.loads(await request.body()))

    def recorder(self, statuses: tuple[int, ...] = ()) -> CallbackRecorder:
        name = f"r{len(self._recorders)}"
        recorder = CallbackRecorder(f"{self.base_url}/callback/{name}", statuses)
        self._recorders[name] = recorder
        return recorder


@pytest.fixture(scope="module")
def callbacks() -> Iterator[CallbackServer]:
    server = CallbackServer()
    app = Starlette(routes=[Route("/callback/{name}", server.receive, methods=["POST"])])
    with serve_app(app) as base_url:
        server.base_url = base_url
        yield server


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def wait_for_status(client: httpx.AsyncClient, task_id: str, status: str) -> None:
    deadline = time.monotonic() + 5
    while (await client.get(f"/v3/task/{task_id}")).json()["status"] != status:
        assert time.monotonic() < deadline, f"task {task_id} never became {status}"
        await asyncio.sleep(0.01)


async def submit(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.post("/v3/task", json=params or {"url": URL})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    counts: dict[str, int] = (await client.get("/_sandbox/stats")).json()
    return counts


async def call_endpoint(client: httpx.AsyncClient, endpoint: str, task_id: str) -> httpx.Response:
    if endpoint == "submit":
        return await client.post("/v3/task", json={"url": URL})
    if endpoint == "batch":
        return await client.post("/v3/task/batch", json={"url": [URL]})
    suffix = "/results" if endpoint == "results" else ""
    return await client.get(f"/v3/task/{task_id}{suffix}")


@pytest.mark.anyio
async def test_submit_answers_the_seed_task_object() -> None:
    async with open_sandbox(completion_delay=60) as client:
        task = await submit(client, url=URL)
    assert list(task) == SEED_TASK_KEYS
    assert re.fullmatch(r"[1-9]\d{18}", task["id"])
    assert STAMP.match(task["created_at"]) and task["updated_at"] == task["created_at"]
    expected_values = {
        "url": URL, "page_from": 1, "limit": 10, "geo": None, "device_type": "desktop",
        "headless": None, "parse": False, "locale": None, "domain": "com", "output_schema": None,
        "status": "pending", "content_encoding": "utf-8", "page_count": 1, "http_method": "get",
        "cookies": [], "force_headers": False, "force_cookies": False, "headers": [],
        "session_id": None, "successful_status_codes": [], "follow_redirect": None,
        "payload": None, "store_id": None, "headers_cookies_policy": False,
    }  # fmt: skip
    assert {key: task[key] for key in expected_values} == expected_values


@pytest.mark.anyio
async def test_submit_echoes_target_query_and_callback_url() -> None:
    params = {
        "target": "google_ai_mode",
        "query": "best health trackers under $200",
        "parse": True,
        "headless": "html",
        "callback_url": "http://127.0.0.1:1/callback",
        "passthrough": "note",
    }
    async with open_sandbox(completion_delay=60) as client:
        task = await submit(client, **params)
        status = (await client.get(f"/v3/task/{task['id']}")).json()
    assert set(task) == {*SEED_TASK_KEYS, "target", "query", "callback_url"}
    assert task["url"] is None and task["parse"] is True and task["headless"] == "html"
    assert task["target"] == "google_ai_mode" and task["query"] == params["query"]
    assert list(status) == SEED_STATUS_KEYS and status["status"] == "pending"


def test_status_keys_are_the_seeds() -> None:
    assert list(seed_status_body()) == SEED_STATUS_KEYS


@pytest.mark.anyio
async def test_status_answers_the_seed_status_example() -> None:
    seed = seed_status_body()
    params = {key: seed[key] for key in ("target", "query", "parse", "headless")}
    async with open_sandbox(completion_delay=60) as client:
        task = await submit(client, **params, callback_url="http://127.0.0.1:1/c", geo="Spain")
        pending = (await client.get(f"/v3/task/{task['id']}")).json()
        await client.post(f"/_sandbox/tasks/{task['id']}/complete")
        done = (await client.get(f"/v3/task/{task['id']}")).json()
    own = {"id": task["id"], "created_at": task["created_at"], "updated_at": task["updated_at"]}
    assert list(pending) == SEED_STATUS_KEYS and pending == {**seed, **own}
    assert list(done) == SEED_STATUS_KEYS and done["status"] == "done"
    assert STAMP.match(done["updated_at"])


@pytest.mark.anyio
async def test_status_of_a_url_task_has_only_the_seed_fields() -> None:
    async with open_sandbox(completion_delay=60) as client:
        task = await submit(client, url=URL, http_method="post", cookies=[{"k": "v"}])
        status = (await client.get(f"/v3/task/{task['id']}")).json()
    assert list(status) == SEED_STATUS_KEYS
    assert status["id"] == task["id"] and status["status"] == "pending"
    assert status["target"] == "universal" and status["query"] == ""


@pytest.mark.anyio
async def test_submit_without_url_or_query_is_400() -> None:
    async with open_sandbox() as client:
        response = await client.post("/v3/task", json={"target": "universal"})
    assert response.status_code == 400
    body = response.json()
    assert body["status"] == "failed" and body["message"] and body["errors"]


@pytest.mark.anyio
async def test_requests_without_the_right_auth_are_401() -> None:
    wrong = [
        {},
        {"Authorization": "Basic d3Jvbmc6d3Jvbmc="},
        {"Authorization": f"Bearer {DEFAULT_AUTH}"},
    ]
    async with open_sandbox(completion_delay=60) as client:
        task_id = (await submit(client))["id"]
        for headers in wrong:
            client.headers.pop("Authorization", None)
            client.headers.update(headers)
            for endpoint in ("submit", "batch", "status", "results"):
                response = await call_endpoint(client, endpoint, task_id)
                assert response.status_code == 401, (endpoint, headers)
                assert response.json() == {"status": "failed", "message": "Username invalid."}


@pytest.mark.anyio
async def test_batch_answers_one_task_per_item_in_order() -> None:
    queries = ["coffee", "tea", "cocoa"]
    async with open_sandbox(completion_delay=60) as client:
        response = await client.post(
            "/v3/task/batch", json={"query": queries, "target": "google_search"}
        )
    assert response.status_code == 200
    batch = response.json()
    assert set(batch) == {"id", "queries", "errors"} and batch["errors"] == []
    assert re.fullmatch(r"\d{19}", batch["id"])
    assert [task["query"] for task in batch["queries"]] == queries
    assert all(task["target"] == "google_search" for task in batch["queries"])
    assert all(set(task) == {*SEED_TASK_KEYS, "target", "query"} for task in batch["queries"])
    assert len({task["id"] for task in batch["queries"]} | {batch["id"]}) == 4


@pytest.mark.anyio
async def test_batch_with_bad_input_is_400() -> None:
    too_many = {"url": [URL] * 3001}
    both = {"url": [URL], "query": ["tea"]}
    bodies = [too_many, both, {"url": URL}, {"url": []}, {"target": "universal"}]
    async with open_sandbox(batch_rps=0) as client:
        for body in bodies:
            response = await client.post("/v3/task/batch", json=body)
            assert response.status_code == 400, body
            assert response.json()["status"] == "failed" and response.json()["errors"]


@pytest.mark.anyio
async def test_second_batch_within_one_second_is_429() -> None:
    async with open_sandbox(completion_delay=60) as client:
        first = await client.post("/v3/task/batch", json={"url": [URL]})
        second = await client.post("/v3/task/batch", json={"url": [URL]})
        await client.post("/_sandbox/advance", json={"seconds": 1.0})
        third = await client.post("/v3/task/batch", json={"url": [URL]})
    assert first.status_code == 200 and third.status_code == 200
    assert second.status_code == 429
    assert second.json() == {"status": "failed", "message": "Too many requests"}
    assert second.headers["Retry-After"] == "1"


@pytest.mark.anyio
async def test_refused_batch_does_not_use_the_rate_budget() -> None:
    bad = [b"{", orjson.dumps({"url": [URL] * 3001}), orjson.dumps({"url": []})]
    async with open_sandbox(completion_delay=60) as client:
        for body in bad:
            refused = await client.post("/v3/task/batch", content=body)
            assert refused.status_code == 400, body
        accepted = await client.post("/v3/task/batch", json={"url": [URL]})
        limited = await client.post("/v3/task/batch", json={"url": [URL]})
    assert accepted.status_code == 200, accepted.text
    assert limited.status_code == 429  # the budget is still one batch per second


def test_sandbox_callback_is_the_seed_example() -> None:
    seed = seed_callback_body()
    assert list(SEED_CALLBACK) == list(seed) == SEED_CALLBACK_KEYS
    assert SEED_CALLBACK == seed


@pytest.mark.anyio
async def test_results_are_204_while_pending_then_200() -> None:
    async with open_sandbox(completion_delay=0.3) as client:
        task = await submit(client, url=URL)
        pending = await client.get(f"/v3/task/{task['id']}/results")
        await wait_for_status(client, task["id"], "done")
        done = await client.get(f"/v3/task/{task['id']}/results")
    assert pending.status_code == 204 and pending.content == b""
    assert done.status_code == 200
    [result] = done.json()["results"]
    assert set(result) == {
        "content", "status_code", "url", "task_id", "created_at", "updated_at", "headers",
        "cookies",
    }  # fmt: skip
    assert isinstance(result["content"], str) and "<html" in result["content"]
    assert result["status_code"] == 200 and result["url"] == URL
    assert result["task_id"] == task["id"] and result["cookies"] == []
    assert STAMP.match(result["updated_at"])


@pytest.mark.anyio
async def test_results_content_is_an_object_when_parse_is_true() -> None:
    async with open_sandbox(completion_delay=0) as client:
        task = await submit(client, target="google_search", query="tea", parse=True)
        await wait_for_status(client, task["id"], "done")
        [result] = (await client.get(f"/v3/task/{task['id']}/results")).json()["results"]
    assert isinstance(result["content"], dict)


@pytest.mark.anyio
@pytest.mark.parametrize("faulted_results", ["404", "204"])
async def test_faulted_task_results(faulted_results: str) -> None:
    async with open_sandbox(completion_delay=0, fault_rate=1, faulted_results=faulted_results) as (
        client
    ):
        task = await submit(client)
        await wait_for_status(client, task["id"], "faulted")
        response = await client.get(f"/v3/task/{task['id']}/results")
    if faulted_results == "204":
        assert response.status_code == 204 and response.content == b""
    else:
        assert response.status_code == 404
        assert response.json() == {"status": "failed", "message": "Task faulted"}


@pytest.mark.anyio
async def test_unknown_task_is_404() -> None:
    async with open_sandbox() as client:
        for path in ("/v3/task/1234567890123456789", "/v3/task/1234567890123456789/results"):
            response = await client.get(path)
            assert response.status_code == 404
            assert response.json() == {"status": "failed", "message": "Task not found"}


@pytest.mark.anyio
async def test_task_expires_after_retention() -> None:
    async with open_sandbox(completion_delay=0) as client:
        task = await submit(client)
        await wait_for_status(client, task["id"], "done")
        await client.post("/_sandbox/advance", json={"seconds": 86401})
        results = await client.get(f"/v3/task/{task['id']}/results")
        status = await client.get(f"/v3/task/{task['id']}")
    expired = {"status": "failed", "message": "Task results expired"}
    assert results.status_code == 404 and results.json() == expired
    assert status.status_code == 404 and status.json() == expired


@pytest.mark.anyio
@pytest.mark.parametrize("passthrough_key", ["passthrough", "passtrough"])
async def test_task_callback_matches_the_seed(
    passthrough_key: str, callbacks: CallbackServer
) -> None:
    recorder = callbacks.recorder()
    async with open_sandbox(completion_delay=0, passthrough_key=passthrough_key) as client:
        for spelling in ("passthrough", "passtrough"):  # the request may use either
            params = {"url": URL, "callback_url": recorder.url, spelling: f"note-{spelling}"}
            task = await submit(client, **params)
            await wait_until(lambda: len(recorder.bodies) == 1)
            body = recorder.bodies.pop()
            assert list(body) == [*SEED_CALLBACK_KEYS, passthrough_key]
            assert body[passthrough_key] == f"note-{spelling}"
            assert body["id"] == task["id"] and body["status"] == "done"
            assert body["parse"] == 0 and body["priority"] == 0 and body["persist"] is True
            assert body["target"] == "universal" and body["query"] == "" and body["url"] == URL
            assert STAMP.match(body["created_at"]) and STAMP.match(body["updated_at"])


@pytest.mark.anyio
async def test_task_callback_without_passthrough_has_only_the_seed_keys(
    callbacks: CallbackServer,
) -> None:
    recorder = callbacks.recorder()
    async with open_sandbox(completion_delay=0) as client:
        await submit(client, query="tea", target="google_search", callback_url=recorder.url)
        await wait_until(lambda: len(recorder.bodies) == 1)
    assert list(recorder.bodies[0]) == SEED_CALLBACK_KEYS


@pytest.mark.anyio
@pytest.mark.parametrize("passthrough_key", ["passthrough", "passtrough"])
async def test_short_callback_variant(passthrough_key: str, callbacks: CallbackServer) -> None:
    recorder = callbacks.recorder()
    knobs = {"completion_delay": 0, "callback_variant": "short", "passthrough_key": passthrough_key}
    async with open_sandbox(**knobs) as client:
        task = await submit(client, url=URL, callback_url=recorder.url, passthrough="n")
        await wait_until(lambda: len(recorder.bodies) == 1)
    assert recorder.bodies == [{"task_id": task["id"], "status_code": 200, passthrough_key: "n"}]


@pytest.mark.anyio
async def test_complete_route_finishes_a_task_and_fires_its_callback(
    callbacks: CallbackServer,
) -> None:
    recorder = callbacks.recorder()
    async with open_sandbox(completion_delay=60) as client:
        task = await submit(client, url=URL, callback_url=recorder.url)
        path = f"/_sandbox/tasks/{task['id']}/complete"
        forced = await client.post(path, json={"status": "faulted"})
        again = await client.post(path)
        await wait_until(lambda: len(recorder.bodies) == 1)
        status = (await client.get(f"/v3/task/{task['id']}")).json()["status"]
    assert forced.status_code == 200 and forced.json()["status"] == "faulted"
    assert again.status_code == 409
    assert status == "faulted" and recorder.bodies[0]["status"] == "faulted"


@pytest.mark.anyio
async def test_drop_rate_one_sends_no_callback(callbacks: CallbackServer) -> None:
    recorder = callbacks.recorder()
    async with open_sandbox(completion_delay=0, drop_rate=1) as client:
        tasks = [await submit(client, url=URL, callback_url=recorder.url) for _ in range(5)]
        for task in tasks:
            await wait_for_status(client, task["id"], "done")
        await asyncio.sleep(0.1)
        counts = await stats(client)
    assert recorder.bodies == []
    assert counts["callbacks dropped"] == 5 and "callbacks sent" not in counts


@pytest.mark.anyio
async def test_duplicate_rate_one_sends_each_callback_twice(callbacks: CallbackServer) -> None:
    recorder = callbacks.recorder()
    async with open_sandbox(completion_delay=0, duplicate_rate=1) as client:
        tasks = [await submit(client, url=URL, callback_url=recorder.url) for _ in range(3)]
        await wait_until(lambda: len(recorder.bodies) == 6)
        await asyncio.sleep(0.1)
        counts = await stats(client)
    ids = sorted(body["id"] for body in recorder.bodies)
    assert ids == sorted([task["id"] for task in tasks] * 2)
    assert counts["callbacks duplicated"] == 3 and counts["callbacks sent"] == 6


@pytest.mark.anyio
async def test_failed_callback_is_retried(callbacks: CallbackServer) -> None:
    recorder = callbacks.recorder(statuses=(500,))
    knobs = {"completion_delay": 0, "callback_retries": 2, "callback_retry_delay": 0.05}
    async with open_sandbox(**knobs) as client:
        await submit(client, url=URL, callback_url=recorder.url)
        await wait_until(lambda: len(recorder.bodies) == 2)
        await asyncio.sleep(0.1)
        counts = await stats(client)
    assert recorder.bodies[0] == recorder.bodies[1]
    assert counts["callbacks failed"] == 1 and counts["callbacks sent"] == 1
    assert counts["callback 500"] == 1 and counts["callback 200"] == 1


@pytest.mark.anyio
async def test_reorder_window_delivers_every_batch_callback_out_of_order(
    callbacks: CallbackServer,
) -> None:
    recorder = callbacks.recorder()
    urls = [f"{URL}/{n}" for n in range(200)]
    async with open_sandbox(completion_delay=0, reorder_window=0.3) as client:
        batch = await client.post(
            "/v3/task/batch", json={"url": urls, "callback_url": recorder.url}
        )
        await wait_until(lambda: len(recorder.bodies) == len(urls))
    sent = [task["id"] for task in batch.json()["queries"]]
    received = [body["id"] for body in recorder.bodies]
    assert sorted(received) == sorted(sent) and received != sent


@pytest.mark.anyio
async def test_big_batch_completes_on_one_scheduler() -> None:
    queries = [f"query {n}" for n in range(10_000)]
    async with open_sandbox(batch_max_items=10_000) as client:
        response = await client.post("/v3/task/batch", json={"query": queries})
        tasks = response.json()["queries"]
        await wait_for_status(client, tasks[-1]["id"], "done")
        first = await client.get(f"/v3/task/{tasks[0]['id']}/results")
    assert len(tasks) == 10_000 and first.status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 500])
async def test_error_injection_at_rate_one(status: int) -> None:
    message = "Too many requests" if status == 429 else "Internal server error"
    async with open_sandbox(completion_delay=0, retry_after=7, batch_rps=0) as client:
        task = await submit(client)
        await wait_for_status(client, task["id"], "done")
        for endpoint in ("submit", "batch", "status", "results"):
            knob = f"{endpoint}_{status}_rate"
            await client.patch("/_sandbox/config", json={knob: 1.0})
            response = await call_endpoint(client, endpoint, task["id"])
            await client.patch("/_sandbox/config", json={knob: 0.0})
            assert response.status_code == status, endpoint
            assert response.json() == {"status": "failed", "message": message}
            assert response.headers.get("Retry-After") == ("7" if status == 429 else None)
            assert (await stats(client))[f"{endpoint} {status}"] == 1


@pytest.mark.anyio
async def test_results_latency_delays_the_answer() -> None:
    async with open_sandbox(completion_delay=60, results_latency=0.2) as client:
        task = await submit(client)
        started = time.monotonic()
        response = await client.get(f"/v3/task/{task['id']}/results")
    assert response.status_code == 204 and time.monotonic() - started >= 0.2


def test_main_runs_the_sandbox_with_knobs_from_the_command_line() -> None:
    port = free_port()
    command = [sys.executable, "-m", "receiver.sandbox.decodo", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--drop-rate", "0.5", "--seed", "3"],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        config = httpx.get(f"http://127.0.0.1:{port}/_sandbox/config").json()
    finally:
        process.terminate()
        process.wait(10)
    assert config["drop_rate"] == 0.5 and config["seed"] == 3
    assert config["batch_max_items"] == 3000
