"""Property tests of what reads a hostile sender's bytes: the Decodo callback's fields, the
whole callback answer as a function of the body (on a real Redis), and the token codec. No
input makes them raise anything but our own 4xx errors, and a refusal writes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis
from starlette.types import Message

from receiver import callbacks
from receiver.errors import InvalidRequest, InvalidToken, ReceiverError
from receiver.outages import Outages
from receiver.settings import Settings
from receiver.store import Store, callback_committer
from receiver.tokens import MAX_TOKEN_LENGTH, PassthroughSigner
from receiver.web import Services
from tests.attack.conftest import KEYS, create_running_job, snapshot_async
from tests.servers import RedisProcess

JOB = "0123456789abcdef0123"
TASKS = ["7318426139586371585", "7318426139586371586"]
SIGNER = PassthroughSigner(KEYS, 48 * 3600.0)
TOKEN = SIGNER.sign(JOB)
NO_JOB_TOKEN = SIGNER.sign("fedcba9876543210fedc")  # valid, for a job that does not exist
# A body limit the longer generated bodies pass (a 413 is one of the answers).
BODY_LIMIT = 4096
# What a 4xx refusal of ours may say; a 202 says what happened to the callback.
REFUSALS = {400, 401, 404, 413}
ACKNOWLEDGED = {"accepted", "duplicate", "early", "closed"}
# The fields the parser reads, so that generated bodies hit them often.
FIELDS = ("passthrough", "passtrough", "id", "task_id", "status", "status_code")

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),  # what orjson writes
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


@st.composite
def altered_tokens(draw: st.DrawFn, token: str = TOKEN) -> str:
    """The token with a character replaced, inserted or dropped, or cut, or padded."""
    index = draw(st.integers(min_value=0, max_value=len(token)))
    junk = draw(st.text(min_size=1, max_size=3))
    how = draw(st.sampled_from(["replace", "insert", "drop", "cut", "pad"]))
    if how == "replace":
        return token[:index] + junk + token[index + 1 :]
    if how == "insert":
        return token[:index] + junk + token[index:]
    if how == "drop":
        return token[:index] + token[index + 1 :]
    if how == "cut":
        return token[:index]
    return token + junk * draw(st.integers(min_value=1, max_value=5000))


TOKENS = st.one_of(st.sampled_from([TOKEN, NO_JOB_TOKEN]), altered_tokens(), JSON)
# Bodies shaped like a callback (each field a good value, an altered one or any JSON), any
# JSON, and any bytes at all.
CALLBACK_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "passthrough": TOKENS,
        "passtrough": TOKENS,
        "id": st.one_of(st.sampled_from([*TASKS, "junk"]), JSON),
        "task_id": st.one_of(st.sampled_from(TASKS), JSON),
        "status": st.one_of(st.sampled_from(["done", "faulted", "failed", "pending"]), JSON),
        "status_code": st.one_of(st.sampled_from([200, "200", 500, "5000"]), JSON),
    },
).map(orjson.dumps)
# Numbers past what orjson reads (a 400), in the fields that take numbers.
BIG_NUMBERS = st.integers().map(
    lambda n: f'{{"passthrough": "{TOKEN}", "id": {n}, "status_code": {n}}}'.encode()
)
BODIES = st.one_of(
    CALLBACK_BODIES,
    BIG_NUMBERS,
    JSON.map(orjson.dumps),
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
)


def token_of(body: bytes) -> object:
    """The token a callback body carries, as the parser reads it."""
    parsed = orjson.loads(body)
    return parsed.get("passthrough", parsed.get("passtrough"))


def assert_our_refusal(exc: BaseException) -> None:
    assert isinstance(exc, ReceiverError), repr(exc)
    assert 400 <= getattr(exc, "status_code", 0) < 500, repr(exc)


# -- the fields -------------------------------------------------------------------------------


@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), JSON))
def test_the_task_id_is_a_decodo_task_id_or_a_400(body: dict[str, Any]) -> None:
    try:
        task_id = callbacks._task_id(body)
    except InvalidRequest as exc:
        assert_our_refusal(exc)
        return
    assert callbacks.TASK_ID.fullmatch(task_id)


@given(st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=10)), JSON))
def test_the_status_is_done_or_faulted_or_a_400(body: dict[str, Any]) -> None:
    try:
        status = callbacks._status(body)
    except InvalidRequest as exc:
        assert_our_refusal(exc)
        return
    assert status in ("done", "faulted")


# -- the token codec --------------------------------------------------------------------------


@given(st.one_of(st.text(), st.binary(), JSON, altered_tokens()))
def test_verify_takes_only_the_token_as_signed(token: object) -> None:
    try:
        job_id = SIGNER.verify(token)
    except InvalidToken as exc:
        assert_our_refusal(exc)
        return
    assert (token, job_id) == (TOKEN, JOB)


@given(st.from_regex(r"\A\.?[A-Za-z0-9_-]{1,60}\.[A-Za-z0-9_-]{1,10}\.[A-Za-z0-9_-]{20,30}\Z"))
def test_verify_refuses_token_shaped_strings(token: str) -> None:
    # Shaped like ours, so they reach the signature check (and past it, the payload's).
    with pytest.raises(InvalidToken):
        SIGNER.verify(token)


@given(st.text(alphabet="ABCDEFabcdef0123456789-_.", min_size=1, max_size=MAX_TOKEN_LENGTH))
def test_verify_refuses_what_decodes_to_nothing_we_signed(token: str) -> None:
    with pytest.raises(InvalidToken):
        SIGNER.verify(token)


@given(JSON)
def test_a_token_we_signed_for_a_value_that_is_no_job_id_is_refused(value: Any) -> None:
    # Signed with our key, as only a leak of it could make one: a job id is a string.
    signed: str = SIGNER._serializer.dumps(value)
    if isinstance(value, str) and len(signed) <= MAX_TOKEN_LENGTH:
        assert SIGNER.verify(signed) == value
    else:  # not a job id, or longer than any token of ours
        with pytest.raises(InvalidToken):
            SIGNER.verify(signed)


# -- the whole answer, on a real Redis --------------------------------------------------------


class Answering:
    """DecodoCallbacks on a Store of a real Redis, run on one event loop kept for the test."""

    def __init__(self, redis_url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.redis = Redis.from_url(redis_url)
        self.store = Store(self.redis)
        services = SimpleNamespace(
            settings=Settings(max_body=BODY_LIMIT),
            signer=SIGNER,
            committer=callback_committer(self.store),
            outages=Outages(),
        )
        self.app = callbacks.DecodoCallbacks(lambda: cast(Services, services))

    def run(self, step: Any) -> Any:
        return self.loop.run_until_complete(step)

    async def answer(self, body: bytes) -> tuple[int, dict[str, Any]]:
        scope = {"type": "http", "method": "POST", "path": "/callbacks/decodo", "headers": []}
        sent: list[dict[str, Any]] = []

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Message) -> None:
            sent.append(dict(message))

        await self.app(scope, receive, send)
        assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
        return sent[0]["status"], orjson.loads(sent[1]["body"])

    def close(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()


@pytest.fixture
def answering(redis_process: RedisProcess) -> Iterator[Answering]:
    running = Answering(redis_process.url)
    running.run(running.redis.flushall())
    running.run(create_running_job(running.store, JOB, TASKS))
    yield running
    running.close()


# One job for every example: the fixture's Redis keeps what the accepted ones recorded.
@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(body=BODIES)
@example(body=orjson.dumps({"passthrough": NO_JOB_TOKEN, "id": TASKS[0]}))  # 404 unknown_job
@example(body=orjson.dumps({"passthrough": TOKEN + "!" * BODY_LIMIT, "id": TASKS[0]}))  # 413
@example(body=orjson.dumps({"passthrough": TOKEN, "id": TASKS[1], "status": "faulted"}))
@example(body=orjson.dumps({"passthrough": TOKEN + "!!", "id": TASKS[0]}))  # once verified
def test_every_body_gets_a_202_or_our_4xx_and_a_refusal_writes_nothing(
    answering: Answering, body: bytes
) -> None:
    before = answering.run(snapshot_async(answering.redis))
    status, answer = answering.run(answering.answer(body))
    event(f"{status} {answer.get('status', answer.get('error'))}")
    if status == 202 or answer.get("error") in ("unknown_task", "unknown_job"):
        # The token verified: it is one we signed, character for character.
        assert token_of(body) in (TOKEN, NO_JOB_TOKEN), (status, answer)
    if status == 202:
        assert answer["status"] in ACKNOWLEDGED, answer
        return
    assert status in REFUSALS, (status, answer)
    assert isinstance(answer.get("error"), str) and isinstance(answer.get("message"), str)
    assert answering.run(snapshot_async(answering.redis)) == before
