from __future__ import annotations

import tracemalloc

import pytest

from receiver.errors import ExpiredToken, InvalidToken
from receiver.tokens import PassthroughSigner, sign_webhook, verify_webhook


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_sign_then_verify_gives_the_job_id() -> None:
    signer = PassthroughSigner(["k1"], max_age=3600)
    assert signer.verify(signer.sign("job-a")) == "job-a"


@pytest.mark.parametrize("token", [None, "", 42, ["x"], "not-a-token", "a.b.c"])
def test_verify_missing_or_garbage_is_invalid(token: object) -> None:
    signer = PassthroughSigner(["k1"], max_age=3600)
    with pytest.raises(InvalidToken):
        signer.verify(token)


def test_verify_tampered_token_is_invalid() -> None:
    signer = PassthroughSigner(["k1"], max_age=3600)
    token = signer.sign("job-a")
    payload, stamp, signature = token.split(".")
    forged_payload = PassthroughSigner(["other"], max_age=3600).sign("job-b").split(".")[0]
    for tampered in (
        f"{forged_payload}.{stamp}.{signature}",
        f"{payload}.{stamp}.{signature[:-2]}xx",
        f"{payload}.AAAAAA.{signature}",
    ):
        with pytest.raises(InvalidToken):
            signer.verify(tampered)


def test_verify_token_signed_with_unknown_key_is_invalid() -> None:
    token = PassthroughSigner(["attacker"], max_age=3600).sign("job-a")
    with pytest.raises(InvalidToken):
        PassthroughSigner(["k1"], max_age=3600).verify(token)


def test_verify_expired_token_with_injected_clock() -> None:
    clock = FakeClock()
    signer = PassthroughSigner(["k1"], max_age=86_400, clock=clock)
    token = signer.sign("job-a")
    clock.now += 86_400
    assert signer.verify(token) == "job-a"
    clock.now += 2
    with pytest.raises(ExpiredToken):
        signer.verify(token)


def test_expiry_holds_for_a_token_verified_before() -> None:
    clock = FakeClock()
    signer = PassthroughSigner(["k1"], max_age=60, clock=clock)
    token = signer.sign("job-a")
    signer.verify(token)  # now remembered as verified
    clock.now += 61
    with pytest.raises(ExpiredToken):
        signer.verify(token)


def test_rotation_old_token_still_verifies_new_key_signs() -> None:
    old = PassthroughSigner(["old"], max_age=3600)
    rotated = PassthroughSigner(["new", "old"], max_age=3600)
    old_token = old.sign("job-a")
    new_token = rotated.sign("job-b")
    assert rotated.verify(old_token) == "job-a"
    assert rotated.verify(new_token) == "job-b"
    with pytest.raises(InvalidToken):
        old.verify(new_token)  # signed with the new key, which the old config lacks


def test_token_is_bound_to_its_job() -> None:
    signer = PassthroughSigner(["k1"], max_age=3600, clock=FakeClock())
    token_a, token_b = signer.sign("job-a"), signer.sign("job-b")
    assert token_a != token_b
    assert signer.verify(token_a) == "job-a" and signer.verify(token_b) == "job-b"
    # Same key, same second: only the job differs. A's signature never vouches for job B.
    payload_b = token_b.split(".")[0]
    _, stamp_a, signature_a = token_a.split(".")
    with pytest.raises(InvalidToken):
        signer.verify(f"{payload_b}.{stamp_a}.{signature_a}")


def test_token_from_another_purpose_fails_the_salt() -> None:
    from itsdangerous import URLSafeTimedSerializer

    foreign = URLSafeTimedSerializer("k1", salt="something-else").dumps("job-a")
    with pytest.raises(InvalidToken):
        PassthroughSigner(["k1"], max_age=3600).verify(foreign)


def test_webhook_signature_round_trip_and_mismatch() -> None:
    body = b'{"type":"batch_scrape.completed"}'
    header = sign_webhook("s3cret", body)
    assert header.startswith("sha256=")
    verify_webhook("s3cret", body, header)
    for bad in (None, "", "sha256=00", sign_webhook("other", body), header + "0"):
        with pytest.raises(InvalidToken):
            verify_webhook("s3cret", body, bad)
    with pytest.raises(InvalidToken):
        verify_webhook("s3cret", body + b" ", header)


def test_webhook_token_round_trip_and_rotation() -> None:
    old = PassthroughSigner(["old"], max_age=3600).webhook_signer()
    rotated = PassthroughSigner(["new", "old"], max_age=3600).webhook_signer()
    assert rotated.verify(old.sign("job-a")) == "job-a"
    assert rotated.verify(rotated.sign("job-b")) == "job-b"
    with pytest.raises(InvalidToken, match="webhook token is not valid"):
        old.verify(rotated.sign("job-b"))


def test_webhook_and_passthrough_tokens_do_not_pass_for_each_other() -> None:
    signer = PassthroughSigner(["k1"], max_age=3600)
    webhooks = signer.webhook_signer()
    assert webhooks is signer.webhook_signer()  # one per signer, its verified cache kept
    with pytest.raises(InvalidToken):
        webhooks.verify(signer.sign("job-a"))
    with pytest.raises(InvalidToken):
        signer.verify(webhooks.sign("job-a"))


def test_webhook_token_expires_on_the_signers_clock() -> None:
    clock = FakeClock()
    webhooks = PassthroughSigner(["k1"], max_age=60, clock=clock).webhook_signer()
    token = webhooks.sign("job-a")
    clock.now += 61
    with pytest.raises(ExpiredToken, match="webhook token expired"):
        webhooks.verify(token)


@pytest.mark.parametrize("token", [None, "", "not-a-token"])
def test_webhook_token_missing_or_garbage_says_which_token(token: object) -> None:
    with pytest.raises(InvalidToken, match="webhook token"):
        PassthroughSigner(["k1"], max_age=3600).webhook_signer().verify(token)


def _padded(token: str) -> list[str]:
    """A valid token with junk after it, inside its signature, or around it: itsdangerous
    drops what is not base64 from a signature, so each of these verified once."""
    return [
        token + "!" * 1_000_000,
        token + "!",
        token + "=",
        token[:-4] + "!" + token[-4:],
        token[:-4] + "\x00" + token[-4:],
        f" {token}",
        f"{token}\n",
    ]


@pytest.mark.parametrize("kind", ["passthrough", "webhook"])
def test_a_padded_token_is_refused_and_not_remembered(kind: str) -> None:
    signer = PassthroughSigner(["k1"], max_age=3600)
    if kind == "webhook":
        signer = signer.webhook_signer()
    token = signer.sign("job-a")
    for padded in _padded(token):
        with pytest.raises(InvalidToken, match="is not valid"):
            signer.verify(padded)
    assert signer.cache_bytes == 0
    assert signer.verify(token) == "job-a"
    assert 0 < signer.cache_bytes < 1000


def test_a_token_that_only_decodes_like_the_valid_one_is_refused() -> None:
    # The last character of a base64 part carries bits nothing decodes: another letter
    # there decodes to the same signature bytes, but is not the token that was signed.
    signer = PassthroughSigner(["k1"], max_age=3600, clock=FakeClock())
    token = signer.sign("job-a")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    others = [token[:-1] + c for c in alphabet if c != token[-1]]
    for other in others:
        with pytest.raises(InvalidToken):
            signer.verify(other)


def test_remembered_tokens_stay_under_their_byte_cap() -> None:
    cap = 256 * 1024
    signer = PassthroughSigner(["k1"], max_age=3600, cache_bytes=cap)
    tokens = [signer.sign(f"{n:020x}") for n in range(5000)]  # ~1.5 MB if all were kept
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, token in enumerate(tokens):
            assert signer.verify(token) == f"{n:020x}"
            assert signer.cache_bytes <= cap
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cap * 0.9 < signer.cache_bytes <= cap
    assert grown <= cap, f"the cache took {grown} bytes of memory"
    assert signer.verify(tokens[0]) == f"{0:020x}"  # dropped, so verified again: still valid
