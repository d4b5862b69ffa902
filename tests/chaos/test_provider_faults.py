"""Provider faults through the sandboxes: connections reset, answers slower than the client's
timeout, 429 storms with and without Retry-After, 5xx bursts, JSON cut short and proxies'
HTML pages, on Decodo's results and on the Firecrawl and Dify status polls.

Whatever the fault, every job ends completed (each fault is transient), its results stored
once, with one final event and no work left behind; the polled providers get no more
requests than their configured rate lets through, Decodo's batches keep their interval; and
retries are bounded, as counted at the sandboxes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import httpx
import orjson
import pytest

from receiver.sandbox.decodo import DecodoSandboxConfig
from receiver.sandbox.dify import DifySandboxConfig, create_app
from receiver.sandbox.faults import FaultKnobs
from receiver.sandbox.firecrawl import FirecrawlSandboxConfig
from tests.chaos.provider_faults_helpers import (
    BATCH,
    BATCH_INTERVAL,
    DIFY_STATUS,
    FIRECRAWL_STATUS,
    RESULTS,
    RPS,
    assert_jobs_kept,
    faulty_deployment,
    fetch_attempts,
    inject,
    most_in,
    most_retries,
    rate_bound,
    start_jobs,
    stats,
    wait_all,
)
from tests.servers import RedisProcess, serve_app

# Seconds the receiver waits for a provider's answer in the `slow` case, and the sandbox's
# delay: longer, so every slow answer is one the receiver gave up on.
CLIENT_TIMEOUT = 1.0
SLOW_DELAY = 3.0
# Each fault's knobs, and how many requests in a row to each path it hits.
FAULTS: dict[str, tuple[dict[str, Any], int]] = {
    "reset": ({"inject": "reset"}, 2),
    "slow": ({"inject": "slow", "inject_delay": SLOW_DELAY}, 2),
    "429 with Retry-After": ({"inject": "429", "inject_retry_after": 1}, 2),
    "429 storm without Retry-After": ({"inject": "429_bare"}, 4),
    "5xx burst": ({"inject": "5xx", "inject_status": 503}, 3),
    "truncated JSON": ({"inject": "truncated"}, 2),
    "proxy's 502 HTML page": ({"inject": "html"}, 2),
    "HTML page with 200": ({"inject": "html", "inject_html_status": 200}, 2),
}
# Every kind of fault but `slow` (it takes a client timeout each), mixed at random.
MIXED = "reset,429,429_bare,5xx,truncated,html"
# Seconds each faulty path is down from its first request, in the outage test, and the
# backoff there (first retry, cap): at most 6 retries fit in it, 15 at the worker's pace.
OUTAGE = 3.0
OUTAGE_BASE = 0.5
OUTAGE_CAP = 1.0
# The rate limit counts the requests the receiver makes; its HTTP client (aiohttp) sends a
# GET whose connection was reset once more at once, by itself: up to one request more per
# reset (`resent` below) reaches a sandbox beside those the limit let through.


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_burst_of_faults_on_every_path_still_completes_every_job(
    redis_process: RedisProcess, fault: str
) -> None:
    knobs, burst = FAULTS[fault]
    with faulty_deployment(redis_process, provider_timeout=CLIENT_TIMEOUT) as d:
        inject(d, inject_burst=burst, **knobs)
        jobs = start_jobs(d, decodo=2, firecrawl=5, dify=5)
        ended = wait_all(d, jobs)
        elapsed = time.monotonic() - jobs.started
        assert_jobs_kept(d, jobs, ended)

        # Decodo: each task's results path got its burst of faults, then one answer, stored;
        # not one request more (no fetch made twice, none after the results were stored).
        decodo, tasks = stats(d.sandbox), sum(jobs.decodo.values())
        assert decodo[f"injected {RESULTS}"] == tasks * burst, decodo
        assert decodo[f"requests {RESULTS}"] == tasks * (burst + 1), decodo
        assert decodo["callbacks sent"] == tasks, decodo  # each one the receiver took, kept
        assert most_in(d.sandbox, BATCH, BATCH_INTERVAL - 0.05) == 1, decodo
        assert decodo.get("batch 429", 0) == 0, decodo

        # Firecrawl and Dify: each batch's status got its burst; all polls together stayed
        # under the shared rate, in every second and over the whole run.
        polled = (
            (d.firecrawl, FIRECRAWL_STATUS, len(jobs.firecrawl)),
            (d.dify, DIFY_STATUS, len(jobs.dify)),
        )
        for url, route, count in polled:
            seen = stats(url)
            resent = seen.get("injected reset", 0)
            assert seen[f"injected {route}"] == count * burst, seen
            assert seen[f"requests {route}"] <= rate_bound(RPS, elapsed) + resent, seen
            assert most_in(url, route, 1.0) <= rate_bound(RPS, 1.0) + resent, seen

        if knobs["inject"] == "429":  # every path waited the Retry-After it was given
            for url in (d.sandbox, d.firecrawl, d.dify):
                seen = stats(url)
                assert seen.get("injected retries too early", 0) == 0, seen
                assert seen["injected retries in time"] == seen["injected 429"], seen


def test_an_outage_of_every_path_is_retried_with_backoff_not_in_a_loop(
    redis_process: RedisProcess,
) -> None:
    # Backoff slower than the worker's look at its schedule (every 0.2 s), so a retry made
    # without its backoff would show as more retries than fit in the outage.
    backoff = {"retry_base": OUTAGE_BASE, "retry_cap": OUTAGE_CAP}
    with faulty_deployment(redis_process, **backoff) as d:
        inject(d, inject=MIXED, inject_seconds=OUTAGE, inject_retry_after=1)
        jobs = start_jobs(d, decodo=2, firecrawl=5, dify=5)
        ended = wait_all(d, jobs)
        assert_jobs_kept(d, jobs, ended)

        # Every path is down for OUTAGE seconds from its first request: its faulted attempts
        # are the first and the retries whose backoff fits in the outage, then one answers.
        most = 1 + most_retries(OUTAGE, OUTAGE_BASE, OUTAGE_CAP)
        decodo, tasks = stats(d.sandbox), sum(jobs.decodo.values())
        retries = {t: n for job in jobs.decodo for t, n in fetch_attempts(d, job).items()}
        assert len(retries) == tasks and max(retries.values()) <= most, retries
        attempts = tasks + sum(retries.values())
        resent = decodo.get("injected reset", 0)
        assert attempts <= decodo[f"requests {RESULTS}"] <= attempts + resent, decodo

        polled = (
            (d.firecrawl, FIRECRAWL_STATUS, len(jobs.firecrawl)),
            (d.dify, DIFY_STATUS, len(jobs.dify)),
        )
        for url, route, count in polled:
            seen = stats(url)
            resent = seen.get("injected reset", 0)
            assert count <= seen[f"injected {route}"] <= count * most + resent, seen
            assert most_in(url, route, 1.0) <= rate_bound(RPS, 1.0) + resent, seen
        for url in (d.sandbox, d.firecrawl, d.dify):
            assert stats(url).get("injected retries too early", 0) == 0


def test_a_share_of_mixed_faults_at_random_still_completes_every_job(
    redis_process: RedisProcess,
) -> None:
    with faulty_deployment(redis_process) as d:
        inject(d, inject=MIXED, inject_rate=0.3, inject_retry_after=1)
        jobs = start_jobs(d, decodo=2, firecrawl=5, dify=5)
        ended = wait_all(d, jobs)
        elapsed = time.monotonic() - jobs.started
        assert_jobs_kept(d, jobs, ended)

        # Decodo: the sandbox saw one request per attempt the receiver counted (and the HTTP
        # client's own resends of reset ones): no attempt it did not know of.
        decodo, tasks = stats(d.sandbox), sum(jobs.decodo.values())
        retries = {t: n for job in jobs.decodo for t, n in fetch_attempts(d, job).items()}
        assert decodo[f"injected {RESULTS}"] > 0, decodo
        attempts = tasks + sum(retries.values())
        resent = decodo.get("injected reset", 0)
        assert attempts <= decodo[f"requests {RESULTS}"] <= attempts + resent, decodo

        for url, route in ((d.firecrawl, FIRECRAWL_STATUS), (d.dify, DIFY_STATUS)):
            seen = stats(url)
            resent = seen.get("injected reset", 0)
            assert seen[f"injected {route}"] > 0, seen
            assert seen[f"requests {route}"] <= rate_bound(RPS, elapsed) + resent, seen
            assert most_in(url, route, 1.0) <= rate_bound(RPS, 1.0) + resent, seen
        for url in (d.sandbox, d.firecrawl, d.dify):
            assert stats(url).get("injected retries too early", 0) == 0


# -- the fault layer itself, as a client sees it ------------------------------------------


@pytest.mark.parametrize("config", [DecodoSandboxConfig, FirecrawlSandboxConfig, DifySandboxConfig])
def test_fault_knobs_shadow_no_knob_of_a_sandbox(config: type[FaultKnobs]) -> None:
    # A sandbox field of the same name would silently replace the shared knob.
    shared = {f.name for f in dataclasses.fields(FaultKnobs)}
    assert not shared & set(vars(config)["__annotations__"])


def dify_with(**knobs: Any) -> tuple[DifySandboxConfig, Any]:
    config = DifySandboxConfig(seed=1, step_seconds=0.01, jitter_seconds=0.0, **knobs)
    return config, create_app(config)


def status_url(url: str) -> str:
    """The indexing-status URL of a new one-document batch in the Dify sandbox at `url`."""
    dataset = httpx.post(f"{url}/_sandbox/datasets", json={"name": "faults"}, timeout=5).json()
    batch = httpx.post(
        f"{url}/_sandbox/datasets/{dataset['id']}/batches",
        json={"documents": [{"name": "a.txt"}]},
        timeout=5,
    ).json()["batch"]
    return f"{url}/v1/datasets/{dataset['id']}/documents/{batch}/indexing-status"


def faulted(kind: str, **knobs: Any) -> httpx.Response | Exception:
    """What a client gets from a Dify sandbox whose every status poll gets `kind`."""
    config, app = dify_with(inject=kind, inject_rate=1.0, inject_delay=2.0, **knobs)
    with serve_app(app) as url:
        polled = status_url(url)
        headers = {"Authorization": f"Bearer {config.api_key}"}
        try:
            return httpx.get(polled, headers=headers, timeout=0.5)
        except httpx.HTTPError as exc:
            return exc


def test_sandbox_reset_closes_the_connection_without_an_answer() -> None:
    assert isinstance(faulted("reset"), httpx.ReadError | httpx.RemoteProtocolError)


def test_sandbox_slow_answers_after_the_client_gave_up() -> None:
    assert isinstance(faulted("slow"), httpx.ReadTimeout)


@pytest.mark.parametrize(("kind", "header"), [("429", "3"), ("429_bare", None)])
def test_sandbox_429_says_when_to_retry_only_with_retry_after(
    kind: str, header: str | None
) -> None:
    response = faulted(kind, inject_retry_after=3)
    assert isinstance(response, httpx.Response) and response.status_code == 429
    assert response.headers.get("Retry-After") == header
    assert response.json()["code"] == "too_many_requests"


def test_sandbox_truncated_json_is_a_200_whose_body_ends_too_soon() -> None:
    response = faulted("truncated")
    assert isinstance(response, httpx.Response) and response.status_code == 200
    assert response.content.startswith(b'{"data":[{')
    assert int(response.headers["content-length"]) == len(response.content)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)


@pytest.mark.parametrize(("kind", "status"), [("5xx", 503), ("html", 502)])
def test_sandbox_5xx_and_html_pages(kind: str, status: int) -> None:
    response = faulted(kind)
    assert isinstance(response, httpx.Response) and response.status_code == status
    html = response.headers["content-type"].startswith("text/html")
    assert html == (kind == "html"), response.text


def test_sandbox_burst_faults_each_path_then_answers_and_counts_arrivals() -> None:
    config, app = dify_with(inject="5xx", inject_burst=3)
    with serve_app(app) as url:
        first, second = status_url(url), status_url(url)
        headers = {"Authorization": f"Bearer {config.api_key}"}
        codes = [httpx.get(u, headers=headers, timeout=5).status_code for u in [first] * 4]
        codes.append(httpx.get(second, headers=headers, timeout=5).status_code)
        counts = stats(url, window=60)
    assert codes == [503, 503, 503, 200, 503]
    assert counts[f"requests {DIFY_STATUS}"] == 5 and counts[f"injected {DIFY_STATUS}"] == 4
    assert counts[f"requests {DIFY_STATUS} max/60s"] == 5
    assert counts[f"{DIFY_STATUS} 200"] == 1  # the sandbox's own count: answers it gave
