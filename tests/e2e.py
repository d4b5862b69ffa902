"""End-to-end helpers: the Decodo sandbox and the receiver as real servers on loopback."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import redis as sync_redis
import redis.cluster as sync_cluster

from receiver.app import create_app
from receiver.events import event_from_entry
from receiver.sandbox import decodo as decodo_sandbox
from receiver.service import ProcessStop, worker_beside
from receiver.settings import Settings
from receiver.store.keys import Keys
from tests.cluster import ClusterProcesses
from tests.servers import RedisProcess, free_port, serve_app

TOKEN = "e2e-api-token-7c1f9a"
FINAL = ("completed", "failed", "cancelled", "expired")


# Partitions of a deployment on the test cluster: two on each of its three masters.
CLUSTER_PARTITIONS = 6
# A real Redis: one server, or a cluster (tests/cluster.py).
Target = RedisProcess | ClusterProcesses
SyncClient = sync_redis.Redis | sync_cluster.RedisCluster


def target_client(redis: Target) -> SyncClient:
    """A synchronous client of the target, emptied: on a cluster, redis-py's cluster client."""
    client: SyncClient
    if isinstance(redis, ClusterProcesses):
        client = sync_cluster.RedisCluster.from_url(redis.url)
    else:
        client = sync_redis.Redis.from_url(redis.url)
    client.flushall()
    return client


def e2e_settings(redis: Target, sandbox_url: str, **changes: Any) -> Settings:
    cluster = isinstance(redis, ClusterProcesses)
    base = Settings(
        redis_url=redis.url,
        redis_cluster=cluster,
        partitions=CLUSTER_PARTITIONS if cluster else None,
        secret_keys=("e2e-key-5b8d2f0c4a",),
        api_token=TOKEN,
        decodo_base_url=sandbox_url,
        decodo_auth=decodo_sandbox.DEFAULT_AUTH,
        reconcile_after=30.0,
        retry_base=0.05,
        retry_cap=0.5,
        claim_idle=1.0,
        heartbeat_interval=0.2,
    )
    return base.with_changes(**changes)


@dataclass
class Deployment:
    api: str  # the receiver's base URL
    sandbox: str  # the Decodo sandbox's base URL
    redis: SyncClient
    keys: Keys  # of the deployment (its partitions)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def submit(self, body: dict[str, Any]) -> str:
        response = httpx.post(
            f"{self.api}/jobs",
            json={"provider": "decodo", **body},
            headers=self.headers(),
            timeout=10,
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.api}/jobs/{job_id}", headers=self.headers(), timeout=10)
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def wait(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.redis.hget(self.keys.job(job_id), "status")
            if status is not None and status.decode() in FINAL:  # type: ignore[union-attr]
                return self.job(job_id)
            time.sleep(0.05)
        job = self.job(job_id)
        tasks: dict[str, int] = {}
        for task in job.pop("tasks", []):
            tasks[task["status"]] = tasks.get(task["status"], 0) + 1
        raise AssertionError(f"job {job_id} did not end: {job}, tasks by status {tasks}")

    def results(self, job_id: str) -> dict[str, Any]:
        """Every page of the job's results, merged."""
        merged: dict[str, Any] = {}
        cursor: str | None = "0"
        page: dict[str, Any] = {}
        while cursor is not None:
            response = httpx.get(
                f"{self.api}/jobs/{job_id}/results",
                headers=self.headers(),
                params={"cursor": cursor},
                timeout=10,
            )
            assert response.status_code == 200, response.text
            page = response.json()
            merged.update(page["results"])
            cursor = page["next_cursor"]
        return {**page, "results": merged}

    def events(self, job_id: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(self.keys.events(self.keys.partition_of(job_id)))
        return [
            event_from_entry(entry_id, fields).to_dict()
            for entry_id, fields in entries
            if fields[b"job_id"].decode() == job_id
        ]

    def sandbox_stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{self.sandbox}/_sandbox/stats", timeout=10).json()
        return stats

    def configure_sandbox(self, **knobs: Any) -> None:
        response = httpx.patch(f"{self.sandbox}/_sandbox/config", json=knobs, timeout=10)
        assert response.status_code == 200, response.text


@contextlib.contextmanager
def decodo_sandbox_server(**knobs: Any) -> Iterator[str]:
    config = decodo_sandbox.DecodoSandboxConfig(seed=7, **knobs)
    with serve_app(decodo_sandbox.create_app(config)) as url:
        yield url


@contextlib.contextmanager
def deployment(
    redis: Target,
    *,
    with_worker: bool = True,
    settings: dict[str, Any] | None = None,
    **knobs: Any,
) -> Iterator[Deployment]:
    """The sandbox and the receiver (web, with a worker in the same process by default)."""
    client = target_client(redis)
    with decodo_sandbox_server(**knobs) as sandbox:
        port = free_port()
        config = e2e_settings(
            redis, sandbox, public_url=f"http://127.0.0.1:{port}", **(settings or {})
        )
        app = create_app(
            config,
            background=worker_beside(ProcessStop(signal_self=False)) if with_worker else None,
        )
        with serve_app(app, port) as api:
            yield Deployment(api, sandbox, client, Keys(partitions=config.partitions or 1))
    client.close()


@dataclass
class PolledDeployment(Deployment):
    firecrawl: str = ""  # the Firecrawl sandbox's base URL
    dify: str = ""  # the Dify sandbox's base URL

    def create(self, body: dict[str, Any], expect: int = 202) -> str:
        response = httpx.post(f"{self.api}/jobs", json=body, headers=self.headers(), timeout=10)
        assert response.status_code == expect, response.text
        job_id: str = response.json()["id"]
        return job_id

    def firecrawl_batch(self, urls: list[str], **options: Any) -> str:
        """A batch submitted straight to the Firecrawl sandbox, as another program would."""
        response = httpx.post(
            f"{self.firecrawl}/v2/batch/scrape",
            json={"urls": urls, **options},
            headers={"Authorization": "Bearer fc-sandbox"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        batch_id: str = response.json()["id"]
        return batch_id

    def dify_batch(self, documents: list[dict[str, Any]]) -> tuple[str, str, list[str]]:
        """(dataset id, batch, document ids) of a new multi-document batch in the sandbox."""
        dataset = httpx.post(f"{self.dify}/_sandbox/datasets", json={"name": "e2e"}, timeout=10)
        dataset_id: str = dataset.json()["id"]
        batch = httpx.post(
            f"{self.dify}/_sandbox/datasets/{dataset_id}/batches",
            json={"documents": documents},
            timeout=10,
        ).json()
        return dataset_id, batch["batch"], [d["id"] for d in batch["documents"]]

    def wait_for_field(self, job_id: str, name: str, timeout: float = 10.0) -> bytes:
        """The job hash field's value, once something has set it."""
        deadline = time.monotonic() + timeout
        while (value := self.redis.hget(self.keys.job(job_id), name)) is None:
            assert time.monotonic() < deadline, f"job {job_id} never got its {name}"
            time.sleep(0.02)
        return value  # type: ignore[return-value]

    def configure_firecrawl(self, **knobs: Any) -> None:
        response = httpx.patch(f"{self.firecrawl}/_sandbox/config", json=knobs, timeout=10)
        assert response.status_code == 200, response.text

    def stats(self, sandbox: str) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(f"{sandbox}/_sandbox/stats", timeout=10).json()
        return stats


@contextlib.contextmanager
def polled_deployment(
    redis: Target,
    *,
    firecrawl: dict[str, Any] | None = None,
    dify: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    with_worker: bool = True,
) -> Iterator[PolledDeployment]:
    """The three sandboxes and the receiver, set to poll fast."""
    from receiver.sandbox import dify as dify_sandbox
    from receiver.sandbox import firecrawl as firecrawl_sandbox

    client = target_client(redis)
    fc_config = firecrawl_sandbox.FirecrawlSandboxConfig(
        **{"seed": 3, "scrape_delay": 0.05, **(firecrawl or {})}
    )
    dify_config = dify_sandbox.DifySandboxConfig(
        **{"seed": 3, "step_seconds": 0.05, "jitter_seconds": 0.0, **(dify or {})}
    )
    with (
        decodo_sandbox_server() as decodo_url,
        serve_app(firecrawl_sandbox.create_app(fc_config)) as firecrawl_url,
        serve_app(dify_sandbox.create_app(dify_config)) as dify_url,
    ):
        port = free_port()
        config = e2e_settings(
            redis,
            decodo_url,
            public_url=f"http://127.0.0.1:{port}",
            firecrawl_base_url=firecrawl_url,
            firecrawl_api_key="fc-sandbox",
            dify_base_url=f"{dify_url}/v1",
            dify_api_key="dataset-sandbox",
            poll_min=0.05,
            poll_max=0.3,
            firecrawl_rps=1000.0,
            dify_rps=1000.0,
        ).with_changes(**(settings or {}))
        app = create_app(
            config,
            background=worker_beside(ProcessStop(signal_self=False)) if with_worker else None,
        )
        with serve_app(app, port) as api:
            keys = Keys(partitions=config.partitions or 1)
            yield PolledDeployment(api, decodo_url, client, keys, firecrawl_url, dify_url)
    client.close()
