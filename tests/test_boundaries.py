"""The store is the one door to Redis, and its scripts stay inside the keys they are given."""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from receiver.store import JobStatus, Store, Work, WorkItem
from receiver.store.keys import Keys
from receiver.store.scripts import JOB_SCRIPTS, OTHER_SCRIPTS, header, source

PACKAGE = Path(__file__).resolve().parent.parent / "receiver"
STORE = PACKAGE / "store"

pytestmark = pytest.mark.anyio


def _redis_uses(path: Path) -> list[str]:
    """Where a module imports a Redis client or reaches for one: any `redis` module but
    its exceptions, and any `.redis` / `._redis` attribute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        line = getattr(node, "lineno", 0)
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] == "redis" and module != "redis.exceptions":
                found.append(f"{path.name}:{line}: imports {module}")
        if isinstance(node, ast.Attribute) and node.attr in ("redis", "_redis"):
            found.append(f"{path.name}:{line}: .{node.attr}")
    return found


def test_only_the_store_package_talks_to_redis() -> None:
    modules = [p for p in PACKAGE.rglob("*.py") if STORE not in p.parents]
    assert len(modules) > 40  # the walk sees the package
    uses = [use for path in modules for use in _redis_uses(path)]
    assert uses == []


def test_the_walk_finds_a_redis_call(tmp_path: Path) -> None:
    module = tmp_path / "leak.py"
    module.write_text(
        "from redis.asyncio import Redis\n"
        "from redis.exceptions import RedisError\n"
        "async def f(store):\n"
        "    await store.redis.hget('k', 'f')\n"
    )
    assert _redis_uses(module) == ["leak.py:1: imports redis.asyncio", "leak.py:4: .redis"]
    assert _redis_uses(STORE / "routing.py") != []  # the store's own modules do


async def test_a_script_reaching_a_key_it_was_not_given_fails(redis: Redis) -> None:
    strict = header(Keys(), strict=True)
    given = strict + "\nreturn call('SET', KEYS[1], ARGV[1])"
    assert await redis.eval(given, 1, "given", "1") == b"OK"
    other = strict + "\ncall('SET', KEYS[1], '1')\nreturn call('SET', 'elsewhere', '1')"
    with pytest.raises(ResponseError, match="script reached key elsewhere not given in KEYS"):
        await redis.eval(other, 1, "given")
    assert await redis.exists("elsewhere") == 0
    # Without the check (what production runs), the same script would have reached it.
    lax = header(Keys()) + "\nreturn call('SET', 'elsewhere', '1')"
    assert await redis.eval(lax, 1, "given") == b"OK"


async def test_a_misspelt_code_in_a_script_fails(redis: Redis) -> None:
    script = header(Keys()) + "\nreturn CODE.acepted"
    with pytest.raises(ResponseError, match="no CODE named acepted"):
        await redis.eval(script, 0)


async def test_every_script_keeps_to_its_keys(redis: Redis) -> None:
    """Each script, run through the store on a strict header, touches only its KEYS."""
    store = Store(redis, Keys(partitions=3), events_maxlen=1000, strict_scripts=True)
    now = store.clock()
    await store.ensure_group()

    async def callbacks() -> None:
        await store.create_job("j1", "decodo", total=2, params={}, work=Work.SUBMIT)
        await store.record_submission(
            "j1", 0, [("t1", "a"), ("t2", "b")], last=True, reconcile_after=60
        )
        await store.create_job("j2", "decodo", total=1, params={})
        await store.record_submission("j2", 0, [("t3", "c")], last=True, reconcile_after=60)
        codes = await store.apply_callbacks([("j1", "t1", "done"), ("j2", "t3", "faulted")])
        assert codes == ["accepted", "accepted"]

    async def outcomes() -> None:
        assert await store.store_results("j1", "t1", b'{"ok": 1}', 60) == "stored"
        assert await store.fail_task("j1", "t2", "gone", expired=True) == "expired"

    async def failure() -> None:
        await store.create_job("j3", "firecrawl", total=0, params={})
        assert await store.record_failure("j3", Work.SUBMIT, "boom") == 1

    async def update() -> None:
        assert await store.update_job("j3", {"polled_at": now}, event="job.progress") == "updated"

    async def finish() -> None:
        assert await store.finish_job("j3", JobStatus.CANCELLED, "asked") == "finished"

    async def reopen() -> None:
        assert await store.reopen_job("j3") == "reopened"

    async def claim() -> None:
        job_id, created = await store.track_job("dify", "batch-1", {"batch": "batch-1"})
        assert created
        claimed, lease_end = await store.claim_due_leased(10, lease=30)
        assert WorkItem(Work.POLL, job_id).member in claimed
        renewed = await store.renew_leases({m: lease_end for m in claimed}, 60)
        assert set(renewed) == set(claimed)
        assert await store.hint_poll(job_id) == "flagged"

    async def rate() -> None:
        assert await store.acquire_rate("r", 1.0) == 0

    runs: dict[str, Callable[[], Awaitable[None]]] = {
        "create_job": callbacks,
        "record_submission": callbacks,
        "callbacks": callbacks,
        "task_outcomes": outcomes,
        "record_failure": failure,
        "update_jobs": update,
        "finish_job": finish,
        "reopen_job": reopen,
        "claim_due": claim,
        "renew_leases": claim,
        "hint_poll": claim,
        "acquire_rate": rate,
    }
    assert set(runs) == {*JOB_SCRIPTS, *OTHER_SCRIPTS}  # a new script needs a run here
    for run in dict.fromkeys(runs.values()):
        await run()


async def test_a_lua_error_names_its_file_and_line(redis: Redis, store: Store) -> None:
    await store.create_job("j1", "firecrawl", total=0, params={})
    line = next(
        number
        for number, text in enumerate(source("update_jobs").splitlines(), 1)
        if "cjson.decode(detail)" in text
    )
    script = store.scripts.update_jobs
    argv = [repr(store.clock()), "now", 100, 1, "j1", 1, 1, "job.progress", "{not json", 0]
    job_keys = store.keys.job_keys("j1", script.job_keys)
    keys = [*store.keys.shared(store.keys.partition_of("j1")), *job_keys]
    with pytest.raises(ResponseError) as raised:
        await script(keys, argv)
    assert f"receiver/store/lua/update_jobs.lua:{line}" in str(raised.value)
