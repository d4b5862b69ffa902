"""The client's view of the receiver's API: where it is, its token, refusals' exit codes."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from receiver.client.api import Api, ClientError, UnknownJob, job_path, refused
from receiver.settings import Settings


def test_api_is_receiver_url_with_the_bearer_token_never_in_its_repr() -> None:
    settings = Settings.from_env({"RECEIVER_API_TOKEN": "s3cret", "PORT": "8123"})
    here = Api.from_settings(settings, {})
    there = Api.from_settings(settings, {"RECEIVER_URL": "https://receiver.example/"})
    assert (here.base, there.base) == ("http://127.0.0.1:8123", "https://receiver.example")
    assert there.headers == {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in repr(there)


def test_job_paths_quote_the_job_id() -> None:
    assert job_path("a/b c", "/events") == "/jobs/a%2Fb%20c/events"


@pytest.mark.parametrize(
    ("response", "kind", "code", "message"),
    [
        (httpx.Response(404, json={"error": "unknown_job", "message": "no job x"}), UnknownJob, 4,
         "404: no job x"),
        (httpx.Response(409, json={"error": "conflict", "message": "job ended"}), ClientError, 1,
         "409: job ended"),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), ClientError, 1,
         "502: <html>Bad Gateway</html>"),
        (httpx.Response(503), ClientError, 1, "503: Service Unavailable"),
    ],
)  # fmt: skip
def test_refusals_are_messages_with_their_exit_code(
    response: httpx.Response, kind: type[ClientError], code: int, message: str
) -> None:
    error = refused(response)
    assert type(error) is kind
    assert (error.exit_code, str(error)) == (code, message)


def test_an_unreachable_receiver_is_an_error_of_exit_code_1() -> None:
    with pytest.raises(ClientError) as raised:
        Api("http://127.0.0.1:9", "t").get_job("j1")  # the discard port: nothing listens
    assert raised.value.exit_code == 1
    assert str(raised.value).startswith("cannot reach receiver at http://127.0.0.1:9: ")


def test_the_web_app_the_worker_and_the_command_load_nothing_of_the_client() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, receiver.app, receiver.worker, receiver.service, receiver.cli; "
            "print(sorted(name for name in sys.modules if name.startswith('receiver.client')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert loaded.stdout == "[]\n", loaded.stderr
