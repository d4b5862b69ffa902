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
        RECEIVER_SECRET_KEYS="k9Xq2mT7vR4wZp8L",
        RECEIVER_API_TOKEN="t3Fh8Jk1Nq6Ws0Yb",
        PORT=str(free_port()),
        **SHORT_TOKENS,
    )
    result = run_receiver(command, env)
    assert result.returncode != 0
    assert "RECEIVER_TOKEN_MAX_AGE" in result.stderr


STRONG = "t3Fh8Jk1Nq6Ws0Yb"


@pytest.mark.parametrize(
    ("token", "said"),
    [
        ("x", "shorter than 16"),
        ("change-me-too", "shorter than 16"),
        ("change-me-please-now", "placeholder"),
        ("my-example-token-123", "placeholder"),
        ("SuperSecretToken12345", "placeholder"),
        ("aaaaaaaaaaaaaaaaaaaa", "too few characters"),
        ("abababababababababab", "too few characters"),
    ],
)
def test_weak_secrets_are_refused_without_being_echoed(token: str, said: str) -> None:
    for settings, name in (
        (Settings(redis_url="redis://r", secret_keys=(STRONG,), api_token=token), "API_TOKEN"),
        (Settings(redis_url="redis://r", secret_keys=(STRONG, token), api_token=STRONG), "KEYS"),
    ):
        with pytest.raises(ConfigError) as refused:
            settings.require_secrets()
        assert name in str(refused.value) and said in str(refused.value)
        assert token not in str(refused.value)


def test_strong_secrets_are_accepted() -> None:
    Settings(redis_url="redis://r", secret_keys=(STRONG,), api_token=STRONG[::-1]).require_secrets()


def test_a_weak_token_stops_receiver_web_with_the_reason(redis_process: RedisProcess) -> None:
    env = receiver_env(
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS=STRONG,
        RECEIVER_API_TOKEN="change-me-too",
        PORT=str(free_port()),
    )
    result = run_receiver("web", env)
    assert result.returncode != 0
    assert "RECEIVER_API_TOKEN is shorter than 16 characters" in result.stderr
    assert "change-me-too" not in result.stderr + result.stdout


def test_repr_hides_the_redis_password_and_every_secret() -> None:
    settings = Settings(
        redis_url="redis://user:hunter2-password@10.0.0.5:6380/2",
        secret_keys=("key-one-0123456789",),
        api_token="token-0123456789ab",
        decodo_auth="basic-0123456789",
    )
    shown = repr(settings)
    assert "redis://user:***@10.0.0.5:6380/2" in shown
    for secret in ("hunter2", "key-one", "token-0123", "basic-0123"):
        assert secret not in shown
    assert repr(Settings(redis_url="redis://127.0.0.1:6379/0")).startswith(
        "Settings(redis_url='redis://127.0.0.1:6379/0', "
    )


def test_from_env_reads_the_connection_and_stream_limits() -> None:
    settings = Settings.from_env(
        {
            "RECEIVER_MAX_HEADER_SIZE": "8192",
            "RECEIVER_HEADER_TIMEOUT": "2.5",
            "RECEIVER_BODY_TIMEOUT": "20",
            "RECEIVER_MAX_CONNECTIONS": "1000",
            "RECEIVER_MAX_STREAMS": "50",
        }
    )
    assert settings.max_header_size == 8192
    assert (settings.header_timeout, settings.body_timeout) == (2.5, 20.0)
    assert (settings.max_connections, settings.max_streams) == (1000, 50)
    defaults = Settings.from_env({})
    assert (defaults.max_header_size, defaults.max_connections, defaults.max_streams) == (
        16384,
        4096,
        500,
    )
    assert (defaults.header_timeout, defaults.body_timeout) == (5.0, 10.0)


def test_allowed_hosts_default_to_the_public_name_and_loopback() -> None:
    env = {"RECEIVER_PUBLIC_URL": "https://Receiver.Example.com:8443/base"}
    assert Settings.from_env(env).hosts() == frozenset(
        {"receiver.example.com", "localhost", "127.0.0.1", "::1"}
    )
    bound = Settings.from_env({**env, "RECEIVER_HOST": "10.1.2.3"}).hosts()
    assert bound is not None and "10.1.2.3" in bound
    for wildcard in ("0.0.0.0", "::"):
        hosts = Settings.from_env({**env, "RECEIVER_HOST": wildcard}).hosts()
        assert hosts is not None and wildcard not in hosts


def test_allowed_hosts_are_read_as_names_or_a_star() -> None:
    env = {"RECEIVER_ALLOWED_HOSTS": " API.internal , [::1], receiver.example.com., ,"}
    names = frozenset({"api.internal", "::1", "receiver.example.com"})
    assert Settings.from_env(env).hosts() == names | {"127.0.0.1"}  # the public URL's
    public = {**env, "RECEIVER_PUBLIC_URL": "https://hooks.example.org"}
    assert Settings.from_env(public).hosts() == names | {"hooks.example.org"}
    assert Settings.from_env({"RECEIVER_ALLOWED_HOSTS": "*"}).hosts() is None
    assert Settings.from_env({"RECEIVER_ALLOWED_HOSTS": "a.example,*"}).hosts() is None


def test_from_env_reads_the_web_workers_at_least_one() -> None:
    assert Settings.from_env({"RECEIVER_WEB_WORKERS": "4"}).web_workers == 4
    assert Settings.from_env({"RECEIVER_WEB_WORKERS": "0"}).web_workers == 1
    assert Settings.from_env({}).web_workers == 1
    with pytest.raises(ConfigError, match="RECEIVER_WEB_WORKERS must be a number"):
        Settings.from_env({"RECEIVER_WEB_WORKERS": "two"})
