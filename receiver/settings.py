"""Configuration, read once from the environment at the edge and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from receiver.errors import ConfigError

# The most partitions a deployment may have (RECEIVER_PARTITIONS).
MOST_PARTITIONS = 1024

T = TypeVar("T", int, float)

DECODO_BASE_URL = "https://scraper-api.decodo.com"
FIRECRAWL_BASE_URL = "https://api.firecrawl.dev"
DIFY_BASE_URL = "https://api.dify.ai/v1"
# The values of RECEIVER_DURABILITY (receiver.durability.Durability).
DURABILITY_LEVELS = ("fsync", "replica", "none")


# Characters a secret must have at least: 16 random ones are out of reach of a guess.
MIN_SECRET_LENGTH = 16
# Words of examples and templates: a secret holding one was copied, not made.
_PLACEHOLDERS = ("change", "replace", "example", "placeholder", "secret", "password", "xxxx")


def weak_secret(value: str) -> str:
    """Why a secret is too easy to guess ("" when it is not); the value is never quoted."""
    if len(value) < MIN_SECRET_LENGTH:
        return f"is shorter than {MIN_SECRET_LENGTH} characters"
    lowered = value.lower()
    for word in _PLACEHOLDERS:
        if word in lowered:
            return f"looks like a placeholder (it holds {word!r})"
    if len(set(value)) < 6:
        return "repeats too few characters"
    return ""


def redacted(url: str | None) -> str | None:
    """A URL with its password replaced by ***."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class Settings:
    # None: start an embedded redis-server under data_dir. Its password never shows in repr.
    redis_url: str | None = field(default=None, repr=False)
    data_dir: Path = Path(".receiver")
    # The first key signs new tokens; every key verifies, so a key can be rotated.
    secret_keys: tuple[str, ...] = field(default=(), repr=False)
    api_token: str = field(default="", repr=False)
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    key_prefix: str = "receiver:"

    decodo_base_url: str = DECODO_BASE_URL
    decodo_auth: str = field(default="", repr=False)
    firecrawl_base_url: str = FIRECRAWL_BASE_URL
    firecrawl_api_key: str = field(default="", repr=False)
    firecrawl_webhook_secret: str = field(default="", repr=False)
    dify_base_url: str = DIFY_BASE_URL
    dify_api_key: str = field(default="", repr=False)

    # Bytes; a callback body above it is refused with 413 before it is read whole.
    max_body: int = 1024 * 1024
    # Seconds without a callback before a Decodo task is polled at /v3/task/{id}.
    reconcile_after: float = 300.0
    # Seconds a passthrough token stays valid: above Decodo's 24 h results retention.
    token_max_age: float = 48 * 3600.0
    # Seconds Decodo keeps results after a task was created.
    provider_retention: float = 24 * 3600.0
    # Seconds we keep fetched results in Redis.
    results_ttl: float = 7 * 24 * 3600.0
    # Seconds one provider request may take; short, so a hanging provider is retried, not
    # waited on.
    provider_timeout: float = 30.0
    # Concurrent results fetches per worker process.
    fetch_concurrency: int = 100
    # Seconds a work entry may stay unacknowledged before another worker reclaims it.
    claim_idle: float = 60.0
    # Approximate number of events kept in receiver:stream:events (24 h at 100 events/s).
    events_maxlen: int = 8_640_000
    # Seconds a worker holds scheduled work it took; a dead worker's comes due after it.
    lease: float = 120.0
    # Seconds between worker heartbeats; /readyz wants one fresher than 3 of these.
    heartbeat_interval: float = 5.0
    # Seconds between batch submissions to Decodo, across every worker: a little over its
    # one a second, counted from when we send, since a large batch reaches Decodo later
    # than a small one sent a second after it.
    decodo_batch_interval: float = 1.1
    # Seconds of backoff: first retry, and the cap.
    retry_base: float = 1.0
    retry_cap: float = 300.0
    # Seconds between polls of a job: the shortest (while progress moves) and the cap.
    poll_min: float = 1.0
    poll_max: float = 60.0
    # Seconds without progress before a polled job fails as `stalled` (per provider below).
    stall_after: float = 1800.0
    firecrawl_stall_after: float | None = None
    dify_stall_after: float | None = None
    # Whether the stall timeout also runs while a Dify document is paused.
    stall_while_paused: bool = False
    # Requests per second to each polled provider, shared by every worker through Redis.
    firecrawl_rps: float = 50.0
    dify_rps: float = 50.0
    # Concurrent polls per provider in one worker process.
    poll_concurrency: int = 50
    # Partitions of the deployment (see store/keys.py), fixed once its Redis records them:
    # None takes what it recorded, else 1 (`store.server.settle_partitions`).
    partitions: int | None = None
    # Whether REDIS_URL names a Redis Cluster: `redis+cluster://`, or found at start
    # (`store.server.detect_cluster`).
    redis_cluster: bool = False
    # Seconds between SSE heartbeat comments, so proxies keep an idle stream open.
    sse_heartbeat: float = 15.0
    # Port of a worker's own /metrics (0: none); web processes serve /metrics themselves.
    metrics_port: int = 0
    log_format: str = "text"
    # What a 202 (and a 201 on POST /jobs) waits for: fsync, replica or none; "" until
    # durability.check_redis resolves it at start (and then the level in force).
    durability: str = ""
    # How that level is confirmed after each write: "" (Redis waits by itself, or nothing
    # is waited for), "waitaof" or "wait" (see receiver.durability.Confirm).
    durability_confirm: str = ""
    # Seconds a write waits for its WAIT/WAITAOF confirmation before the answer is 503.
    durability_timeout: float = 1.0
    # Seconds a stopping web process gives requests in flight (and open event streams).
    shutdown_timeout: float = 10.0
    # Host names the API, /metrics and /openapi.json answer to (against DNS rebinding),
    # besides the host of public_url; "*": any. Empty: localhost, 127.0.0.1, ::1 and the
    # bind host when it is one address.
    allowed_hosts: tuple[str, ...] = ()
    # Bytes of a request's line and headers; beyond it, 431 and the connection closed.
    max_header_size: int = 16 * 1024
    # Seconds a client has to send a request's headers (from its first byte, or from the
    # connection's opening), and then its body; beyond either, 408 and closed.
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    # Open HTTP connections per web process (capped by its file limit); a connection
    # beyond them is answered 503 and closed.
    max_connections: int = 4096
    # Open event streams (SSE) per web process; beyond them, 429 with Retry-After.
    max_streams: int = 500
    # Processes of `receiver web`, all on one port; the limits above are per process, so
    # they multiply by this.
    web_workers: int = 1

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
        return f"Settings(redis_url={redacted(self.redis_url)!r}, {shown})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        port = _number(env, "PORT", 8000, int)
        base = cls()
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            data_dir=Path(env.get("RECEIVER_DATA_DIR", ".receiver")),
            secret_keys=tuple(
                k.strip() for k in env.get("RECEIVER_SECRET_KEYS", "").split(",") if k.strip()
            ),
            api_token=env.get("RECEIVER_API_TOKEN", ""),
            public_url=env.get("RECEIVER_PUBLIC_URL", f"http://127.0.0.1:{port}").rstrip("/"),
            host=env.get("RECEIVER_HOST", base.host),
            port=port,
            key_prefix=env.get("RECEIVER_KEY_PREFIX", base.key_prefix),
            decodo_base_url=env.get("DECODO_BASE_URL", DECODO_BASE_URL).rstrip("/"),
            decodo_auth=env.get("DECODO_AUTH", ""),
            firecrawl_base_url=env.get("FIRECRAWL_BASE_URL", FIRECRAWL_BASE_URL).rstrip("/"),
            firecrawl_api_key=env.get("FIRECRAWL_API_KEY", ""),
            firecrawl_webhook_secret=env.get("FIRECRAWL_WEBHOOK_SECRET", ""),
            dify_base_url=env.get("DIFY_BASE_URL", DIFY_BASE_URL).rstrip("/"),
            dify_api_key=env.get("DIFY_API_KEY", ""),
            max_body=_number(env, "RECEIVER_MAX_BODY", base.max_body, int),
            reconcile_after=_number(env, "RECEIVER_RECONCILE_AFTER", base.reconcile_after, float),
            token_max_age=_number(env, "RECEIVER_TOKEN_MAX_AGE", base.token_max_age, float),
            provider_retention=_number(
                env, "RECEIVER_PROVIDER_RETENTION", base.provider_retention, float
            ),
            results_ttl=_number(env, "RECEIVER_RESULTS_TTL", base.results_ttl, float),
            provider_timeout=_number(
                env, "RECEIVER_PROVIDER_TIMEOUT", base.provider_timeout, float
            ),
            fetch_concurrency=_number(
                env, "RECEIVER_FETCH_CONCURRENCY", base.fetch_concurrency, int
            ),
            claim_idle=_number(env, "RECEIVER_CLAIM_IDLE", base.claim_idle, float),
            lease=_number(env, "RECEIVER_LEASE", base.lease, float),
            events_maxlen=_number(env, "RECEIVER_EVENTS_MAXLEN", base.events_maxlen, int),
            poll_min=_number(env, "RECEIVER_POLL_MIN", base.poll_min, float),
            poll_max=_number(env, "RECEIVER_POLL_MAX", base.poll_max, float),
            stall_after=_number(env, "RECEIVER_STALL_AFTER", base.stall_after, float),
            firecrawl_stall_after=_optional(env, "RECEIVER_FIRECRAWL_STALL_AFTER"),
            dify_stall_after=_optional(env, "RECEIVER_DIFY_STALL_AFTER"),
            stall_while_paused=env.get("RECEIVER_STALL_WHILE_PAUSED", "").lower()
            in ("1", "true", "yes"),
            firecrawl_rps=_number(env, "RECEIVER_FIRECRAWL_RPS", base.firecrawl_rps, float),
            dify_rps=_number(env, "RECEIVER_DIFY_RPS", base.dify_rps, float),
            poll_concurrency=_number(env, "RECEIVER_POLL_CONCURRENCY", base.poll_concurrency, int),
            partitions=_partitions(env),
            sse_heartbeat=_number(env, "RECEIVER_SSE_HEARTBEAT", base.sse_heartbeat, float),
            metrics_port=_number(env, "RECEIVER_METRICS_PORT", base.metrics_port, int),
            log_format=env.get("RECEIVER_LOG_FORMAT", base.log_format),
            durability=_choice(env, "RECEIVER_DURABILITY", DURABILITY_LEVELS),
            durability_timeout=_number(
                env, "RECEIVER_DURABILITY_TIMEOUT", base.durability_timeout, float
            ),
            shutdown_timeout=_number(
                env, "RECEIVER_SHUTDOWN_TIMEOUT", base.shutdown_timeout, float
            ),
            allowed_hosts=_names(env.get("RECEIVER_ALLOWED_HOSTS", "")),
            max_header_size=_number(env, "RECEIVER_MAX_HEADER_SIZE", base.max_header_size, int),
            header_timeout=_number(env, "RECEIVER_HEADER_TIMEOUT", base.header_timeout, float),
            body_timeout=_number(env, "RECEIVER_BODY_TIMEOUT", base.body_timeout, float),
            max_connections=_number(env, "RECEIVER_MAX_CONNECTIONS", base.max_connections, int),
            max_streams=_number(env, "RECEIVER_MAX_STREAMS", base.max_streams, int),
            web_workers=max(1, _number(env, "RECEIVER_WEB_WORKERS", base.web_workers, int)),
        )

    def hosts(self) -> frozenset[str] | None:
        """The host names allowed in a Host header (lower case, no port); None: any."""
        if "*" in self.allowed_hosts:
            return None
        names = set(self.allowed_hosts) or {"localhost", "127.0.0.1", "::1"}
        if not self.allowed_hosts and self.host not in ("", "0.0.0.0", "::"):
            names.add(self.host.lower().strip("[]"))  # a wildcard bind names no host
        names.add(urlsplit(self.public_url).hostname or "")
        return frozenset(names - {""})

    def stall_after_for(self, provider: str) -> float:
        specific = {"firecrawl": self.firecrawl_stall_after, "dify": self.dify_stall_after}
        chosen = specific.get(provider)
        return self.stall_after if chosen is None else chosen

    def require_secrets(self) -> None:
        """With an external Redis, refuse to start without the secrets, or with secrets a
        guess finds: short ones, and the placeholders of examples."""
        missing = [
            name
            for name, value in (
                ("RECEIVER_SECRET_KEYS", self.secret_keys),
                ("RECEIVER_API_TOKEN", self.api_token),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"{' and '.join(missing)} must be set when REDIS_URL is set")
        for name, value in (
            *(("RECEIVER_SECRET_KEYS", key) for key in self.secret_keys),
            ("RECEIVER_API_TOKEN", self.api_token),
        ):
            weakness = weak_secret(value)
            if weakness:
                raise ConfigError(
                    f"{name} {weakness}: make one with "
                    "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
                )

    def check(self) -> None:
        """Refuse settings no process can serve with, embedded or not."""
        # A token that dies before Decodo's results do would refuse a late, valid callback.
        if self.token_max_age < self.provider_retention:
            raise ConfigError(
                f"RECEIVER_TOKEN_MAX_AGE ({self.token_max_age:g} s) must be at least "
                f"RECEIVER_PROVIDER_RETENTION ({self.provider_retention:g} s)"
            )

    def with_changes(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _partitions(env: Mapping[str, str]) -> int | None:
    raw = env.get("RECEIVER_PARTITIONS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= MOST_PARTITIONS:
        raise ConfigError(f"RECEIVER_PARTITIONS must be a whole number from 1 to {MOST_PARTITIONS}")
    return int(raw)


def _names(raw: str) -> tuple[str, ...]:
    """Comma-separated host names, lower case, without brackets or a trailing dot."""
    names = (name.strip().lower().strip("[]").rstrip(".") for name in raw.split(","))
    return tuple(name for name in names if name)


def _choice(env: Mapping[str, str], name: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if raw and raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _optional(env: Mapping[str, str], name: str) -> float | None:
    return _number(env, name, -1.0, float) if env.get(name) else None


def _number(env: Mapping[str, str], name: str, default: T, kind: type[T]) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value
