"""`receiver run --sandbox`, tried as a newcomer would: one command, then submit and watch.

Real processes throughout: `receiver run --sandbox` on its embedded Redis with the three
provider sandboxes beside it, and the client commands in processes of their own, with
nothing in their environment but where the receiver's data dir is.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, run_cli, wait_for_port


@pytest.fixture
def trial(tmp_path: Path) -> Iterator[tuple[dict[str, str], str]]:
    """The environment the client commands need, and `run --sandbox`'s first lines."""
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PORT": str(port),
        "RECEIVER_DATA_DIR": str(tmp_path / "data"),
    }
    out = tmp_path / "run.out"
    with (
        out.open("w") as sink,
        subprocess.Popen(
            [sys.executable, "-m", "receiver", "run", "--sandbox"],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.STDOUT,
        ) as run,
    ):
        try:
            wait_for_port(port, timeout=60)
            yield env, out.read_text()
        finally:
            run.send_signal(signal.SIGTERM)
            assert run.wait(30) == 0, out.read_text()


def test_run_sandbox_then_submit_and_watch_shows_the_whole_path(
    trial: tuple[dict[str, str], str],
) -> None:
    env, announced = trial
    sandboxes = dict(re.findall(r"(decodo|firecrawl|dify) sandbox on (http://\S+)", announced))
    assert sorted(sandboxes) == ["decodo", "dify", "firecrawl"], announced
    for url in sandboxes.values():  # each is a real server, answering its control route
        assert httpx.get(f"{url}/_sandbox/stats", timeout=10).status_code == 200

    decodo = run_cli(env, "submit", "decodo", "https://ip.decodo.com")
    assert decodo.returncode == 0, decodo.stderr
    firecrawl = run_cli(env, "submit", "firecrawl", "https://a.example/1", "https://a.example/2")
    assert firecrawl.returncode == 0, firecrawl.stderr
    decodo_id, firecrawl_id = json.loads(decodo.stdout)["id"], json.loads(firecrawl.stdout)["id"]

    for job_id, unit in ((decodo_id, "tasks"), (firecrawl_id, "pages")):
        watched = run_cli(env, "watch", job_id, timeout=90)
        assert watched.returncode == 0, watched.stdout + watched.stderr  # 0: completed
        lines = watched.stdout.splitlines()
        assert lines[0].split()[1] == "job.state", lines
        # The job may have ended before watching began: then its snapshot is all there is.
        assert lines[-1].split()[1] in ("job.state", "job.completed"), lines
        assert lines[-1].split()[2] == "completed" and f" {unit} " in lines[-1], lines

    # The Decodo task's results came back by a real callback, then a results fetch.
    results = run_cli(env, "show", decodo_id, "--json")
    assert results.returncode == 0 and '"completed"' in results.stdout, results.stdout
    stats = httpx.get(f"{sandboxes['decodo']}/_sandbox/stats", timeout=10).json()
    assert any(key.startswith("callback") for key in stats), stats
