"""Attack memory: the RSS of a `receiver web` process before and after 1,000 hostile requests
of each kind.

Each kind against a fresh process (so that what one kind leaves in the allocator does not
hide what the next one takes), warmed up with 200 valid callbacks; sent by raw sockets on
loopback, 32 at a time (the slow senders all at once), with the body limit (1 MiB) and the
limits of the protocol at their defaults:

- padded_tokens: a valid passthrough token followed by 1,000,000 `!`, in a 1 MB body
- huge_body_content_length: `Content-Length: 2000000000`, then up to 4 MiB of it
- huge_body_chunked: chunks of 64 KiB, up to 4 MiB, no Content-Length
- huge_headers: a header line that never ends, up to 4 MiB of it
- slow_senders: half never finish their headers, half trickle a body, a byte a second
- deep_nesting: 500,000 `[` (500 KB of JSON nested past any parser's depth)
- huge_arrays: a valid callback carrying an array of 150,000 numbers (940 KB)
- non_utf8: a 1 MB body of bytes that are not UTF-8

Each kind's answers are counted by status (0: closed without an answer). The RSS is read
(/proc) once the process has been quiet for a second, and the slow senders' also while
they are all open; the peak is the process's VmHWM. Then a valid callback must still be
answered 202.

    python -m benchmarks.attack_memory [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from redis.asyncio import Redis

from benchmarks.callbacks import PreparedJob, callback_body, prepare_job, task_id
from benchmarks.common import (
    CALLBACK_PATH,
    HOST,
    PYTHON,
    arguments,
    child,
    emit,
    free_port,
    peak_rss_mb,
    receiver_env,
    redis_server,
    rss_mb,
    run,
    say,
    workdir,
)
from receiver.store import Store

CONCURRENCY = 32  # hostile requests in flight, but the slow senders
SETTLE = 1.0  # seconds of quiet before reading an RSS
PIECE = 64 * 1024  # bytes a sender writes at a time
MOST = 4 * 1024 * 1024  # bytes at most a sender of an endless body or header writes
ANSWER_TIMEOUT = 30.0  # seconds a sender waits for an answer
SLOW_FOR = 12.0  # seconds a slow sender goes on trickling (past both timeouts)
_HEAD = b"POST " + CALLBACK_PATH.encode() + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"


@dataclass(frozen=True)
class Sizes:
    requests: int  # of each kind
    warmup: int = 200  # valid callbacks before the first reading


FULL = Sizes(1000)
QUICK = Sizes(100)


@dataclass(frozen=True)
class Hostile:
    """One hostile request: its head, then its body's pieces, written `pause` s apart."""

    head: bytes
    pieces: Callable[[], Iterator[bytes]] = lambda: iter(())
    pause: float = 0.0


def with_length(body: bytes) -> Hostile:
    head = _HEAD + b"Content-Length: %d\r\n\r\n" % len(body)
    return Hostile(head, lambda: iter((body,)))


def endless(piece: bytes, most: int = MOST) -> Callable[[], Iterator[bytes]]:
    return lambda: iter([piece] * (most // len(piece)))


def kinds(job: PreparedJob, first: int) -> dict[str, Callable[[int], Hostile]]:
    """Each kind's request, by its number; a valid callback's task is the job's task
    `first` + that number."""
    padded = orjson.dumps({"passthrough": job.token + "!" * 1_000_000, "id": "x"})
    chunk = b"%x\r\n%s\r\n" % (PIECE, b"x" * PIECE)
    unfinished = _HEAD + b"X-Slow: a"
    trickled = _HEAD + b"Content-Length: 1000\r\n\r\n{"
    numbers = orjson.dumps(list(range(150_000)))

    def huge_array(number: int) -> Hostile:
        body: dict[str, Any] = dict(callback_body(task_id(first + number), job.token))
        body["extra"] = orjson.Fragment(numbers)
        return with_length(orjson.dumps(body))

    return {
        "padded_tokens": lambda _: with_length(padded),
        "huge_body_content_length": lambda _: Hostile(
            _HEAD + b"Content-Length: 2000000000\r\n\r\n", endless(b"x" * PIECE)
        ),
        "huge_body_chunked": lambda _: Hostile(
            _HEAD + b"Transfer-Encoding: chunked\r\n\r\n", endless(chunk)
        ),
        "huge_headers": lambda _: Hostile(_HEAD + b"X-Pad: ", endless(b"a" * PIECE)),
        "slow_senders": lambda number: Hostile(
            unfinished if number % 2 else trickled, endless(b" ", int(SLOW_FOR)), 1.0
        ),
        "deep_nesting": lambda _: with_length(b"[" * 500_000),
        "huge_arrays": huge_array,
        "non_utf8": lambda _: with_length(b'{"passthrough": "' + b"\xff\xfe\xc0" * 333_333 + b'"}'),
    }


async def send(port: int, request: Hostile) -> int:
    """The status the receiver answers with (0: it closed without one, or none came)."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return 0
    feeding = asyncio.create_task(_feed(writer, request))
    try:
        line = await asyncio.wait_for(reader.readline(), ANSWER_TIMEOUT)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0
    finally:
        feeding.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await feeding
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _feed(writer: asyncio.StreamWriter, request: Hostile) -> None:
    with contextlib.suppress(OSError):
        writer.write(request.head)
        await writer.drain()
        for piece in request.pieces():
            if request.pause:
                await asyncio.sleep(request.pause)
            writer.write(piece)
            await writer.drain()


async def attack(
    port: int, make: Callable[[int], Hostile], count: int, concurrency: int
) -> Counter[int]:
    gate = asyncio.Semaphore(concurrency)

    async def one(number: int) -> int:
        async with gate:
            return await send(port, make(number))

    return Counter(await asyncio.gather(*(one(number) for number in range(count))))


async def settled_rss(pid: int) -> float:
    await asyncio.sleep(SETTLE)
    return rss_mb(pid)


async def measure_kind(
    name: str, pid: int, attacking: Awaitable[Counter[int]], during: bool
) -> dict[str, Any]:
    """One kind's figures; with `during`, the RSS read 3 s in too, while it runs."""
    before = await settled_rss(pid)
    started = time.monotonic()
    task = asyncio.ensure_future(attacking)
    at_height = None
    if during:
        await asyncio.sleep(3.0)
        at_height = rss_mb(pid)
    statuses = await task
    seconds = time.monotonic() - started
    after, peak = await settled_rss(pid), peak_rss_mb(pid)
    figures: dict[str, Any] = {
        "kind": name,
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(after, 1),
        "growth_mb": round(after - before, 1),
        "rss_peak_mb": round(peak, 1),
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "seconds": round(seconds, 1),
    }
    if at_height is not None:
        figures["rss_while_open_mb"] = round(at_height, 1)
    say(
        f"{name:25} {sum(statuses.values())} requests in {seconds:5.1f} s, statuses "
        f"{figures['statuses']}: RSS {before:.1f} -> {after:.1f} MiB, peak {peak:.1f} MiB"
        + (f" ({at_height:.1f} MiB while all open)" if at_height is not None else "")
    )
    return figures


async def callbacks(port: int, job: PreparedJob, numbers: range) -> Counter[int]:
    """Valid callbacks for these tasks of the job, 8 at a time; their statuses."""
    gate = asyncio.Semaphore(8)
    url = f"http://{HOST}:{port}{CALLBACK_PATH}"
    async with httpx.AsyncClient(timeout=10) as http:

        async def one(number: int) -> int:
            body = orjson.dumps(callback_body(task_id(number), job.token))
            async with gate:
                return (await http.post(url, content=body)).status_code

        return Counter(await asyncio.gather(*(one(number) for number in numbers)))


async def against_fresh_web(
    directory: Path, redis_url: str, job: PreparedJob, name: str, sizes: Sizes, first: int
) -> dict[str, Any]:
    """One kind against a `receiver web` of its own; valid callbacks use the job's tasks
    from `first` on (the warm-up's, the attack's if it sends any, the one after)."""
    port = free_port()
    env = receiver_env(redis_url, port)
    argv = [PYTHON, "-m", "receiver", "web"]
    with child(f"web-{name}", argv, directory, env=env, port=port) as web:
        warm = await callbacks(port, job, range(first, first + sizes.warmup))
        if set(warm) != {202}:
            raise RuntimeError(f"the warm-up was not accepted: {warm}")
        slow = name == "slow_senders"
        make = kinds(job, first + sizes.warmup)[name]
        concurrency = sizes.requests if slow else CONCURRENCY
        attacking = attack(port, make, sizes.requests, concurrency)
        figures = await measure_kind(name, web.pid, attacking, slow)
        last = first + sizes.warmup + sizes.requests
        figures["callback_after"] = next(iter(await callbacks(port, job, range(last, last + 1))))
    return figures


async def measure(directory: Path, sizes: Sizes) -> dict[str, object]:
    names = list(kinds(PreparedJob("", "", 0), 0))  # in the order they are listed
    per_kind = sizes.warmup + sizes.requests + 1  # task ids each kind's web may use
    with redis_server(directory, aof=False) as redis_process:
        store = Store(Redis.from_url(redis_process.url))
        try:
            job = await prepare_job(store, per_kind * len(names))
        finally:
            await store.close()
        results = [
            await against_fresh_web(
                directory, redis_process.url, job, name, sizes, number * per_kind
            )
            for number, name in enumerate(names)
        ]
    worst = max(results, key=lambda kind: kind["growth_mb"])
    say(f"most growth: {worst['kind']}, {worst['growth_mb']} MiB")
    return {
        "benchmark": "attack_memory",
        "requests_per_kind": sizes.requests,
        "growth_mb_most": worst["growth_mb"],
        **{f"growth_mb_{kind['kind']}": kind["growth_mb"] for kind in results},
        **{f"peak_mb_{kind['kind']}": kind["rss_peak_mb"] for kind in results},
        "callbacks_after": [kind["callback_after"] for kind in results],
        "kinds": results,
    }


def raise_file_limit(wanted: int) -> None:
    """Room for the slow senders' sockets in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def main_async(quick: bool) -> dict[str, object]:
    sizes = QUICK if quick else FULL
    say(f"attack memory: receiver web RSS over {sizes.requests} hostile requests of each kind")
    raise_file_limit(sizes.requests + 256)
    with workdir("attack-memory") as directory:
        return await measure(directory, sizes)


def main() -> None:
    args = arguments("receiver web RSS before and after hostile requests of each kind")
    emit(run(main_async(args.quick)))


if __name__ == "__main__":
    main()
