"""The token matrix: every alteration of a valid token is refused, by the codec and by the
endpoints that take one (Decodo's passthrough, the token in a Firecrawl webhook URL), and a
refused token writes nothing to Redis."""

from __future__ import annotations

import string
import time
from collections.abc import Callable, Iterator

import pytest

from receiver.errors import ExpiredToken, InvalidToken
from receiver.store import Store, tracked_job_id
from receiver.tokens import PassthroughSigner
from tests.attack.conftest import KEYS, Target, create_running_job

JOB = "0123456789abcdef0123"  # a job id as store.new_job_id makes them
OTHER_JOB = "fedcba9876543210fedc"
TASK, OTHER_TASK = "7318426139586371585", "7318426139586371586"
BATCH = "0198f6f5-4a1e-7000-8000-000000000053"
MAX_AGE = 48 * 3600.0
NOW = 1_800_000_000.0
# Characters put inside a token or after it: outside the base64url alphabet (which
# itsdangerous would skip), inside it, the part separator, and bytes no token holds.
JUNK = ("!", " ", "=", "%", "+", "/", "\x00", "\n", "é", "A", "_", ".")
# Junk after a token, as long as an attack pads it (the URL's token stays under the 64 KiB
# an HTTP client puts in a query once it is percent-encoded).
PADDING = (1, 64, 1000, 1_000_000)
URL_PADDING = (1, 64, 1000, 10_000)
BASE64URL = string.ascii_letters + string.digits + "-_"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def flipped(token: str) -> Iterator[str]:
    """The token with one bit of one character flipped, for every bit of every character."""
    for index, char in enumerate(token):
        for bit in range(8):
            yield token[:index] + chr(ord(char) ^ (1 << bit)) + token[index + 1 :]


def replaced(token: str) -> Iterator[str]:
    """The token with one character replaced by each other character of its alphabet."""
    for index, char in enumerate(token):
        for other in BASE64URL + ".":
            if other != char:
                yield token[:index] + other + token[index + 1 :]


def truncated(token: str) -> Iterator[str]:
    return (token[:length] for length in range(len(token)))


def padded_inside(token: str) -> Iterator[str]:
    for index in range(1, len(token)):
        for junk in JUNK:
            yield token[:index] + junk + token[index:]


def padded_after(token: str, lengths: tuple[int, ...] = PADDING) -> Iterator[str]:
    for junk in JUNK:
        for length in lengths:
            yield token + junk * length


ALTERATIONS: dict[str, Callable[[str], Iterator[str]]] = {
    "flipped": flipped,
    "replaced": replaced,
    "truncated": truncated,
    "padded_inside": padded_inside,
    "padded_after": padded_after,
}


def foreign_tokens(job_id: str) -> dict[str, str]:
    """Tokens for the job that its receiver did not sign for this purpose: another salt,
    another key, the other kind of our tokens."""
    ours = PassthroughSigner(KEYS, MAX_AGE)
    return {
        "other_salt": PassthroughSigner(KEYS, MAX_AGE, salt="another.purpose").sign(job_id),
        "other_key": PassthroughSigner(["Zr8Lq3Wm6Tx1Kv9Pb4Nc7Hd2Jf5Gs0Ya"], MAX_AGE).sign(job_id),
        "webhook_token": ours.webhook_signer().sign(job_id),
        "passthrough_token": ours.sign(job_id),
    }


def _signer(kind: str, clock: Callable[[], float] | None = None) -> PassthroughSigner:
    signer = PassthroughSigner(KEYS, MAX_AGE, clock or FakeClock())
    return signer.webhook_signer() if kind == "webhook" else signer


def refusals(signer: PassthroughSigner, tokens: Iterator[str]) -> tuple[int, list[str]]:
    """How many tokens were tried, and those the signer did not refuse as invalid."""
    tried, taken = 0, []
    for token in tokens:
        tried += 1
        try:
            signer.verify(token)
        except InvalidToken:
            continue
        taken.append(token[:100])
    return tried, taken


# -- the codec --------------------------------------------------------------------------------


@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
@pytest.mark.parametrize("kind", ["passthrough", "webhook"])
def test_every_altered_token_is_refused_and_not_remembered(alteration: str, kind: str) -> None:
    signer, alone = (_signer(kind) for _ in range(2))
    token = signer.sign(JOB)
    assert signer.verify(token) == alone.verify(token) == JOB

    tried, taken = refusals(signer, ALTERATIONS[alteration](token))

    assert tried >= len(JUNK) and taken == [], f"{len(taken)} of {tried} taken: {taken[:5]}"
    assert signer.cache_bytes == alone.cache_bytes  # only the valid token is remembered


def test_the_other_kinds_of_token_are_refused() -> None:
    signer = PassthroughSigner(KEYS, MAX_AGE, FakeClock())
    webhooks = signer.webhook_signer()
    tokens = foreign_tokens(JOB)
    for name in ("other_salt", "other_key", "webhook_token"):
        with pytest.raises(InvalidToken):
            signer.verify(tokens[name])
    for name in ("other_salt", "other_key", "passthrough_token"):
        with pytest.raises(InvalidToken):
            webhooks.verify(tokens[name])


@pytest.mark.parametrize("kind", ["passthrough", "webhook"])
def test_expired_and_future_tokens_are_refused_by_the_injected_clock(kind: str) -> None:
    clock = FakeClock()
    signer = _signer(kind, clock)
    token = signer.sign(JOB)
    clock.now = NOW + MAX_AGE + 1
    with pytest.raises(ExpiredToken):
        signer.verify(token)
    clock.now = NOW - 1  # signed a second ahead of this clock
    with pytest.raises(ExpiredToken):
        signer.verify(token)
    clock.now = NOW + MAX_AGE
    assert signer.verify(token) == JOB


# -- the endpoints, on a real Redis -----------------------------------------------------------


def _two_jobs(target: Target) -> None:
    async def write(store: Store) -> None:
        await create_running_job(store, JOB, [TASK])
        await create_running_job(store, OTHER_JOB, [OTHER_TASK])

    target.write(write)


def _decodo_attempts(token: str) -> Iterator[tuple[str, str]]:
    for name in ("flipped", "truncated", "padded_inside"):
        yield from ((name, altered) for altered in ALTERATIONS[name](token))
    yield from (("padded_after", altered) for altered in padded_after(token))


def test_the_decodo_callback_refuses_every_altered_token_and_writes_nothing(
    target: Target,
) -> None:
    _two_jobs(target)
    token = target.signer.sign(JOB)
    before = target.snapshot()

    answers: dict[tuple[str, int], int] = {}
    for name, altered in _decodo_attempts(token):
        status = target.decodo({"passthrough": altered, "id": TASK, "status": "done"}).status_code
        answers[(name, status)] = answers.get((name, status), 0) + 1

    assert {status for _, status in answers} == {401}, answers
    assert target.snapshot() == before
    # The same callback with the token as signed is taken: the matrix above was refused
    # for its token alone.
    answer = target.decodo({"passthrough": token, "id": TASK, "status": "done"})
    assert (answer.status_code, answer.json()) == (202, {"status": "accepted"})
    assert target.snapshot() != before


def test_the_decodo_callback_refuses_foreign_expired_and_future_tokens(target: Target) -> None:
    _two_jobs(target)
    expired = PassthroughSigner(KEYS, MAX_AGE, lambda: time.time() - MAX_AGE - 60)
    future = PassthroughSigner(KEYS, MAX_AGE, lambda: time.time() + 3600)
    tokens = foreign_tokens(JOB)
    cases = {
        "other_salt": (tokens["other_salt"], TASK, 401, "invalid_token"),
        "other_key": (tokens["other_key"], TASK, 401, "invalid_token"),
        "webhook_token": (tokens["webhook_token"], TASK, 401, "invalid_token"),
        "expired": (expired.sign(JOB), TASK, 401, "expired_token"),
        "future": (future.sign(JOB), TASK, 401, "expired_token"),
        # A valid token of one job never touches another job's task.
        "other_job": (target.signer.sign(JOB), OTHER_TASK, 404, "unknown_task"),
        "no_such_job": (target.signer.sign("0" * 20), TASK, 404, "unknown_job"),
    }
    before = target.snapshot()
    for name, (token, task, status, error) in cases.items():
        answer = target.decodo({"passthrough": token, "id": task, "status": "done"})
        assert (answer.status_code, answer.json()["error"]) == (status, error), name
    assert target.snapshot() == before


def _tracked(target: Target) -> str:
    async def write(store: Store) -> None:
        await store.track_job("firecrawl", BATCH, {"batch_id": BATCH})
        await store.track_job("firecrawl", "other-batch", {"batch_id": "other-batch"})

    target.write(write)
    return tracked_job_id("firecrawl", BATCH)


def test_the_firecrawl_webhook_refuses_every_altered_token_and_writes_nothing(
    target: Target,
) -> None:
    job_id = _tracked(target)
    token = target.signer.webhook_signer().sign(job_id)
    body = {"success": True, "type": "batch_scrape.completed", "id": BATCH, "data": []}
    attempts = [
        *(
            (name, altered)
            for name in ("flipped", "truncated")
            for altered in ALTERATIONS[name](token)
        ),
        *(("padded_inside", altered) for altered in padded_inside(token)),
        *(("padded_after", altered) for altered in padded_after(token, URL_PADDING)),
    ]
    before = target.snapshot()

    answers: dict[tuple[str, int], int] = {}
    for name, altered in attempts:
        status = target.firecrawl(body, altered).status_code
        answers[(name, status)] = answers.get((name, status), 0) + 1

    assert {status for _, status in answers} == {401}, answers
    assert target.snapshot() == before
    answer = target.firecrawl(body, token)
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted"})
    assert target.snapshot() != before


def test_the_firecrawl_webhook_refuses_foreign_expired_and_future_tokens(target: Target) -> None:
    job_id = _tracked(target)
    body = {"success": True, "type": "batch_scrape.completed", "id": BATCH, "data": []}
    expired = PassthroughSigner(KEYS, MAX_AGE, lambda: time.time() - MAX_AGE - 60)
    future = PassthroughSigner(KEYS, MAX_AGE, lambda: time.time() + 3600)
    tokens = foreign_tokens(job_id)
    cases = {
        "other_salt": (tokens["other_salt"], "invalid_token"),
        "other_key": (tokens["other_key"], "invalid_token"),
        "passthrough_token": (tokens["passthrough_token"], "invalid_token"),
        "expired": (expired.webhook_signer().sign(job_id), "expired_token"),
        "future": (future.webhook_signer().sign(job_id), "expired_token"),
        "other_job": (
            target.signer.webhook_signer().sign(tracked_job_id("firecrawl", "other-batch")),
            "invalid_token",
        ),
    }
    before = target.snapshot()
    for name, (token, error) in cases.items():
        answer = target.firecrawl(body, token)
        assert (answer.status_code, answer.json()["error"]) == (401, error), name
    assert target.snapshot() == before
