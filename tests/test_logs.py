"""Logs: one structured line per event of interest, never a secret or a payload."""

from __future__ import annotations

import logging

import orjson
import pytest

from receiver.logs import JsonFormatter, TextFormatter
from receiver.settings import Settings
from tests.receiver_app import SEED_CALLBACK, Receiver, make_job


def test_json_formatter_keeps_the_fields() -> None:
    record = logging.makeLogRecord(
        {
            "name": "receiver.x",
            "levelname": "WARNING",
            "levelno": logging.WARNING,
            "msg": "callback rejected",
            "provider": "decodo",
            "reason": "bad_token",
            "job_id": "j1",
        }
    )
    line = orjson.loads(JsonFormatter().format(record))
    assert line["message"] == "callback rejected" and line["level"] == "warning"
    assert (line["provider"], line["reason"], line["job_id"]) == ("decodo", "bad_token", "j1")
    text = TextFormatter("%(message)s").format(record)
    assert text == "callback rejected provider=decodo reason=bad_token job_id=j1"


def test_rejected_callback_is_logged_once_without_token_or_body(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    make_job(receiver, "j1", ["1"])
    secret_marker = "do-not-log-this-payload"
    forged = "eyJmb3JnZWQiOnRydWV9.forged.signature"
    body = {**SEED_CALLBACK, "id": "1", "passthrough": forged, "url": secret_marker}
    with caplog.at_level(logging.INFO):
        response = receiver.post(body)
    assert response.status_code == 401
    rejected = [r for r in caplog.records if r.getMessage() == "callback rejected"]
    assert len(rejected) == 1
    line = JsonFormatter().format(rejected[0])
    assert orjson.loads(line)["reason"] == "bad_token"
    for record in caplog.records:
        formatted = JsonFormatter().format(record)
        assert forged not in formatted and secret_marker not in formatted


def test_settings_repr_hides_secrets() -> None:
    settings = Settings(
        secret_keys=("k-secret",),
        api_token="t-secret",
        decodo_auth="d-secret",
        firecrawl_api_key="f-secret",
        dify_api_key="y-secret",
        firecrawl_webhook_secret="w-secret",
    )
    shown = repr(settings)
    assert not any(
        s in shown for s in ("k-secret", "t-secret", "d-secret", "f-secret", "y-secret", "w-secret")
    )
