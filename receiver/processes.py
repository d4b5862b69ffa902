"""Several web processes on one port (`receiver web --workers N`).

The parent binds the port once and hands the socket to N children spawned by uvicorn's
supervisor (multiprocessing's spawn: fresh interpreters, nothing of the parent's memory or
sockets but the listening one). The kernel gives each new connection to one child; a child
that dies is replaced, its queued connections wait in the socket's backlog meanwhile.
Each child builds its app, its Redis connections, its connection limits and its logging
itself, from the settings the parent prepared (pickled to it, not put in its environment).

This module is what the parent imports: nothing of the app, and no metric, is loaded in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from receiver.errors import ConfigError
from receiver.logs import configure_logging
from receiver.settings import Settings

log = logging.getLogger(__name__)

METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Seconds a child has to answer the supervisor's ping (from a thread of its own) before it
# is killed as hung and replaced; above uvicorn's 5, for a child starting on a busy host.
HEALTHCHECK_TIMEOUT = 15
# prometheus_client's files: <kind>_<pid>.db, e.g. counter_4242.db, gauge_livesum_4242.db.
_METRICS_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")
_PR_SET_PDEATHSIG = 1  # prctl(2)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options of every web process, one or several (the app and the protocol
    aside)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "ws": "none",  # no route is a WebSocket
        "log_level": "warning",
        # Uvicorn's loggers propagate to the root handler of configure_logging: one format,
        # JSON included, rather than uvicorn's own plain-text handlers.
        "log_config": None,
        "lifespan": "on",
        "proxy_headers": False,
        "access_log": False,
        "server_header": False,
        # Requests in flight get this long to finish on SIGTERM; open event streams are
        # then cut, and their clients resume with Last-Event-ID.
        "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout)),
    }


class ChildConfig(uvicorn.Config):
    """The config sent to each child: it carries the settings, and the app and its
    GuardedProtocol are built when uvicorn loads the config, in the child."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings  # before uvicorn's __init__, which configures logging
        super().__init__(
            "receiver.service:web_app",  # for show: load_app builds it from the settings
            workers=workers,
            timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT,
            **uvicorn_options(settings),
        )

    def configure_logging(self) -> None:
        super().configure_logging()
        configure_logging(self.settings.log_format)

    def load(self) -> None:
        from receiver.service import connection_limits, guarded_protocol

        _die_with_parent()
        self.http = guarded_protocol(connection_limits(self.settings))
        super().load()

    def load_app(self) -> Any:
        from receiver.service import web_app

        return web_app(self.settings)


def _die_with_parent() -> None:
    """SIGTERM this child when its parent dies, even by SIGKILL (Linux): no child of a
    killed supervisor stays behind, serving on its port."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


class Supervisor(Multiprocess):
    """uvicorn's supervisor (ping, replace the dead or hung, SIGTERM to all on SIGTERM or
    SIGINT, SIGHUP to replace them one by one), which also tells prometheus_client of each
    child that ended, and stops listening before it stops its children."""

    def keep_subprocess_alive(self) -> None:
        with self._reaping():
            super().keep_subprocess_alive()

    def handle_signals(self) -> None:
        with self._reaping():
            super().handle_signals()

    @contextlib.contextmanager
    def _reaping(self) -> Iterator[None]:
        before = list(self.processes)
        yield
        for process in before:
            if process not in self.processes or process.exitcode is not None:
                _ended(process)

    def terminate_all(self) -> None:
        # The children keep their copies of the socket until they stop listening: after
        # that, a connection is refused, as with one process, not left in the backlog.
        for sock in self.sockets:
            sock.close()
        super().terminate_all()

    def join_all(self) -> None:
        super().join_all()
        for process in self.processes:
            if process.pid is not None:
                mark_dead(process.pid)

    @property
    def failed_to_start(self) -> bool:
        return any(process.exitcode == STARTUP_FAILURE for process in self.processes)


def _ended(process: Process) -> None:
    if process.pid is None:
        return
    if process.exitcode not in (0, -signal.SIGTERM):
        log.warning(
            "web worker process ended", extra={"pid": process.pid, "exitcode": process.exitcode}
        )
    mark_dead(process.pid)


def mark_dead(pid: int, directory: Path | None = None) -> None:
    """Drop a dead process's live gauges (open event streams) from the metrics directory
    (by default PROMETHEUS_MULTIPROC_DIR); its counters stay in the sums."""
    from prometheus_client import multiprocess

    path = str(directory) if directory else None
    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def serve_workers(settings: Settings, workers: int) -> None:
    """Serve the web app from `workers` child processes on one port until SIGTERM or
    SIGINT, with their metrics added up; ConfigError when a child could not start."""
    with metrics_directory():
        config = ChildConfig(settings, workers)
        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        log.info("web workers starting", extra={"workers": workers, "parent": os.getpid()})
        supervisor.run()
    if supervisor.failed_to_start:
        raise ConfigError("a web worker process failed to start (see its log above)")


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """PROMETHEUS_MULTIPROC_DIR for the children: the one given, emptied when no live
    process uses it, else a private one made here and removed on the way out."""
    given = os.environ.get(METRICS_DIR_VARIABLE)
    if given:
        empty_unused(Path(given))
        yield Path(given)
        return
    made = Path(tempfile.mkdtemp(prefix="receiver-metrics-"))
    os.environ[METRICS_DIR_VARIABLE] = str(made)  # the children inherit it when spawned
    try:
        yield made
    finally:
        del os.environ[METRICS_DIR_VARIABLE]
        shutil.rmtree(made, ignore_errors=True)


def empty_unused(directory: Path) -> None:
    """Remove the metrics files of a directory (prometheus_client wants it empty at start)
    when none belongs to a live process: other processes of the host (a worker, another
    web) may share it, and their files must stay. Only the live gauges of dead processes
    are dropped then. Files that are not prometheus_client's are never touched."""
    files = {path: int(found[1]) for path in directory.glob("*.db") if (found := _match(path))}
    live = sorted({pid for pid in files.values() if _alive(pid)})
    if live:
        log.warning(
            "PROMETHEUS_MULTIPROC_DIR is in use by live processes: not emptied",
            extra={"directory": str(directory), "pids": live},
        )
        for pid in set(files.values()) - set(live):
            mark_dead(pid, directory)
        return
    for path in files:
        path.unlink(missing_ok=True)


def _match(path: Path) -> re.Match[str] | None:
    return _METRICS_FILE.match(path.name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
