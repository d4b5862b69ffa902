"""Reaching the Redis server: the clients every process opens, and what a server says of
itself at start (its persistence, for RECEIVER_DURABILITY)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import redis as sync_redis
import redis.cluster as sync_cluster
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import AuthenticationError, RedisError, ResponseError

from receiver.errors import ConfigError
from receiver.settings import Settings
from receiver.store.base import text
from receiver.store.keys import Keys
from receiver.store.routing import ClusterAddress, ClusterRouter, Router, pool_client

log = logging.getLogger("receiver.store")

# Seconds any one Redis command may take before the call fails (and counts as an outage),
# chosen here rather than inherited from redis-py (5 s in 8.x). Every blocking read asks
# for less than this (events.read_events and the worker block for at most half of it).
REDIS_TIMEOUT = 10.0
# Seconds to open a connection to Redis.
REDIS_CONNECT_TIMEOUT = 5.0
# Connections of the web's event streams' pool (a pool of their own, so that callbacks
# never wait behind subscribers for one): the feed's read, and the short reads of streams
# opening or catching up (a stream waiting for events holds none).
STREAM_POOL_SIZE = 32
# Partitions of a new deployment on a cluster, for each master it has.
PARTITIONS_PER_MASTER = 4
# Seconds a starting process waits for its Redis to answer before it gives up.
STARTUP_WAIT = 30.0


def pool_size(settings: Settings) -> int:
    """Connections of a process's main pool: two per concurrent fetch or poll, and room for
    the web's requests and the worker's loops."""
    return 2 * settings.fetch_concurrency + 2 * settings.poll_concurrency + 64


def _pool_options(max_connections: int) -> dict[str, Any]:
    """Every timeout chosen: a command, a connection, and the wait for a pooled one."""
    return {
        "max_connections": max_connections,
        "timeout": REDIS_TIMEOUT,
        "socket_timeout": REDIS_TIMEOUT,
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "health_check_interval": 30,
    }


def open_redis(settings: Settings, max_connections: int | None = None) -> Router:
    """The clients of the Redis in use: one whose pool waits for a free connection rather
    than failing when busy, or on a cluster one such pool per master (`routing`); each
    pool holds `max_connections` at most (by default `pool_size`)."""
    options = _pool_options(max_connections or pool_size(settings))
    url = settings.redis_url or ""
    if settings.redis_cluster:
        address = ClusterAddress.parse(url)
        return ClusterRouter(address, lambda node, at: pool_client(node, at, **options))
    pool = BlockingConnectionPool.from_url(url, **options)
    return Router(Redis.from_pool(pool))  # closing the client closes the pool too


def open_stream_redis(settings: Settings) -> Router:
    """The event streams' clients, with pools of their own (STREAM_POOL_SIZE each)."""
    return open_redis(settings, STREAM_POOL_SIZE)


def node_url(settings: Settings) -> str:
    """A plain URL of one node: of the first seed of a cluster URL."""
    url = settings.redis_url or ""
    if not urlsplit(url).scheme.endswith("+cluster"):
        return url
    address = ClusterAddress.parse(url)
    host, port = address.seeds[0]
    scheme = "rediss" if address.tls else "redis"
    auth = ""
    if address.password is not None:
        auth = f"{quote(address.username or '')}:{quote(address.password)}@"
    return f"{scheme}://{auth}{host}:{port}/0"


def detect_cluster(settings: Settings) -> bool:
    """Whether REDIS_URL names a Redis Cluster: a `+cluster` URL, or a node whose INFO says
    `cluster_enabled:1`."""
    if urlsplit(settings.redis_url or "").scheme.endswith("+cluster"):
        return True
    client = sync_redis.Redis.from_url(
        node_url(settings), socket_timeout=5, socket_connect_timeout=2
    )
    try:
        info: Any = client.info("cluster")
    except ResponseError:  # INFO cluster refused: no cluster
        return False
    except (RedisError, OSError) as exc:
        why = type(exc).__name__
        raise ConfigError(f"redis did not say whether it is a cluster ({why})") from None
    finally:
        client.close()
    return bool(int(info.get("cluster_enabled", 0)))


def _sync_client(settings: Settings) -> Any:
    """A synchronous client for the checks at start: redis-py's cluster client on a
    cluster (each key to its master), else a plain one."""
    url = node_url(settings)
    if settings.redis_cluster:
        return sync_cluster.RedisCluster.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    return sync_redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


@dataclass(frozen=True)
class Persistence:
    """What a Redis says of its persistence and replication (None: it would not say)."""

    appendonly: bool | None
    appendfsync: str | None
    version: tuple[int, ...]
    replicas: int

    @property
    def has_waitaof(self) -> bool:
        return self.version >= (7, 2)

    @property
    def fsyncs_always(self) -> bool:
        return bool(self.appendonly) and self.appendfsync == "always"


def read_persistence(url: str) -> Persistence:
    """Ask the Redis at `url` about its AOF, version and replicas, once."""
    client = sync_redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        return _persistence(client)
    finally:
        client.close()


def _persistence(client: sync_redis.Redis) -> Persistence:
    """CONFIG may be refused (managed offerings rename or forbid it), which leaves its
    answers unknown."""
    server: Any = client.info("server")
    replication: Any = client.info("replication")
    version = tuple(int(part) for part in str(server.get("redis_version", "0")).split(".")[:2])
    appendonly: bool | None = None
    appendfsync: str | None = None
    try:
        config: Any = client.config_get("append*")
        if "appendonly" in config:
            appendonly = text(config["appendonly"]) == "yes"
        if "appendfsync" in config:
            appendfsync = text(config["appendfsync"])
    except ResponseError:
        persistence: Any = client.info("persistence")
        if "aof_enabled" in persistence:
            appendonly = bool(int(persistence["aof_enabled"]))
    replicas = int(replication.get("connected_slaves", 0))
    return Persistence(appendonly, appendfsync, version, replicas)


def persistence_when_up(url: str) -> Persistence:
    """`read_persistence`, waiting up to STARTUP_WAIT seconds for the Redis to answer;
    ConfigError when it does not, or refuses us."""
    client = sync_redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    deadline = time.monotonic() + STARTUP_WAIT
    waited = False
    try:
        while True:
            try:
                return _persistence(client)
            except (RedisError, OSError) as exc:
                refused = isinstance(exc, ResponseError | AuthenticationError)
                if refused or time.monotonic() > deadline:
                    why = "refused us" if refused else "is not answering"
                    raise ConfigError(
                        f"redis {why} ({type(exc).__name__}: {str(exc)[:200]})"
                        + ("" if refused else f"; gave up after {STARTUP_WAIT:g} s")
                    ) from None
                if not waited:
                    log.warning("waiting for redis", extra={"error": type(exc).__name__})
                    waited = True
                time.sleep(0.5)
    finally:
        client.close()


def settle_partitions(settings: Settings) -> int:
    """The deployment's number of partitions: the one its Redis recorded; recorded now
    (RECEIVER_PARTITIONS, else 1) by the deployment's first process. ConfigError when
    RECEIVER_PARTITIONS asks for another: a job's keys are where its partition puts them,
    so the number cannot change under a running deployment (README: changing it)."""
    meta = Keys(settings.key_prefix).meta
    client = _sync_client(settings)
    try:
        client.hsetnx(meta, "partitions", settings.partitions or _default_partitions(client))
        recorded = int(text(client.hget(meta, "partitions") or b"1"))
    except (RedisError, OSError) as exc:
        raise ConfigError(f"redis did not say its partitions ({type(exc).__name__})") from None
    finally:
        client.close()
    if settings.partitions is not None and settings.partitions != recorded:
        raise ConfigError(
            f"RECEIVER_PARTITIONS is {settings.partitions}, but this deployment's Redis holds "
            f"{recorded} partitions ({meta}): unset it or set it to {recorded}; to change "
            "the number of partitions, see the README (Changing the number of partitions)"
        )
    return recorded


def _default_partitions(client: Any) -> int:
    """The number of partitions a new deployment gets: 1 on one Redis; on a cluster
    PARTITIONS_PER_MASTER for each master, so that they spread over all of them."""
    if not isinstance(client, sync_cluster.RedisCluster):
        return 1
    cluster: Any = client
    return PARTITIONS_PER_MASTER * max(1, len(cluster.get_primaries()))
