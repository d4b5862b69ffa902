from __future__ import annotations

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
