"""What a 202 waits for: `RECEIVER_DURABILITY`, checked against the Redis in use at start.

- `fsync`: the write is in an fsynced AOF before we answer. Redis with `appendonly yes` and
  `appendfsync always` fsyncs before it replies (the embedded Redis runs so); a Redis that
  fsyncs every second but has WAITAOF (7.2+) is asked `WAITAOF 1 0` after the write.
- `replica`: one replica has the write (`WAIT 1` on the write's own connection), within
  RECEIVER_DURABILITY_TIMEOUT; otherwise the answer is 503 and the sender retries.
- `none`: the write is in Redis's memory; a Redis crash can lose the last second or more.

Unset, the level is `fsync` with the embedded Redis and the safest an external one offers.
A level the Redis cannot give is refused at start, with what to change.
"""

from __future__ import annotations

import enum
import logging

from receiver.errors import ConfigError
from receiver.settings import Settings
from receiver.store.server import Persistence, node_url, persistence_when_up

__all__ = ["Confirm", "Durability", "Persistence", "check_redis", "resolve"]

log = logging.getLogger(__name__)


class Durability(enum.StrEnum):
    FSYNC = "fsync"  # a 202 survives a Redis crash: the write is on disk
    REPLICA = "replica"  # a 202 survives losing the Redis machine: a replica has the write
    NONE = "none"  # a 202 survives a receiver crash only: the write is in Redis's memory


class Confirm(enum.StrEnum):
    """The command run on a write's connection before the answer, if any."""

    NONE = ""  # Redis itself waits (appendfsync always), or nothing is waited for
    WAITAOF = "waitaof"  # WAITAOF 1 0 <timeout>: the local AOF fsynced
    WAIT = "wait"  # WAIT 1 <timeout>: one replica acknowledged


def resolve(settings: Settings, persistence: Persistence | None) -> tuple[Durability, Confirm]:
    """The level in force and how it is confirmed; ConfigError for a level the Redis
    cannot give. `persistence` is None for the embedded Redis, which fsyncs always."""
    wanted = Durability(settings.durability) if settings.durability else None
    if persistence is None:  # the embedded Redis: appendfsync always, no replica
        if wanted is Durability.REPLICA:
            raise ConfigError(
                "RECEIVER_DURABILITY=replica needs a Redis with a replica: set REDIS_URL, "
                "or use fsync (the embedded Redis's default)"
            )
        return wanted or Durability.FSYNC, Confirm.NONE
    if wanted is None:
        return _safest(persistence)
    if wanted is Durability.FSYNC:
        return Durability.FSYNC, _fsync_confirm(persistence)
    if wanted is Durability.REPLICA:
        if persistence.replicas == 0:
            log.warning("RECEIVER_DURABILITY=replica but Redis has no replica connected yet")
        return Durability.REPLICA, Confirm.WAIT
    return Durability.NONE, Confirm.NONE


def _fsync_confirm(persistence: Persistence) -> Confirm:
    if persistence.fsyncs_always:
        return Confirm.NONE
    if persistence.has_waitaof and persistence.appendonly is not False:
        return Confirm.WAITAOF
    found = (
        f"appendonly {_said(persistence.appendonly)}, appendfsync {persistence.appendfsync or '?'}"
    )
    raise ConfigError(
        f"RECEIVER_DURABILITY=fsync needs a Redis that fsyncs its AOF before it answers "
        f"(appendonly yes, appendfsync always) or one with WAITAOF (7.2+); this one has "
        f"{found} (version {'.'.join(map(str, persistence.version))}). Set them with "
        f"CONFIG SET appendonly yes and CONFIG SET appendfsync always, or choose "
        f"RECEIVER_DURABILITY=replica or none"
    )


def _said(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def _safest(persistence: Persistence) -> tuple[Durability, Confirm]:
    try:
        return Durability.FSYNC, _fsync_confirm(persistence)
    except ConfigError:
        pass
    if persistence.replicas > 0:
        return Durability.REPLICA, Confirm.WAIT
    log.warning(
        "redis neither fsyncs every write nor has a replica: a 202 survives a receiver "
        "crash, not a Redis crash (RECEIVER_DURABILITY=none)"
    )
    return Durability.NONE, Confirm.NONE


def check_redis(settings: Settings) -> Settings:
    """Settings with the durability level in force, read from the Redis at start; waits
    up to STARTUP_WAIT seconds for Redis to answer, then refuses to start."""
    if settings.embedded:
        level, confirm = resolve(settings, None)
    else:
        level, confirm = resolve(settings, persistence_when_up(node_url(settings)))
    log.info("durability", extra={"durability": level.value, "confirm": confirm.value or "-"})
    return settings.with_changes(durability=level.value, durability_confirm=confirm.value)
