"""The exceptions of receiver.

ReceiverError
├── ConfigError           a setting is missing or invalid; the process refuses to start
├── InvalidRequest        a client sent something we cannot accept (4xx)
│   ├── PayloadTooLarge   a body over the configured limit (413)
│   └── InvalidToken      a missing, forged, tampered, expired or foreign token (401)
│       └── ExpiredToken
├── UnknownJob            no such job (404)
├── NotConfirmed          a write's durability (WAIT/WAITAOF) not confirmed in time (503)
└── ProviderError(status, body)       a provider answered something other than success
    ├── Transient                     worth retrying later
    │   ├── RateLimited(retry_after)  429, or a provider's own rate-limit answer
    │   └── Unavailable               5xx, timeouts, network errors
    └── Permanent                     retrying will not help; the job or task fails
        ├── Unauthorized              401 / 403
        ├── PaymentRequired           402
        ├── NotFound                  404 (unknown or expired at the provider)
        └── Rejected                  400 / 409 / 422: the provider refused the request
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error receiver raises on purpose."""


class ConfigError(ReceiverError):
    pass


class InvalidRequest(ReceiverError):
    status_code = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    code = "payload_too_large"


class InvalidToken(InvalidRequest):
    status_code = 401
    code = "invalid_token"


class ExpiredToken(InvalidToken):
    code = "expired_token"


class UnknownJob(ReceiverError):
    status_code = 404
    code = "unknown_job"


class NotConfirmed(ReceiverError):
    """Redis took the write but did not confirm it as RECEIVER_DURABILITY asks: the sender
    is told to retry (a retry is a duplicate, recorded once)."""

    status_code = 503
    code = "not_confirmed"


class ProviderError(ReceiverError):
    """A provider's answer other than success, with the HTTP status (0 for no answer)."""

    #: A short machine-readable reason, recorded on failed jobs and tasks.
    reason = "provider_error"

    def __init__(
        self, message: str, *, status: int = 0, body: str = "", reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body[:2000]  # enough to diagnose, never a whole payload
        if reason is not None:
            self.reason = reason

    def log_fields(self) -> dict[str, object]:
        """What a log line may say of it: the reason and the status, never the answer."""
        return {"reason": self.reason, "status": self.status}


class Transient(ProviderError):
    reason = "transient"


class RateLimited(Transient):
    reason = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        status: int = 429,
        body: str = "",
        reason: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, body=body, reason=reason)
        self.retry_after = retry_after


class Unavailable(Transient):
    reason = "unavailable"


class Permanent(ProviderError):
    reason = "rejected"


class Unauthorized(Permanent):
    reason = "unauthorized"


class PaymentRequired(Permanent):
    reason = "payment_required"


class NotFound(Permanent):
    reason = "not_found"


class Rejected(Permanent):
    reason = "rejected"
