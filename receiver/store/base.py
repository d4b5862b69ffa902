"""What every room of the store shares: the client, the keys, the clock, the scripts, and
the arguments every job script starts with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.crc import key_slot

from receiver.errors import NotConfirmed
from receiver.store.events import at_ms, iso_ms
from receiver.store.keys import Keys
from receiver.store.routing import Router
from receiver.store.scripts import Script, Scripts

Clock = Callable[[], float]
T = TypeVar("T")
R = TypeVar("R")


class StoreBase:
    def __init__(
        self,
        redis: Redis | Router,
        keys: Keys | None = None,
        *,
        events_maxlen: int = 8_640_000,
        clock: Clock = time.time,
        confirm: str = "",
        confirm_timeout: float = 1.0,
        strict_scripts: bool = False,
    ) -> None:
        self._router = redis if isinstance(redis, Router) else Router(redis)
        self.keys = keys or Keys()
        self._slots = [key_slot(self.keys.base(p).encode()) for p in range(self.keys.partitions)]
        self.events_maxlen = events_maxlen
        self.clock = clock
        # The command that confirms an acknowledged write on its own connection, if any
        # (receiver.durability): WAITAOF 1 0 <ms>, or WAIT 1 <ms>.
        self._confirm: tuple[Any, ...] = _confirm_command(confirm, confirm_timeout)
        self.scripts = Scripts(self._router.any, self.keys, strict=strict_scripts)
        self._setup()

    def _setup(self) -> None:
        """What the rooms of the store hold of their own (their batchers), made."""

    @property
    def redis(self) -> Redis:
        """A client (on a cluster, of one master), for tests and benchmarks to look at Redis
        with: no module of the package but the store's uses it (tests/test_boundaries.py)."""
        return self._router.any

    @property
    def router(self) -> Router:
        return self._router

    def _for(self, key: str) -> Redis:
        """The client of the node that holds `key`."""
        return self._router.of(key)

    def _at(self, partition: int) -> Redis:
        """The client of the node that holds the partition."""
        return self._router.at_slot(self._slots[partition])

    def _of(self, job_id: str) -> Redis:
        """The client of the node that holds the job."""
        return self._at(self.keys.partition_of(job_id))

    def _by_node(self, keys: Sequence[str]) -> list[tuple[Redis, list[int]]]:
        """The keys' positions grouped by the client of the node that holds them."""
        groups: dict[int, tuple[Redis, list[int]]] = {}
        for index, key in enumerate(keys):
            client = self._for(key)
            groups.setdefault(id(client), (client, []))[1].append(index)
        return list(groups.values())

    async def _acknowledged(self, client: Redis, write: Callable[[Any], Awaitable[Any]]) -> Any:
        """The answer of a write we acknowledge to a caller (a 202, a 201), once it is as
        durable as RECEIVER_DURABILITY asks: the confirmation runs on the write's own
        connection, in one round trip with it. NotConfirmed when it did not come in time."""
        if not self._confirm:
            return await write(client)
        async with client.pipeline(transaction=False) as pipe:
            await write(pipe)
            pipe.execute_command(*self._confirm)
            answer, confirmed = await pipe.execute()
        if not _confirmed(confirmed):
            raise NotConfirmed("the write was not confirmed durable in time; retry")
        return answer

    async def _run_on_jobs(
        self,
        script: Script,
        job_ids: Sequence[str],
        args: Sequence[Any],
        *,
        acknowledged: bool = False,
    ) -> Any:
        """Run a job script (see lua/prelude.lua) on these jobs, all of one partition, with
        its own arguments."""
        partition = self.keys.partition_of(job_ids[0])
        keys = self.keys.shared(partition)
        for job_id in job_ids:
            keys += self.keys.job_keys(job_id, script.job_keys)
        now = self.clock()
        argv = [repr(now), iso_ms(at_ms(now)), self.events_maxlen, len(job_ids), *job_ids]
        argv += args
        client = self._at(partition)
        if not acknowledged:
            return await script(keys, argv, client)
        return await self._acknowledged(client, lambda on: script(keys, argv, on))


async def per_partition(
    keys: Keys,
    items: Sequence[T],
    job_of: Callable[[T], str],
    apply: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
) -> list[R]:
    """`apply` of the items of each partition (by their job), the partitions at once; the
    answers in the items' order."""
    if keys.partitions == 1:
        return list(await apply(items))
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(keys.partition_of(job_of(item)), []).append(index)
    answers = await asyncio.gather(*(apply([items[i] for i in group]) for group in groups.values()))
    ordered: dict[int, R] = {}
    for group, answer in zip(groups.values(), answers, strict=True):
        ordered.update(zip(group, answer, strict=True))
    return [ordered[index] for index in range(len(items))]


def _confirm_command(confirm: str, timeout: float) -> tuple[Any, ...]:
    milliseconds = max(1, int(timeout * 1000))
    if confirm == "waitaof":
        return ("WAITAOF", 1, 0, milliseconds)
    if confirm == "wait":
        return ("WAIT", 1, milliseconds)
    return ()


def _confirmed(reply: Any) -> bool:
    """WAIT answers the replicas that have the write; WAITAOF [local, replicas] fsynced."""
    if isinstance(reply, list | tuple):
        return int(reply[0]) >= 1
    return int(reply) >= 1


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
