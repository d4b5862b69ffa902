"""The one command line of the three sandboxes (receiver.sandbox.runner)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from receiver.sandbox.decodo import DecodoSandboxConfig
from receiver.sandbox.dify import DifySandboxConfig
from receiver.sandbox.firecrawl import FirecrawlSandboxConfig
from receiver.sandbox.runner import parse_command
from tests.servers import free_port, wait_for_port

REPOSITORY = Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("name", "port", "config"),
    [
        ("decodo", 9001, DecodoSandboxConfig()),
        ("firecrawl", 9002, FirecrawlSandboxConfig()),
        ("dify", 9003, DifySandboxConfig()),
    ],
)
def test_parse_command_defaults_to_each_sandboxs_port_and_knobs(
    name: str, port: int, config: object
) -> None:
    assert parse_command(name, []) == ("127.0.0.1", port, config)


def test_parse_command_reads_host_port_and_knobs() -> None:
    arguments = ["--host", "0.0.0.0", "--port", "9100", "--scrape-delay", "0.5"]
    host, port, config = parse_command(
        "firecrawl", [*arguments, "--stall", "true", "--credits", "10"]
    )
    assert (host, port) == ("0.0.0.0", 9100)
    assert (config.scrape_delay, config.stall, config.credits) == (0.5, True, 10)


def test_parse_command_refuses_a_knob_value_the_config_refuses() -> None:
    with pytest.raises(SystemExit):
        parse_command("firecrawl", ["--fail-codes", "SCRAPE_BOGUS"])


def test_python_m_firecrawl_serves_with_knobs_from_the_command_line() -> None:
    port = free_port()
    command = [sys.executable, "-m", "receiver.sandbox.firecrawl", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--scrape-delay", "0.5"],
        cwd=REPOSITORY,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        base = f"http://127.0.0.1:{port}"
        config = httpx.get(f"{base}/_sandbox/config", timeout=10).json()
        refused = httpx.get(f"{base}/v2/batch/scrape/x", timeout=10)
    finally:
        process.terminate()
        process.wait(10)
    assert config["scrape_delay"] == 0.5
    assert config["api_key"] == FirecrawlSandboxConfig().api_key
    assert refused.status_code == 401
