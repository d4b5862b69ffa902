"""No secret in anything the receiver says: a whole end-to-end flow with every log line
(every record at DEBUG, with its fields, and the process's stderr as `receiver run` formats
it), every /metrics body, /openapi.json, /readyz and every answer of the API and the
callback endpoints captured, and grepped for each secret.

The flow: Decodo jobs submitted, called back and their results fetched; Firecrawl batches
with signed (cloud) and unsigned (self-hosted) webhooks; a Dify batch, and one with a
document in error; a 401 from each provider; refused callbacks and webhooks (forged,
tampered, wrong signature, another job's token), refused API calls (tokens wrong by a
character of the real one), and Redis refusing the receiver's credentials at the end. The
secrets: RECEIVER_API_TOKEN, each RECEIVER_SECRET_KEYS key, DECODO_AUTH (and the user and
password it encodes), FIRECRAWL_API_KEY, FIRECRAWL_WEBHOOK_SECRET, DIFY_API_KEY, the Redis
password, and every passthrough and webhook token the receiver signed.

The sandboxes run as processes of their own, so that their log lines (a sandbox logs the
webhook URL it calls) are not taken for the receiver's; the test's own requests go through
http.client, which logs nothing.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import pytest
import redis as sync_redis
import uvicorn

from receiver.app import create_app
from receiver.logs import configure_logging
from receiver.service import ProcessStop, worker_beside
from receiver.settings import Settings
from receiver.tokens import PassthroughSigner, sign_webhook
from tests.servers import ThreadedServer, free_port, run_redis, wait_for_port

FINAL = ("completed", "failed", "cancelled", "expired")


def _secret() -> str:
    """32 random characters; a letter first, so that no command line takes it for an option."""
    return "s" + secrets.token_urlsafe(24)[:31]


@dataclass(frozen=True)
class Secrets:
    api_token: str = field(default_factory=_secret)
    secret_keys: tuple[str, ...] = field(default_factory=lambda: (_secret(), _secret()))
    decodo_user: str = field(default_factory=lambda: "U" + secrets.token_hex(8))
    decodo_password: str = field(default_factory=_secret)
    firecrawl_api_key: str = field(default_factory=lambda: "fc-" + secrets.token_hex(16))
    firecrawl_webhook_secret: str = field(default_factory=_secret)
    dify_api_key: str = field(default_factory=lambda: "dataset-" + _secret())
    redis_password: str = field(default_factory=_secret)

    @property
    def decodo_auth(self) -> str:
        """DECODO_AUTH: the Basic token value, base64 of user:password."""
        return base64.b64encode(f"{self.decodo_user}:{self.decodo_password}".encode()).decode()

    def named(self) -> dict[str, str]:
        """Each secret by name, with the forms it could leak in."""
        found = {
            "RECEIVER_API_TOKEN": self.api_token,
            "DECODO_AUTH": self.decodo_auth,
            "DECODO_AUTH's user:password": f"{self.decodo_user}:{self.decodo_password}",
            "DECODO_AUTH's password": self.decodo_password,
            "FIRECRAWL_API_KEY": self.firecrawl_api_key,
            "FIRECRAWL_WEBHOOK_SECRET": self.firecrawl_webhook_secret,
            "DIFY_API_KEY": self.dify_api_key,
            "the Redis password": self.redis_password,
        }
        found |= {f"RECEIVER_SECRET_KEYS[{i}]": key for i, key in enumerate(self.secret_keys)}
        return found


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        head = "\n".join(f"{name}: {value}" for name, value in self.headers)
        return f"{self.status}\n{head}\n\n{self.body.decode('utf-8', 'replace')}"


@dataclass
class Flow:
    """The receiver under test and everything it said."""

    api: str
    secrets: Secrets
    redis: sync_redis.Redis
    answers: list[tuple[str, Answer]] = field(default_factory=list)  # (what, answer)

    def call(
        self,
        method: str,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        what: str = "",
        authorized: bool = True,
    ) -> Answer:
        """One request (through http.client: no log line of the test's own); the answer is
        kept, under `what` (the request's method and path, never its query: a token)."""
        parts = urlsplit(url if "://" in url else self.api + url)
        sent = dict(headers or {})
        if authorized and parts.path.startswith(("/jobs", "/events")):
            sent.setdefault("Authorization", f"Bearer {self.secrets.api_token}")
        content = body if isinstance(body, bytes) else (b"" if body is None else orjson.dumps(body))
        connection = http.client.HTTPConnection(parts.netloc, timeout=30)
        try:
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=content, headers=sent)
            response = connection.getresponse()
            answer = Answer(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        if parts.netloc == urlsplit(self.api).netloc:  # the receiver's, not a sandbox's
            self.answers.append((what or f"{method} {parts.path}", answer))
        return answer

    def create(self, body: dict[str, Any]) -> str:
        created = self.call("POST", "/jobs", body)
        assert created.status == 202, created.text
        job_id: str = created.json()["id"]
        return job_id

    def wait(self, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.call("GET", f"/jobs/{job_id}").json()
            if job["status"] in FINAL:
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.1)

    def scrape(self, what: str) -> None:
        """What an operator and a prober see: /metrics, /readyz, /openapi.json, the jobs."""
        self.call("GET", "/metrics", what=f"/metrics {what}")
        self.call("GET", "/readyz", what=f"/readyz {what}")
        self.call("GET", "/openapi.json")
        self.call("GET", "/jobs?limit=1000")


@contextlib.contextmanager
def sandbox(name: str, *knobs: str) -> Iterator[str]:
    """A provider sandbox as a process of its own; its base URL."""
    port = free_port()
    command = [sys.executable, "-m", f"receiver.sandbox.{name}", "--port", str(port), *knobs]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as p:
        try:
            wait_for_port(port, timeout=60)
            yield f"http://127.0.0.1:{port}"
        finally:
            p.terminate()
            p.wait(20)


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[str]:
    """The receiver with a worker beside it (`receiver run`), under uvicorn configured as
    `receiver web` configures it, but for every log level at DEBUG."""
    app = create_app(settings, background=worker_beside(ProcessStop(signal_self=False)))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=settings.port,
        log_level="debug",
        log_config=None,  # uvicorn's loggers propagate to the root handler, as in serve()
        lifespan="on",
        loop="asyncio",
        proxy_headers=False,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = ThreadedServer(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), server.pending()


@contextlib.contextmanager
def logging_as_run(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The process's logging as `receiver run` sets it (text lines on stderr, fields
    included), every logger at DEBUG, and each record captured by caplog too."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("httpx").level)
    configure_logging("text", logging.DEBUG)
    logging.getLogger("httpx").setLevel(logging.DEBUG)  # configure_logging quiets it
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield
    finally:
        root.handlers[:], level, httpx_level = saved
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(httpx_level)


def record_text(record: logging.LogRecord) -> str:
    """A log record whole: its message, every attribute (the fields given with `extra`,
    the arguments), and its exception's traceback."""
    text = f"{record.getMessage()} {vars(record)!r}"
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    return text


def leaks(sources: dict[str, str], named: dict[str, str]) -> list[str]:
    """`secret in source: ...context...` for each secret found in a source."""
    found = []
    for name, value in named.items():
        for source, text in sources.items():
            at = text.find(value)
            if at >= 0:
                found.append(f"{name} in {source}: ...{text[max(at - 80, 0) : at + 20]!r}...")
    return found


# -- the flow ------------------------------------------------------------------------------


def run_decodo(flow: Flow) -> list[str]:
    """Decodo jobs called back and fetched; a forged, a tampered and a foreign-task
    callback; a 401 from Decodo. The completed jobs."""
    done = [
        flow.create({"provider": "decodo", "urls": [f"https://example.com/{i}" for i in range(3)]}),
        flow.create({"provider": "decodo", "query": "receiver", "target": "google_search"}),
    ]
    for job_id in done:
        assert flow.wait(job_id)["status"] == "completed"
        results = flow.call("GET", f"/jobs/{job_id}/results")
        assert results.status == 200 and results.json()["results"], results.text
    return done


def run_firecrawl(flow: Flow, firecrawl: str) -> list[str]:
    """A cloud batch (signed webhooks) and a self-hosted one (unsigned, the URL's token)."""
    jobs = []
    for style in ("cloud", "selfhosted"):
        changed = flow.call("PATCH", f"{firecrawl}/_sandbox/config", {"webhook_style": style})
        assert changed.status == 200, changed.text
        urls = [f"https://example.com/{style}/{i}" for i in range(3)]
        jobs.append(flow.create({"provider": "firecrawl", "urls": urls, "formats": ["markdown"]}))
        assert flow.wait(jobs[-1])["status"] == "completed"
    return jobs


def run_dify(flow: Flow, dify: str) -> list[str]:
    """A batch indexed whole, and one with a document in error."""
    dataset = flow.call("POST", f"{dify}/_sandbox/datasets", {"name": "scan"}).json()["id"]
    jobs = []
    for documents in (
        [{"name": "a.txt", "segments": 3}],
        [{"name": "b.txt", "segments": 2}, {"name": "c.pdf", "fail": True}],
    ):
        batch = flow.call(
            "POST", f"{dify}/_sandbox/datasets/{dataset}/batches", {"documents": documents}
        ).json()["batch"]
        jobs.append(flow.create({"provider": "dify", "dataset_id": dataset, "batch": batch}))
    assert [flow.wait(job_id)["status"] for job_id in jobs] == ["completed", "failed"]
    return jobs


def run_provider_401s(flow: Flow, decodo: str, firecrawl: str, dify: str) -> None:
    """Each provider refuses our credentials (its own changed): each job fails, saying so."""
    refused = _secret()
    for url, knob in ((decodo, "auth"), (firecrawl, "api_key"), (dify, "api_key")):
        changed = flow.call("PATCH", f"{url}/_sandbox/config", {knob: refused})
        assert changed.status == 200, changed.text
    dataset = flow.call("POST", f"{dify}/_sandbox/datasets", {"name": "refused"}).json()["id"]
    batch = flow.call(
        "POST", f"{dify}/_sandbox/datasets/{dataset}/batches", {"documents": [{"name": "d"}]}
    ).json()["batch"]
    jobs = [
        flow.create({"provider": "decodo", "url": "https://example.com/refused"}),
        flow.create({"provider": "firecrawl", "urls": ["https://example.com/refused"]}),
        flow.create({"provider": "dify", "dataset_id": dataset, "batch": batch}),
    ]
    for job_id in jobs:
        job = flow.wait(job_id)
        assert job["status"] == "failed" and "401" in job["error"], job


def run_refusals(flow: Flow, decodo_job: str, firecrawl_jobs: list[str]) -> None:
    """Refused callbacks, webhooks and API calls; none of them writes a thing."""
    keys = flow.secrets.secret_keys
    real = PassthroughSigner(keys, 3600.0)
    forged = PassthroughSigner((_secret(),), 3600.0)
    token = real.sign(decodo_job)
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for body, status in (
        ({"id": "1", "status": "done", "passthrough": forged.sign(decodo_job)}, 401),
        ({"id": "1", "status": "done", "passthrough": tampered}, 401),
        ({"id": "1", "status": "done", "passthrough": token + "!!!!"}, 401),
        # The job has ended: a valid token's callback is taken as "closed", recording nothing.
        ({"id": "not-a-task-of-it", "status": "done", "passthrough": token}, 202),
        ({"id": "1", "status": "done"}, 401),
        (b"{not json", 400),
    ):
        refused = flow.call("POST", "/callbacks/decodo", body, what="refused decodo callback")
        assert refused.status == status, refused.text
    cloud, selfhosted = firecrawl_jobs
    batch = flow.call("GET", f"/jobs/{cloud}").json()["external"]["batch_id"]
    webhook = {"type": "batch_scrape.completed", "id": batch, "success": True, "data": []}
    raw = orjson.dumps(webhook)
    signature = sign_webhook(flow.secrets.firecrawl_webhook_secret, raw)
    own, foreign = real.webhook_signer().sign(cloud), real.webhook_signer().sign(selfhosted)
    for query, headers, status in (
        ({"token": own}, {"X-Firecrawl-Signature": "sha256=" + "0" * 64}, 401),
        ({}, {}, 401),
        ({"token": real.sign(cloud)}, {}, 401),  # a passthrough token is not a webhook's
        ({"token": foreign}, {"X-Firecrawl-Signature": signature}, 401),
        ({"token": own[:-2]}, {}, 401),
    ):
        url = "/callbacks/firecrawl" + (f"?{urlencode(query)}" if query else "")
        refused = flow.call("POST", url, raw, headers, what="refused firecrawl webhook")
        assert refused.status == status, refused.text
    api = flow.secrets.api_token
    for authorization in (f"Bearer x{api}", f"Bearer {api}x", f"Bearer {api} {api}", api):
        refused = flow.call("GET", "/jobs", headers={"Authorization": authorization})
        assert refused.status == 401, refused.text
    refused_jobs: list[Any] = [{"provider": "nope"}, {"provider": "decodo", "url": "ftp://x"}, []]
    for body in refused_jobs:
        assert flow.call("POST", "/jobs", body).status == 400
    assert flow.call("GET", "/jobs/nope").status == 404


def run_redis_refusing_us(flow: Flow) -> None:
    """Redis changes its password under the receiver: the web answers 503 and the worker
    stops, saying why; then the password is set back."""
    flow.redis.config_set("requirepass", _secret())
    flow.redis.client_kill_filter(_type="normal", skipme=True)
    time.sleep(1.0)
    flow.scrape("with Redis refusing our password")
    assert flow.call("GET", "/jobs").status == 503
    flow.redis.config_set("requirepass", flow.secrets.redis_password)


def job_keys(redis: sync_redis.Redis, job_ids: list[str]) -> dict[bytes, Any]:
    """Every key of these jobs with its DUMP."""
    found: dict[bytes, Any] = {}
    for job_id in job_ids:
        for key in redis.scan_iter(match=f"*{{{job_id}}}*"):
            found[key] = redis.dump(key)
    return found


# -- the scan ------------------------------------------------------------------------------


@dataclass
class Providers:
    decodo: str
    firecrawl: str
    dify: str


@contextlib.contextmanager
def providers(given: Secrets) -> Iterator[Providers]:
    """The three sandboxes, each a process of its own, expecting the given credentials."""
    decodo_knobs = [f"--auth={given.decodo_auth}", "--completion-delay=0.05"]
    firecrawl_knobs = [f"--api-key={given.firecrawl_api_key}", "--scrape-delay=0.05"]
    firecrawl_knobs += [f"--webhook-secret={given.firecrawl_webhook_secret}", "--seed=3"]
    dify_knobs = [f"--api-key={given.dify_api_key}", "--step-seconds=0.05"]
    dify_knobs += ["--jitter-seconds=0", "--seed=3"]
    with (
        sandbox("decodo", *decodo_knobs) as decodo,
        sandbox("firecrawl", *firecrawl_knobs) as firecrawl,
        sandbox("dify", *dify_knobs) as dify,
    ):
        yield Providers(decodo, firecrawl, dify)


def scan_settings(given: Secrets, redis_url: str, port: int, at: Providers) -> Settings:
    """Every secret set, the providers at their sandboxes, polls and retries fast."""
    return Settings(
        redis_url=redis_url,
        secret_keys=given.secret_keys,
        api_token=given.api_token,
        public_url=f"http://127.0.0.1:{port}",
        port=port,
        decodo_base_url=at.decodo,
        decodo_auth=given.decodo_auth,
        firecrawl_base_url=at.firecrawl,
        firecrawl_api_key=given.firecrawl_api_key,
        firecrawl_webhook_secret=given.firecrawl_webhook_secret,
        dify_base_url=f"{at.dify}/v1",
        dify_api_key=given.dify_api_key,
        poll_min=0.05,
        poll_max=0.3,
        firecrawl_rps=1000.0,
        dify_rps=1000.0,
        retry_base=0.05,
        retry_cap=0.5,
        heartbeat_interval=0.2,
    )


def run_flow(flow: Flow, at: Providers) -> None:
    """Every job of every provider to its end, the refusals, the providers' 401s, all that
    a subscriber and an operator read, and Redis refusing us at last."""
    flow.scrape("at the start")
    decodo_jobs = run_decodo(flow)
    firecrawl_jobs = run_firecrawl(flow, at.firecrawl)
    ended = [*decodo_jobs, *firecrawl_jobs, *run_dify(flow, at.dify)]
    flow.scrape("after the jobs")
    before = job_keys(flow.redis, ended)
    run_refusals(flow, decodo_jobs[0], firecrawl_jobs)
    assert job_keys(flow.redis, ended) == before  # the refusals wrote nothing
    run_provider_401s(flow, at.decodo, at.firecrawl, at.dify)
    flow.scrape("after the refusals")
    for job_id in ended:  # what a subscriber reads: the state, every event
        flow.call("GET", f"/jobs/{job_id}/results")
        flow.call("GET", f"/jobs/{job_id}/events")
        replayed = flow.call("GET", f"/jobs/{job_id}/events", None, {"Last-Event-ID": "0-0"})
        assert replayed.status == 200 and b"event: job." in replayed.body
    run_redis_refusing_us(flow)


def test_no_secret_in_any_log_line_metric_document_or_answer(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    given = Secrets()
    issued: list[str] = []  # every passthrough and webhook token signed (the test's too)
    by_receiver: list[str] = []  # those signed on the receiver's thread (web and worker)
    sign = PassthroughSigner.sign

    def signing(self: PassthroughSigner, job_id: str) -> str:
        token = sign(self, job_id)
        issued.append(token)
        if threading.current_thread() is not threading.main_thread():
            by_receiver.append(token)
        return token

    monkeypatch.setattr(PassthroughSigner, "sign", signing)
    port = free_port()
    with (
        run_redis("--requirepass", given.redis_password) as redis_server,
        providers(given) as at,
        logging_as_run(caplog),
    ):
        redis_url = f"redis://:{given.redis_password}@127.0.0.1:{redis_server.port}/0"
        redis = sync_redis.Redis.from_url(redis_url)
        with contextlib.closing(redis), serving(scan_settings(given, redis_url, port, at)) as api:
            flow = Flow(api, given, redis)
            run_flow(flow, at)
        captured = capfd.readouterr()
    records = caplog.records
    sources = {f"answer {i} ({what})": a.text for i, (what, a) in enumerate(flow.answers)}
    sources |= {f"log record {i} ({r.name})": record_text(r) for i, r in enumerate(records)}
    sources["stderr"], sources["stdout"] = captured.err, captured.out
    named = given.named() | {f"issued token {i}": token for i, token in enumerate(issued)}
    assert leaks(sources, named) == []
    # What was scanned held what the flow did: a token for each of the 3 Decodo and the 3
    # Firecrawl jobs, the refusals logged, the providers' 401s, the worker stopping on
    # Redis's refusal, on stderr as in the records, and the metrics at each step.
    assert len(by_receiver) >= 6, by_receiver
    messages = [record.getMessage() for record in records]
    assert "callback rejected" in messages and "firecrawl webhook" in messages, messages
    assert any("401" in text for text in map(record_text, records))
    assert "redis refused our credentials" in captured.err
    assert "callback rejected" in captured.err and "reason=bad_token" in captured.err
    assert sum(what.startswith("/metrics") for what, _ in flow.answers) == 4
