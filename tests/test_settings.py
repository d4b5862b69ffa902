"""Settings: read from the environment, and refused when no process can serve with them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from receiver.errors import ConfigError
from receiver.settings import Settings
from tests.servers import RedisProcess, free_port

SHORT_TOKENS = {"RECEIVER_TOKEN_MAX_AGE": "3600"}  # 1 h, below Decodo's 24 h retention


def receiver_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    env.update(values)
    return env


def run_receiver(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`receiver COMMAND` to its end; one still serving after 30 s fails the test, and is
    stopped with SIGTERM, so that it stops the embedded redis-server it may have started."""
    process = subprocess.Popen(
        [sys.executable, "-m", "receiver", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
        pytest.fail(f"`receiver {command}` started instead of refusing its settings")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_from_env_reads_the_token_max_age_and_retention() -> None:
    settings = Settings.from_env(
        {"RECEIVER_TOKEN_MAX_AGE": "90000", "RECEIVER_PROVIDER_RETENTION": "86400"}
    )
    assert (settings.token_max_age, settings.provider_retention) == (90000.0, 86400.0)
    settings.check()


def test_check_accepts_the_defaults_in_both_modes() -> None:
    Settings().check()
    Settings(redis_url="redis://127.0.0.1:1/0").check()


@pytest.mark.parametrize("redis_url", [None, "redis://127.0.0.1:1/0"])
def test_check_refuses_tokens_shorter_than_the_retention(redis_url: str | None) -> None:
    settings = Settings.from_env(
        {**SHORT_TOKENS, **({"REDIS_URL": redis_url} if redis_url else {})}
    )
    assert settings.embedded is (redis_url is None)
    with pytest.raises(ConfigError, match="RECEIVER_TOKEN_MAX_AGE"):
        settings.check()


def test_check_accepts_tokens_exactly_as_long_as_the_retention() -> None:
    Settings(token_max_age=86400.0, provider_retention=86400.0).check()
    with pytest.raises(ConfigError):
        Settings(token_max_age=86399.0, provider_retention=86400.0).check()


def test_run_embedded_refuses_tokens_shorter_than_the_retention(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = receiver_env(PORT=str(free_port()), RECEIVER_DATA_DIR=str(data), **SHORT_TOKENS)
    result = run_receiver("run", env)
    assert result.returncode != 0
    assert "RECEIVER_TOKEN_MAX_AGE" in result.stderr
    assert not data.exists()  # refused before any secret or redis-server was made


@pytest.mark.parametrize("command", ["web", "worker"])
def test_external_redis_refuses_tokens_shorter_than_the_retention(
    redis_process: RedisProcess, command: str
) -> None:
    env = receiver_env(
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS="k",
        RECEIVER_API_TOKEN="t",
        PORT=str(free_port()),
        **SHORT_TOKENS,
    )
    result = run_receiver(command, env)
    assert result.returncode != 0
    assert "RECEIVER_TOKEN_MAX_AGE" in result.stderr
