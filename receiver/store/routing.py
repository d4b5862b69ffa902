"""Which client serves a key: the one Redis, or in a Redis Cluster the master of its slot.

Every step of the store works within one partition (one slot) or on one key, so routing is
by slot alone: each master gets a client of its own with a pool that waits for a free
connection (bounded per node: redis-py's cluster client raises at once when a node's
connections run out), and a write, a MULTI or a script and the WAIT after it run on one
connection of one node, as on a single Redis.

The slot map comes from CLUSTER SLOTS of any node known (the seeds first). A failed call
that says the map moved (a MOVED or ASK answer, a node gone, a master demoted, the cluster
down) is an outage for the caller, which retries it as it retries any outage; the router
is told (`noticed`) and reads the map again, so that the retry goes to the new master,
and it reads the map every REFRESH_EVERY seconds besides. A script missing on a promoted
replica is loaded again on its first NOSCRIPT (redis-py's scripts do so).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from receiver.errors import ConfigError

log = logging.getLogger("receiver.store")

# Seconds between reads of the slot map while nothing says it moved.
REFRESH_EVERY = 10.0
# Seconds at least between two reads of the slot map.
REFRESH_AT_MOST_EVERY = 0.2
# Errors after which the slot map may have moved.
_MOVED = (
    AskError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    TryAgainError,
    RedisConnectionError,
    RedisTimeoutError,
)

Node = tuple[str, int]


class Router:
    """One Redis: every key on its one client."""

    cluster = False

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    @property
    def any(self) -> Redis:
        """A client to load scripts with, or ask a node-wide question (INFO)."""
        return self._redis

    def of(self, key: str) -> Redis:
        return self._redis

    def at_slot(self, slot: int) -> Redis:
        return self._redis

    def masters(self) -> list[Redis]:
        return [self._redis]

    def noticed(self, exc: BaseException) -> None:
        """A call failed with `exc` (a hint that the slot map moved)."""

    async def start(self) -> None:
        """Ready to route (a cluster's slot map read)."""

    async def aclose(self) -> None:
        await self._redis.aclose()


@dataclass(frozen=True)
class ClusterAddress:
    """What a cluster URL names: its seed nodes, and how to connect to each."""

    seeds: tuple[Node, ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        """`redis+cluster://[user:password@]host:port[,host:port...]` (rediss+cluster: TLS),
        or a plain redis:// URL of one node."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "redis+cluster", "rediss+cluster"):
            raise ConfigError(f"REDIS_URL: no Redis URL scheme {parts.scheme!r}")
        hosts = parts.netloc.rpartition("@")[2]
        seeds: list[Node] = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError("REDIS_URL: every cluster node must be host:port")
            seeds.append((host.strip("[]"), int(port)))
        return cls(
            tuple(seeds),
            tls=parts.scheme.startswith("rediss"),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


@dataclass
class _Map:
    starts: list[int] = field(default_factory=list)  # the first slot of each range, sorted
    ranges: list[tuple[int, int, Node]] = field(default_factory=list)

    def node(self, slot: int) -> Node | None:
        index = bisect.bisect_right(self.starts, slot) - 1
        if index < 0:
            return None
        start, end, node = self.ranges[index]
        return node if start <= slot <= end else None


class ClusterRouter(Router):
    """A Redis Cluster: each key on the master of its slot."""

    cluster = True

    def __init__(
        self,
        address: ClusterAddress,
        make_client: Callable[[Node, ClusterAddress], Redis],
    ) -> None:
        self.address = address
        self._make = make_client
        self._clients: dict[Node, Redis] = {}
        self._map = _Map()
        self._moved: dict[int, Node] = {}  # slots a MOVED answer moved since the last map
        self._lock = asyncio.Lock()
        self._refreshed = 0.0
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.Task[None] | None = None

    def _client(self, node: Node) -> Redis:
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = self._make(node, self.address)
        return client

    @property
    def any(self) -> Redis:
        return self._client(self._map.ranges[0][2] if self._map.ranges else self.address.seeds[0])

    def of(self, key: str) -> Redis:
        return self.at_slot(key_slot(key.encode()))

    def at_slot(self, slot: int) -> Redis:
        node = self._moved.get(slot) or self._map.node(slot)
        if node is None:
            self.noticed(ClusterDownError(f"slot {slot} is not served"))
            raise ClusterDownError(f"no master known for slot {slot}")
        return self._client(node)

    def masters(self) -> list[Redis]:
        return [self._client(node) for node in dict.fromkeys(n for _, _, n in self._map.ranges)]

    def moved(self, exc: MovedError) -> None:
        """A MOVED answer: the slot's master said where the slot is now; it goes there
        until the next map read."""
        self._moved[exc.slot_id] = (exc.host, int(exc.port))

    def noticed(self, exc: BaseException) -> None:
        if isinstance(exc, MovedError):
            self.moved(exc)
        if isinstance(exc, _MOVED) and (self._pending is None or self._pending.done()):
            self._pending = asyncio.ensure_future(self.refresh())

    async def start(self) -> None:
        """Read the slot map; a cluster that does not answer yet is an outage like any,
        and the map is read again when a call fails and every REFRESH_EVERY seconds."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_every())
        try:
            await self.refresh(force=True)
        except (RedisError, OSError) as exc:
            log.warning("could not read the slot map", extra={"error": type(exc).__name__})

    async def refresh(self, *, force: bool = False) -> None:
        """Read the slot map again (at most every REFRESH_AT_MOST_EVERY seconds): the map
        most of the nodes that answer agree on, so that a node back from the dead that still
        thinks itself a master is outvoted."""
        async with self._lock:
            if not force and time.monotonic() - self._refreshed < REFRESH_AT_MOST_EVERY:
                return
            known = [n for _, _, n in self._map.ranges]
            failure: BaseException | None = None
            votes: Counter[tuple[tuple[int, int, Node], ...]] = Counter()
            for node in dict.fromkeys([*known, *self.address.seeds, *self._clients]):
                try:
                    client: Any = self._client(node)
                    reply: Any = await client.execute_command("CLUSTER SLOTS")
                except (RedisError, OSError) as exc:
                    failure = exc
                    continue
                votes[tuple(_parse_slots(reply, node).ranges)] += 1
            if not votes:
                if failure is not None:
                    raise failure
                return
            ranges = list(votes.most_common(1)[0][0])
            self._map = _Map([start for start, _, _ in ranges], ranges)
            self._moved.clear()
            self._refreshed = time.monotonic()

    async def _refresh_every(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            with contextlib.suppress(RedisError, OSError):
                await self.refresh()

    async def aclose(self) -> None:
        # The refreshes are cancelled and waited for a moment, never suppressing a
        # cancellation of our own (which would leave a stopping process waiting).
        tasks = [task for task in (self._task, self._pending) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        for client in self._clients.values():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


def _parse_slots(reply: Any, asked: Node) -> _Map:
    """CLUSTER SLOTS: [start, end, [host, port, id...], replicas...] per range. A master
    without a host name is at the address of the node that answered."""
    ranges: list[tuple[int, int, Node]] = []
    for item in reply:
        start, end, master = int(item[0]), int(item[1]), item[2]
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        ranges.append((start, end, (host or asked[0], int(master[1]))))
    ranges.sort()
    return _Map([start for start, _, _ in ranges], ranges)


def pool_client(node: Node, address: ClusterAddress, **pool: Any) -> Redis:
    """A client of one node, on a pool that waits for a free connection."""
    options: dict[str, Any] = dict(pool)
    if address.tls:
        options["connection_class"] = SSLConnection
    connection = BlockingConnectionPool(
        host=node[0],
        port=node[1],
        username=address.username,
        password=address.password,
        **options,
    )
    return Redis.from_pool(connection)
