"""`python -m benchmarks [--quick] [--cluster]`: the six benchmarks in sequence, each in its
own process; `--cluster` is passed on to those that have it (CLUSTER), the others run as they
would without it.

Each one's progress is shown as it runs; at the end, each one's final JSON line, in order.
"""

from __future__ import annotations

import subprocess
import sys

from benchmarks.common import PYTHON, arguments, child_env, say

BENCHMARKS = ("ingest", "drain", "poll", "footprint", "recovery", "attack_memory")
# Those that also measure on a Redis Cluster with `--cluster`.
CLUSTER = ("ingest", "drain", "poll", "footprint")
# Seconds one benchmark may take, set-up included, before it is stopped.
TIMEOUT = 1800


def run_one(name: str, quick: bool, cluster: bool) -> str:
    """Run `python -m benchmarks.NAME`, echoing its output; its final JSON line."""
    argv = [PYTHON, "-m", f"benchmarks.{name}", *(["--quick"] if quick else [])]
    argv += ["--cluster"] if cluster and name in CLUSTER else []
    process = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, text=True)
    last = ""
    try:
        assert process.stdout is not None
        for line in process.stdout:
            print(line, end="", flush=True)
            if line.strip():
                last = line.strip()
        process.wait(TIMEOUT)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)
    if process.returncode != 0 or not last.startswith("{"):
        return f'{{"benchmark": "{name}", "error": "exited with {process.returncode}"}}'
    return last


def main() -> None:
    args = arguments("run every benchmark in sequence", cluster=True)
    results = []
    for name in BENCHMARKS:
        say(f"== {name}")
        results.append(run_one(name, args.quick, args.cluster))
    say("== results")
    for line in results:
        print(line, flush=True)
    sys.exit(0 if all('"error"' not in line for line in results) else 1)


if __name__ == "__main__":
    main()
