"""Signed tokens of our jobs (Decodo's passthrough, the token in a Firecrawl webhook URL),
and the HMAC of Firecrawl's signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import re
import sys
import time
from collections.abc import Callable, Sequence

from itsdangerous import (
    BadData,
    SignatureExpired,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_decode, base64_encode

from receiver.errors import ExpiredToken, InvalidToken

# The salt binds tokens to this one purpose: a token signed elsewhere with the same key fails.
PASSTHROUGH_SALT = "receiver.decodo.passthrough.v1"
# The salt of the token in the webhook URL we give Firecrawl: a passthrough token is none.
WEBHOOK_SALT = "receiver.firecrawl.webhook.v1"
# Characters of a token we accept at most: ours are about 65 (a 20-character job id), and
# itsdangerous would verify a token with any junk after it (it drops what is not base64).
MAX_TOKEN_LENGTH = 256
# A token as we sign it: base64url payload (a leading "." if compressed), timestamp and
# signature, nothing else. Anything another spelling of it is refused before verifying.
_TOKEN_FORM = re.compile(r"\.?([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
# Bytes of memory the verified tokens remembered may take, each counted as its objects and
# its dict slot: about 12,000 tokens of ours, one per job in flight is plenty.
VERIFIED_CACHE_BYTES = 4 * 1024 * 1024
# Bytes of a dict slot (hash, key, value and index, with the table's spare room).
_SLOT_BYTES = 64


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
        cache_bytes: int = VERIFIED_CACHE_BYTES,
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
        # Every task of a job echoes the same token: remember the ones already verified,
        # oldest dropped first once they take more than `cache_limit` bytes.
        self._verified: dict[str, tuple[str, float]] = {}
        self.cache_limit = cache_bytes
        self.cache_bytes = 0
        self._signature_length = len(self.sign("").rsplit(".", 1)[1])
        self._webhooks: PassthroughSigner | None = None

    def webhook_signer(self) -> PassthroughSigner:
        """The signer of the tokens in Firecrawl webhook URLs: the same keys, clock and
        age, a salt of its own (so neither kind of token passes for the other)."""
        if self._webhooks is None:
            self._webhooks = PassthroughSigner(
                self._keys,
                self.max_age,
                self._clock,
                salt=WEBHOOK_SALT,
                name="webhook token",
                cache_bytes=self.cache_limit,
            )
        return self._webhooks

    def sign(self, job_id: str) -> str:
        token: str = self._serializer.dumps(job_id)
        return token

    def verify(self, token: object) -> str:
        """The job id the token was signed for; InvalidToken or ExpiredToken otherwise."""
        if not isinstance(token, str) or not token:
            raise InvalidToken(f"missing {self.name}")
        if len(token) > MAX_TOKEN_LENGTH:  # before hashing it for the lookup
            raise InvalidToken(f"{self.name} is not valid")
        known = self._verified.get(token)
        if known is None:
            self._check_form(token)
            known = self._verify_signature(token)
            self._remember(token, known)
        job_id, signed_at = known
        if self._clock() - signed_at > self.max_age:
            raise ExpiredToken(f"{self.name} expired")
        return job_id

    def _check_form(self, token: str) -> None:
        """Refuse any spelling of a token but the one we sign: a length cap, our alphabet,
        a signature of its digest's length and every part as base64 encodes it (no stray
        bits in its last character), so one token has one string and nothing rides on it."""
        form = _TOKEN_FORM.fullmatch(token)
        if form is None or len(form[3]) != self._signature_length:
            raise InvalidToken(f"{self.name} is not valid")
        for part in form.groups():
            try:
                canonical = base64_encode(base64_decode(part)) == part.encode()
            except BadData:  # not base64 at all
                canonical = False
            if not canonical:
                raise InvalidToken(f"{self.name} is not valid")

    def _remember(self, token: str, known: tuple[str, float]) -> None:
        size = _entry_bytes(token, known)
        while self._verified and self.cache_bytes + size > self.cache_limit:
            oldest = next(iter(self._verified))
            self.cache_bytes -= _entry_bytes(oldest, self._verified.pop(oldest))
        if size <= self.cache_limit:
            self._verified[token] = known
            self.cache_bytes += size

    def _verify_signature(self, token: str) -> tuple[str, float]:
        try:
            job_id, signed_at = self._serializer.loads(
                token, max_age=int(self.max_age), return_timestamp=True
            )
        except SignatureExpired:
            raise ExpiredToken(f"{self.name} expired") from None
        except BadData:  # a bad signature, or a payload that does not decode
            raise InvalidToken(f"{self.name} is not valid") from None
        if not isinstance(job_id, str):
            raise InvalidToken(f"{self.name} is not valid")
        return job_id, signed_at.timestamp()


def _entry_bytes(token: str, known: tuple[str, float]) -> int:
    """The memory a remembered token holds: its string, the job id, the tuple, the time."""
    job_id, signed_at = known
    objects = sys.getsizeof(token) + sys.getsizeof(job_id) + sys.getsizeof(known)
    return objects + sys.getsizeof(signed_at) + _SLOT_BYTES


def sign_webhook(secret: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook(secret: str, body: bytes, header: str | None) -> None:
    """Check `X-Firecrawl-Signature: sha256=<hex>` over the raw body, in constant time."""
    if not header:
        raise InvalidToken("missing webhook signature")
    if not hmac.compare_digest(sign_webhook(secret, body).encode(), header.strip().encode()):
        raise InvalidToken("webhook signature does not match")
