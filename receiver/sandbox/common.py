"""What the three provider simulators share: a shiftable clock, knobs from the command line,
a request counter and the `/_sandbox` control routes."""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

C = TypeVar("C")


class Clock:
    """Wall-clock seconds, shifted by `advance()` so tests can jump past a retention window."""

    def __init__(self, base: Callable[[], float] = time.time) -> None:
        self._base = base
        self.offset = 0.0

    def __call__(self) -> float:
        return self._base() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# Arrival times kept per route for its request rate: the rate is that of the latest ones.
ARRIVALS_KEPT = 100_000


class Stats:
    """Counts of requests by route and answer, served at GET /_sandbox/stats; and the
    arrival times of every request to a provider route, for its peak rate."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self._arrivals: dict[str, deque[float]] = {}  # route -> monotonic seconds

    def count(self, name: str, status: int) -> None:
        self.requests[name] += 1
        self.requests[f"{name} {status}"] += 1

    def arrive(self, name: str) -> None:
        """A request to the provider route `name` came in (answered, faulted or not)."""
        self.requests[f"requests {name}"] += 1
        times = self._arrivals.get(name)
        if times is None:
            times = self._arrivals[name] = deque(maxlen=ARRIVALS_KEPT)
        times.append(time.monotonic())

    def as_dict(self, window: float = 1.0) -> dict[str, int]:
        """The counts, and per route "requests ROUTE max/{window}s": the most requests that
        arrived within any `window` seconds."""
        counts = dict(self.requests)
        for name, times in self._arrivals.items():
            counts[f"requests {name} max/{window:g}s"] = most_within(times, window)
        return counts


def most_within(arrivals: Iterable[float], window: float) -> int:
    """The most of the (sorted) times that fall in any half-open interval `window` long."""
    times = list(arrivals)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def control_routes(config: Any, clock: Clock, stats: Stats) -> list[Route]:
    """`/_sandbox/stats`, `/_sandbox/advance` (shift the clock) and `/_sandbox/config` (knobs)."""

    async def get_stats(request: Request) -> Response:
        """`?window=SECONDS` sets the window of the peak rates (1 s by default)."""
        try:
            window = float(request.query_params.get("window", "1"))
        except ValueError:
            window = 0.0
        if not window > 0:
            return json_response({"error": "window must be a positive number of seconds"}, 400)
        return json_response(stats.as_dict(window))

    async def advance(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        clock.advance(float(body.get("seconds", 0)))
        return json_response({"offset": clock.offset})

    async def patch_config(request: Request) -> Response:
        if request.method == "GET":
            return json_response(dataclasses.asdict(config))
        changes = orjson.loads(await request.body() or b"{}")
        fields = {f.name: f for f in dataclasses.fields(config)}
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            return json_response({"error": f"unknown knobs: {', '.join(unknown)}"}, 400)
        hints = typing.get_type_hints(type(config))
        try:  # on a copy first, so that a value the config refuses changes nothing
            values = {name: _coerce(hints[name], value) for name, value in changes.items()}
            dataclasses.replace(config, **values)
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)
        for name, value in values.items():
            setattr(config, name, value)
        return json_response(dataclasses.asdict(config))

    return [
        Route("/_sandbox/stats", get_stats, methods=["GET"]),
        Route("/_sandbox/advance", advance, methods=["POST"]),
        Route("/_sandbox/config", patch_config, methods=["GET", "PATCH"]),
    ]


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    kind = args[0] if args else hint
    if kind is bool and isinstance(value, str):
        return value.lower() in {"1", "true", "yes", "on"}
    if kind in (int, float, str, bool):
        return kind(value)
    return value


def add_config_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """One `--knob-name VALUE` option per field of a sandbox config dataclass."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(
            flag,
            dest=field.name,
            default=None,
            metavar=field.name.upper(),
            help=f"{_type_name(hints[field.name])}, default {field.default!r}",
        )


def config_from_arguments(cls: type[C], values: dict[str, Any]) -> C:
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _coerce(hints[f.name], values[f.name])
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if values.get(f.name) is not None
    }
    return cls(**kwargs)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))
