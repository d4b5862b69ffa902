"""The receiver's HTTP API as the CLI calls it: where it is, its bearer token, and its error
answers turned into messages and exit codes.

Errors are click exceptions: a command that meets one stops with `Error: message` on
stderr and the error's exit code, without catching it.

    ClientError (exit 1)       the receiver refused the request, or could not be reached
     ├── UnknownJob (exit 4)   it has no such job
     └── WatchError (exit 5)   (client.stream) a stream refused, or away for too long
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import click
import httpx
import orjson

from receiver.client.text import printable
from receiver.settings import Settings

# Seconds an API call may take.
TIMEOUT = 30.0
# Most jobs `GET /jobs` returns in one page.
PAGE_MOST = 1000


class ClientError(click.ClickException):
    """A command cannot do what it was asked; its class's `exit_code` says why."""

    exit_code = 1

    def format_message(self) -> str:
        # The message quotes the receiver's answer, job ids and URLs: text, not controls.
        return printable(self.message)


class UnknownJob(ClientError):
    exit_code = 4


@dataclass(frozen=True)
class Api:
    """A running receiver: its URL and the token its job API wants."""

    base: str  # without a trailing slash
    token: str = field(repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] = os.environ) -> Api:
        """`RECEIVER_URL` (default: this machine's `PORT`), and `RECEIVER_API_TOKEN` or the
        embedded deployment's own token."""
        base = environ.get("RECEIVER_URL", f"http://127.0.0.1:{settings.port}").rstrip("/")
        return cls(base, settings.api_token or _embedded_token(settings))

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def url(self, path: str) -> str:
        return self.base + path

    def call(
        self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """The JSON answer of one request; ClientError when it fails or is refused."""
        try:
            response = httpx.request(
                method,
                self.url(path),
                headers=self.headers,
                params=params,
                content=orjson.dumps(body) if body is not None else None,
                timeout=TIMEOUT,
            )
        except httpx.HTTPError as exc:
            raise ClientError(f"cannot reach receiver at {self.base}: {exc}") from None
        if response.status_code >= 400:
            raise refused(response)
        return orjson.loads(response.content) if response.content else {}

    def create_job(self, body: Mapping[str, Any]) -> Any:
        return self.call("POST", "/jobs", body)

    def get_job(self, job_id: str) -> Any:
        return self.call("GET", job_path(job_id))

    def retry_job(self, job_id: str) -> Any:
        return self.call("POST", job_path(job_id, "/retry"))

    def cancel_job(self, job_id: str) -> Any:
        return self.call("DELETE", job_path(job_id))

    def list_jobs(
        self, status: str | None = None, provider: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Up to `limit` jobs, newest first, following the pages' cursors."""
        found: list[dict[str, Any]] = []
        cursor = None
        while len(found) < limit:
            params = {"status": status, "provider": provider, "cursor": cursor}
            params = {key: value for key, value in params.items() if value}
            most = min(limit - len(found), PAGE_MOST)
            page = self.call("GET", "/jobs", params={**params, "limit": most})
            found.extend(page.get("jobs") or [])
            if not page.get("next_cursor") or page["next_cursor"] == cursor:
                break
            cursor = page["next_cursor"]
        return found[:limit]


def _embedded_token(settings: Settings) -> str:
    """The token an embedded deployment keeps in its data dir, only read: a client never
    makes the server's secrets (a token made here would only be refused, 401)."""
    from receiver.embedded import read_secrets

    if not settings.embedded:  # a receiver on its own Redis keeps no token on disk
        raise ClientError("no API token: set RECEIVER_API_TOKEN to the receiver's token")
    where = settings.data_dir.resolve()
    try:
        found = read_secrets(settings.data_dir)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a secrets file"
        raise ClientError(f"cannot read the API token in {where} ({why}): {_SET_TOKEN}") from None
    if found is None:
        raise ClientError(f"no API token, and no receiver's secrets in {where}: {_SET_TOKEN}")
    return found.api_token


_SET_TOKEN = (
    "set RECEIVER_API_TOKEN to the receiver's token, or RECEIVER_DATA_DIR to the data dir "
    "of the `receiver run` to talk to"
)


def job_path(job_id: str, then: str = "") -> str:
    """`/jobs/{id}` with the id quoted, and what follows it (`/events`, `/retry`)."""
    return f"/jobs/{quote(job_id, safe='')}{then}"


def refused(response: httpx.Response) -> ClientError:
    """The error of a refusal: `404: no job x` (UnknownJob), `409: ...`."""
    code, message = api_error(response)
    kind = UnknownJob if code == "unknown_job" else ClientError
    return kind(f"{response.status_code}: {message}")


def api_error(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of the receiver's JSON error answer, or of any other answer."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        body = None
    if isinstance(body, dict):
        return str(body.get("error", "")), str(body.get("message") or body.get("error"))
    return "", response.text.strip() or response.reason_phrase
