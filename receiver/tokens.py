"""Signed tokens of our jobs (Decodo's passthrough, the token in a Firecrawl webhook URL),
and the HMAC of Firecrawl's signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

from receiver.errors import ExpiredToken, InvalidToken

# The salt binds tokens to this one purpose: a token signed elsewhere with the same key fails.
PASSTHROUGH_SALT = "receiver.decodo.passthrough.v1"
# The salt of the token in the webhook URL we give Firecrawl: a passthrough token is none.
WEBHOOK_SALT = "receiver.firecrawl.webhook.v1"
# Verified tokens remembered; one per job in flight is plenty.
_VERIFIED_CACHE_SIZE = 10_000


def _signer_on(clock: Callable[[], float]) -> type[TimestampSigner]:
    """A TimestampSigner that reads the injected clock, for signing and for checking age."""

    class ClockedSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return ClockedSigner


class PassthroughSigner:
    """Signs a job id into a timed token and verifies it against every configured key.

    `keys[0]` signs; all keys verify, so a new key can be put first while tokens
    signed with the old one are still in flight.
    """

    def __init__(
        self,
        keys: Sequence[str],
        max_age: float,
        clock: Callable[[], float] = time.time,
        *,
        salt: str = PASSTHROUGH_SALT,
        name: str = "passthrough token",
    ) -> None:
        if not keys:
            raise ValueError("at least one secret key is needed")
        self._keys = tuple(keys)
        # itsdangerous signs with the last key of the list and verifies with all of them.
        self._serializer = URLSafeTimedSerializer(
            list(reversed(keys)), salt=salt, signer=_signer_on(clock)
        )
        self._clock = clock
        self.max_age = max_age
        self.name = name  # what errors call the token
        # Every task of a job echoes the same token: remember the ones already verified.
        self._verified: dict[str, tuple[str, float]] = {}
        self._webhooks: PassthroughSigner | None = None

    def webhook_signer(self) -> PassthroughSigner:
        """The signer of the tokens in Firecrawl webhook URLs: the same keys, clock and
        age, a salt of its own (so neither kind of token passes for the other)."""
        if self._webhooks is None:
            self._webhooks = PassthroughSigner(
                self._keys, self.max_age, self._clock, salt=WEBHOOK_SALT, name="webhook token"
            )
        return self._webhooks

    def sign(self, job_id: str) -> str:
        token: str = self._serializer.dumps(job_id)
        return token

    def verify(self, token: object) -> str:
        """The job id the token was signed for; InvalidToken or ExpiredToken otherwise."""
        if not isinstance(token, str) or not token:
            raise InvalidToken(f"missing {self.name}")
        known = self._verified.get(token)
        if known is None:
            known = self._verify_signature(token)
            if len(self._verified) >= _VERIFIED_CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = known
        job_id, signed_at = known
        if self._clock() - signed_at > self.max_age:
            raise ExpiredToken(f"{self.name} expired")
        return job_id

    def _verify_signature(self, token: str) -> tuple[str, float]:
        try:
            job_id, signed_at = self._serializer.loads(
                token, max_age=int(self.max_age), return_timestamp=True
            )
        except SignatureExpired:
            raise ExpiredToken(f"{self.name} expired") from None
        except BadSignature:
            raise InvalidToken(f"{self.name} is not valid") from None
        if not isinstance(job_id, str):
            raise InvalidToken(f"{self.name} is not valid")
        return job_id, signed_at.timestamp()


def sign_webhook(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook(secret: str, body: bytes, header: str | None) -> None:
    """Check `X-Firecrawl-Signature: sha256=<hex>` over the raw body, in constant time."""
    if not header:
        raise InvalidToken("missing webhook signature")
    if not hmac.compare_digest(sign_webhook(secret, body).encode(), header.strip().encode()):
        raise InvalidToken("webhook signature does not match")
