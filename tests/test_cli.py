"""The `receiver` command as a user runs it: real processes."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import redis as sync_redis

from receiver.sandbox import firecrawl as firecrawl_sandbox
from receiver.sandbox.decodo import DEFAULT_AUTH
from tests.e2e import decodo_sandbox_server
from tests.servers import (
    RedisProcess,
    consecutive_free_ports,
    free_port,
    run_cli,
    serve_app,
    wait_for_port,
)


def receiver_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "RECEIVER_"))}
    env.update(values)
    return env


@contextlib.contextmanager
def running(command: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """`receiver COMMAND` as a child process with its stdout piped; stopped at the end."""
    with subprocess.Popen(
        [sys.executable, "-m", "receiver", command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            yield process
        finally:
            process.terminate()
            process.wait(20)


def read_until(process: subprocess.Popen[str], pattern: str, timeout: float = 20) -> str:
    """Lines of the process's stdout up to the one matching pattern; that line's match."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        found = re.search(pattern, line)
        if found:
            return found.group(1)
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no line matched {pattern!r}")


def test_run_embedded_serves_the_single_task_flow(tmp_path: Path) -> None:
    port = free_port()
    with decodo_sandbox_server() as sandbox:
        env = receiver_env(
            PORT=str(port),
            RECEIVER_DATA_DIR=str(tmp_path / "data"),
            RECEIVER_PUBLIC_URL=f"http://127.0.0.1:{port}",
            DECODO_BASE_URL=sandbox,
            DECODO_AUTH=DEFAULT_AUTH,
        )
        with running("run", env) as process:
            callback_url = read_until(process, r"callback URL\s+(\S+)")
            health_url = read_until(process, r"health URL\s+(\S+)")
            token = read_until(process, r"API token\s+(\S+)")
            wait_for_port(port)
            api = f"http://127.0.0.1:{port}"
            assert callback_url == f"{api}/callbacks/decodo"
            assert health_url == f"{api}/healthz"
            assert httpx.get(health_url, timeout=10).status_code == 200
            headers = {"Authorization": f"Bearer {token}"}
            created = httpx.post(
                f"{api}/jobs",
                headers=headers,
                timeout=10,
                json={"provider": "decodo", "url": "https://ip.decodo.com"},
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["id"]
            deadline = time.monotonic() + 30
            while (job := httpx.get(f"{api}/jobs/{job_id}", headers=headers, timeout=10).json())[
                "status"
            ] != "completed":
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            assert httpx.get(f"{api}/readyz", timeout=10).status_code == 200
            redis_pid = orjson.loads((tmp_path / "data" / "redis.json").read_bytes())["pid"]
    secrets = orjson.loads((tmp_path / "data" / "secrets.json").read_bytes())
    assert secrets["api_token"] == token
    assert (tmp_path / "data" / "secrets.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
    assert not (tmp_path / "data" / "redis.json").exists()
    with pytest.raises(ProcessLookupError):  # the embedded redis-server stopped with us
        os.kill(redis_pid, 0)


def test_run_embedded_keeps_its_secrets_across_restarts(tmp_path: Path) -> None:
    tokens = []
    for _ in range(2):
        env = receiver_env(PORT=str(free_port()), RECEIVER_DATA_DIR=str(tmp_path))
        with running("run", env) as process:
            tokens.append(read_until(process, r"API token\s+(\S+)"))
    assert tokens[0] == tokens[1]


def test_web_and_worker_refuse_to_start_without_secrets(redis_process: RedisProcess) -> None:
    for command in ("web", "worker"):
        for missing in ("RECEIVER_SECRET_KEYS", "RECEIVER_API_TOKEN"):
            values = {
                "REDIS_URL": redis_process.url,
                "RECEIVER_SECRET_KEYS": "k9Xq2mT7vR4wZp8L",
                "RECEIVER_API_TOKEN": "t3Fh8Jk1Nq6Ws0Yb",
            }
            del values[missing]
            result = run_cli(receiver_env(**values), command, timeout=30)
            assert result.returncode != 0
            assert missing in result.stderr
            assert "k" not in result.stderr.replace(missing, "").split()


# Every command that talks to a running receiver, with what it needs.
CLIENT_COMMANDS = (
    ("show", "j1"),
    ("jobs",),
    ("watch", "j1"),
    ("cancel", "j1"),
    ("retry", "j1"),
    ("submit", "decodo", "https://a.example"),
    ("track", "firecrawl", "b1"),
)


def client_run(
    env: dict[str, str], cwd: Path, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """`receiver ARGS` run in `cwd`."""
    command = [sys.executable, "-m", "receiver", *args]
    return subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_client_commands_read_the_data_dirs_token_and_never_write_one(tmp_path: Path) -> None:
    """`receiver run` in its data dir; the client commands in an empty directory elsewhere:
    with RECEIVER_DATA_DIR they use its token, without it (nor RECEIVER_API_TOKEN) they say
    what to set. Either way they write nothing: a token they made would be refused."""
    port = free_port()
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    elsewhere.mkdir()
    server_env = receiver_env(PORT=str(port), RECEIVER_DATA_DIR=str(data))
    client_env = receiver_env(RECEIVER_URL=f"http://127.0.0.1:{port}")
    with running("run", server_env) as process:
        read_until(process, r"API token\s+(\S+)")
        wait_for_port(port)
        secrets = (data / "secrets.json").read_bytes()
        listed = client_run({**client_env, "RECEIVER_DATA_DIR": str(data)}, elsewhere, "jobs")
        refused = [client_run(client_env, elsewhere, *command) for command in CLIENT_COMMANDS]
        missing = tmp_path / "missing"
        nowhere = client_run({**client_env, "RECEIVER_DATA_DIR": str(missing)}, elsewhere, "jobs")
    assert listed.returncode == 0, listed.stderr
    assert " ".join(listed.stdout.split()) == "id provider status progress created (UTC) error"
    for answer in [*refused, nowhere]:
        assert answer.returncode == 1, answer.stderr
        assert "RECEIVER_API_TOKEN" in answer.stderr and "RECEIVER_DATA_DIR" in answer.stderr
        assert "401" not in answer.stderr
    assert str(elsewhere / ".receiver") in refused[0].stderr
    assert list(elsewhere.iterdir()) == [] and not missing.exists()
    assert (data / "secrets.json").read_bytes() == secrets


def test_client_commands_on_an_external_redis_say_to_set_the_token(tmp_path: Path) -> None:
    env = receiver_env(REDIS_URL="redis://127.0.0.1:9/0", RECEIVER_URL="http://127.0.0.1:9")
    answer = client_run(env, tmp_path, "show", "j1")
    assert answer.returncode == 1
    assert answer.stderr == "Error: no API token: set RECEIVER_API_TOKEN to the receiver's token\n"
    assert list(tmp_path.iterdir()) == []


def test_submit_and_show_through_the_cli(redis_process: RedisProcess) -> None:
    port = free_port()
    env = receiver_env(
        REDIS_URL=redis_process.url,
        RECEIVER_SECRET_KEYS="k9Xq2mT7vR4wZp8L",
        RECEIVER_API_TOKEN="cli-token-2b7e5d9a",
        PORT=str(port),
        DECODO_AUTH=DEFAULT_AUTH,  # POST /jobs refuses a provider without its credentials
    )
    with running("web", env):
        wait_for_port(port)
        submitted = run_cli(
            env,
            "submit",
            "decodo",
            "https://a.example",
            "https://b.example",
            "--target",
            "universal",
            "--param",
            "parse=true",
            timeout=30,
        )
        assert submitted.returncode == 0, submitted.stderr
        job = orjson.loads(submitted.stdout)
        assert job["request"] == {
            "items": 2,
            "key": "url",
            "params": {"target": "universal", "parse": True},
        }
        shown = run_cli(env, "show", job["id"], "--json", timeout=30)
        assert orjson.loads(shown.stdout)["id"] == job["id"]
        missing = run_cli(env, "show", "nope", timeout=30)
        assert missing.returncode != 0 and "404" in missing.stderr


def test_submit_firecrawl_through_the_cli_polls_the_batch_to_the_end(
    redis_process: RedisProcess,
) -> None:
    sync_redis.Redis.from_url(redis_process.url).flushall()
    config = firecrawl_sandbox.FirecrawlSandboxConfig(seed=3, scrape_delay=0.01)
    port = free_port()
    with serve_app(firecrawl_sandbox.create_app(config)) as sandbox:
        env = receiver_env(
            REDIS_URL=redis_process.url,
            RECEIVER_SECRET_KEYS="k9Xq2mT7vR4wZp8L",
            RECEIVER_API_TOKEN="cli-token-2b7e5d9a",
            PORT=str(port),
            FIRECRAWL_BASE_URL=sandbox,
            FIRECRAWL_API_KEY=config.api_key,
            RECEIVER_POLL_MIN="0.05",
            RECEIVER_POLL_MAX="0.3",
        )
        with running("run", env):
            wait_for_port(port)
            urls = ["https://a.example/one", "https://a.example/two"]
            submitted = run_cli(
                env,
                "submit",
                "firecrawl",
                *urls,
                "--format",
                "markdown",
                "--format",
                "links",
                "--param",
                "ignoreInvalidURLs=true",
                "https://intranet-host/page",
                timeout=30,
            )
            assert submitted.returncode == 0, submitted.stderr
            job = orjson.loads(submitted.stdout)
            assert job["provider"] == "firecrawl"
            deadline = time.monotonic() + 30
            while job["status"] not in ("completed", "failed", "cancelled", "expired"):
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
                shown = run_cli(env, "show", job["id"], "--json", timeout=30)
                job = orjson.loads(shown.stdout)
            assert job["status"] == "completed", job
            assert job["documents"] == 2 and job["external"]["batch_id"]
            # --param's JSON `true` reached Firecrawl, which skipped the URL without a TLD.
            assert job["invalid_urls"] == ["https://intranet-host/page"]
            results = httpx.get(
                f"http://127.0.0.1:{port}/jobs/{job['id']}/results",
                headers={"Authorization": "Bearer cli-token-2b7e5d9a"},
                timeout=10,
            ).json()["results"]
    documents = sorted(results.values(), key=lambda doc: doc["metadata"]["sourceURL"])
    assert [doc["metadata"]["sourceURL"] for doc in documents] == sorted(urls)
    # Both --format values reached Firecrawl: each document has markdown and links.
    assert all({"markdown", "links"} <= set(doc) for doc in documents), documents


def test_sandbox_all_serves_the_three_providers_on_consecutive_ports() -> None:
    port = consecutive_free_ports(3)
    with subprocess.Popen(
        [sys.executable, "-m", "receiver", "sandbox", "all", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            for offset in range(3):  # a cold start imports all three: give it time
                wait_for_port(port + offset, timeout=60)
            base = "http://127.0.0.1"
            decodo = httpx.get(f"{base}:{port}/v3/task/1", timeout=10)
            firecrawl = httpx.get(f"{base}:{port + 1}/v2/batch/scrape/x", timeout=10)
            dataset = "00000000-0000-4000-8000-000000000000"
            dify = httpx.get(
                f"{base}:{port + 2}/v1/datasets/{dataset}/documents/1/indexing-status", timeout=10
            )
            assert [decodo.status_code, firecrawl.status_code, dify.status_code] == [401] * 3
        finally:
            process.terminate()
            process.wait(20)


def test_sandbox_knobs_reach_the_one_provider() -> None:
    port = free_port()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver",
            "sandbox",
            "decodo",
            "--port",
            str(port),
            "--drop-rate",
            "0.25",
            "--batch-max-items",
            "7",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            wait_for_port(port)
            config = httpx.get(f"http://127.0.0.1:{port}/_sandbox/config", timeout=10).json()
            assert (config["drop_rate"], config["batch_max_items"]) == (0.25, 7)
        finally:
            process.terminate()
            process.wait(20)
