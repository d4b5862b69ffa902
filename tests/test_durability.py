"""RECEIVER_DURABILITY: the level resolved against real redis-servers, and what a 202 waits for."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import httpx
import pytest
import redis as sync_redis
from redis.asyncio import Redis

from receiver.app import create_app
from receiver.durability import Confirm, Durability, Persistence, resolve
from receiver.errors import ConfigError, NotConfirmed
from receiver.settings import Settings
from receiver.store import Store
from receiver.store.keys import Keys
from receiver.store.server import read_persistence
from receiver.tokens import PassthroughSigner
from tests.receiver_app import KEYS, SEED_CALLBACK
from tests.servers import RedisProcess, child_env, free_port, run_cli, run_redis, serve_app

REDIS_KEYS = Keys()

ALWAYS = Persistence(appendonly=True, appendfsync="always", version=(7, 0), replicas=0)
EVERYSEC = Persistence(appendonly=True, appendfsync="everysec", version=(7, 0), replicas=0)


def wanted(level: str) -> Settings:
    return Settings(redis_url="redis://127.0.0.1:1/0", durability=level)


def test_resolve_embedded_is_fsync_by_default_and_refuses_replica() -> None:
    assert resolve(Settings(), None) == (Durability.FSYNC, Confirm.NONE)
    assert resolve(Settings(durability="none"), None) == (Durability.NONE, Confirm.NONE)
    with pytest.raises(ConfigError, match="needs a Redis with a replica"):
        resolve(Settings(durability="replica"), None)


def test_resolve_fsync_on_a_redis_that_fsyncs_always_adds_no_command() -> None:
    assert resolve(wanted("fsync"), ALWAYS) == (Durability.FSYNC, Confirm.NONE)


def test_resolve_fsync_uses_waitaof_where_the_server_has_it() -> None:
    newer = Persistence(appendonly=True, appendfsync="everysec", version=(7, 2), replicas=0)
    assert resolve(wanted("fsync"), newer) == (Durability.FSYNC, Confirm.WAITAOF)


def test_resolve_fsync_refuses_a_redis_that_cannot_give_it() -> None:
    with pytest.raises(ConfigError) as refused:
        resolve(wanted("fsync"), EVERYSEC)
    message = str(refused.value)
    assert "appendfsync everysec" in message and "CONFIG SET appendfsync always" in message
    no_aof = Persistence(appendonly=False, appendfsync="everysec", version=(7, 2), replicas=0)
    with pytest.raises(ConfigError, match="appendonly no"):
        resolve(wanted("fsync"), no_aof)


def test_resolve_unset_takes_the_safest_the_redis_offers() -> None:
    assert resolve(wanted(""), ALWAYS) == (Durability.FSYNC, Confirm.NONE)
    replicated = Persistence(appendonly=False, appendfsync=None, version=(7, 0), replicas=1)
    assert resolve(wanted(""), replicated) == (Durability.REPLICA, Confirm.WAIT)
    assert resolve(wanted(""), EVERYSEC) == (Durability.NONE, Confirm.NONE)


def test_settings_refuse_an_unknown_level() -> None:
    with pytest.raises(ConfigError, match="RECEIVER_DURABILITY must be one of"):
        Settings.from_env({"RECEIVER_DURABILITY": "sometimes"})
    assert Settings.from_env({"RECEIVER_DURABILITY": "Replica"}).durability == "replica"


def test_read_persistence_of_real_servers() -> None:
    with run_redis("--appendonly", "yes", "--appendfsync", "always") as server:
        found = read_persistence(server.url)
    assert found.fsyncs_always and found.replicas == 0 and found.version >= (6, 0)
    with run_redis() as server:  # the tests' default: no AOF
        found = read_persistence(server.url)
    assert found.appendonly is False and not found.fsyncs_always


def test_web_refuses_to_start_with_fsync_on_a_redis_without_it(
    redis_process: RedisProcess,
) -> None:
    env = child_env(
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS="k9Xq2mT7vR4wZp8L",
        RECEIVER_API_TOKEN="t3Fh8Jk1Nq6Ws0Yb-durability",
        RECEIVER_DURABILITY="fsync",
        PORT=str(free_port()),
    )
    done = run_cli(env, "web", timeout=60)
    assert done.returncode == 1
    assert "RECEIVER_DURABILITY=fsync needs" in done.stderr
    assert "Traceback" not in done.stderr


@contextlib.contextmanager
def primary_and_replica() -> Iterator[tuple[RedisProcess, RedisProcess]]:
    with run_redis() as primary, run_redis("--replicaof", "127.0.0.1", str(primary.port)) as copy:
        client = sync_redis.Redis.from_url(primary.url)
        deadline = time.monotonic() + 20
        while int(client.info("replication")["connected_slaves"]) < 1:
            assert time.monotonic() < deadline, "the replica did not connect"
            time.sleep(0.05)
        client.close()
        yield primary, copy


def test_replica_durability_waits_for_the_replica_and_refuses_without_it() -> None:
    """A 202 with `replica`: the callback is on the replica before the answer; with the
    replica gone the answer is 503 (retry), and the retry once it is back is recorded once."""
    with primary_and_replica() as (primary, copy):
        settings = Settings(
            redis_url=primary.url,
            secret_keys=KEYS,
            api_token="t",
            durability="replica",
            durability_confirm="wait",
            durability_timeout=0.3,
        )
        asyncio.run(_job(primary.url, "j1", ["1", "2"]))
        signer = PassthroughSigner(KEYS, settings.token_max_age)
        replica = sync_redis.Redis.from_url(copy.url)
        with serve_app(create_app(settings)) as url:

            def post(task: str) -> httpx.Response:
                body = {**SEED_CALLBACK, "id": task, "passthrough": signer.sign("j1")}
                return httpx.post(f"{url}/callbacks/decodo", json=body, timeout=10)

            first = post("1")
            assert first.status_code == 202, first.text
            # Read from the replica itself: the write reached it before the 202.
            assert replica.hget(REDIS_KEYS.tasks("j1"), "1") == b"done"
            replica.replicaof("NO", "ONE")  # the replica leaves
            refused = post("2")
            assert refused.status_code == 503, refused.text
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"] == "not_confirmed"
            replica.replicaof("127.0.0.1", primary.port)
            deadline = time.monotonic() + 20
            while (again := post("2")).status_code != 202:
                assert time.monotonic() < deadline, again.text
                time.sleep(0.1)
            assert again.json()["status"] == "duplicate"  # taken before, confirmed now
            assert replica.hget(REDIS_KEYS.tasks("j1"), "2") == b"done"
            ready = httpx.get(f"{url}/readyz", timeout=10).json()
            assert ready["durability"] == "replica"
        replica.close()


async def _job(url: str, job_id: str, tasks: list[str]) -> None:
    client = Redis.from_url(url)
    store = Store(client, Keys())
    await store.create_job(job_id, "decodo", total=len(tasks), params={}, work="")
    await store.record_submission(
        job_id, 0, [(t, "u") for t in tasks], last=True, reconcile_after=300
    )
    await client.aclose()


@pytest.mark.anyio
async def test_store_raises_not_confirmed_when_no_replica_acknowledges(
    redis_process: RedisProcess,
) -> None:
    client = Redis.from_url(redis_process.url)
    await client.flushall()
    store = Store(client, Keys(), confirm="wait", confirm_timeout=0.05)
    with pytest.raises(NotConfirmed):
        await store.create_job("j2", "decodo", total=1, params={}, work="")
    # The write itself was made: a retry finds the id taken and creates nothing twice.
    assert await client.hget(REDIS_KEYS.job("j2"), "provider") == b"decodo"
    await client.aclose()
