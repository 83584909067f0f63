"""Task logs: what each attempt wrote, kept per (run, task, attempt).

Design: a **batched table** (``task_logs``, migration 0013), written by one
background writer per worker process. A handler's ``print()``/``sys.stdout``/
``sys.stderr`` writes, its ``ctx.log`` records and a ``shell`` command's
output are cut into lines and appended to the attempt's in-memory buffer
(:class:`AttemptLog`); the writer collects the buffers every
``flush_interval_s`` (or sooner once ``batch_lines`` lines wait) and stores
them as chunks of whole lines with one multi-row ``INSERT … SELECT unnest``.
When an attempt ends, the worker waits (bounded) for that attempt's last lines
to be stored before its outcome is committed, so ``show`` of a failed run
finds its tail — an attempt that wrote nothing waits for nothing.

Why a table rather than files referenced from the attempt: the database is
the one thing every process (worker, API, CLI on another host) already
shares, so ``orchestrator logs``, the API and ``show`` read logs anywhere
without a shared volume; retention deletes them with their run in the same
batched statement; and batching keeps the cost off the hot transition path
(no statement per line, no write inside the transition transaction).

Capture works through a context variable set for the attempt's task (copied
into threads running sync handlers and into tasks a handler starts):
``sys.stdout``/``sys.stderr`` are replaced once per process by proxies that
send writes made inside an attempt to its log and everything else to the real
stream. Each attempt's log is capped (``ORCHESTRATOR_TASK_LOG_MAX_BYTES``);
the cut is marked by a ``meta`` line. Secret values known to the attempt are
replaced by ``***`` before a line is kept.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import logging
import sys
import threading
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from orchestrator.store import SQL, Database

log = logging.getLogger(__name__)

LOG, STDOUT, STDERR, META = "log", "stdout", "stderr", "meta"
STREAMS = (LOG, STDOUT, STDERR, META)
MASK = "***"

_CHUNK_CHARS = 64 * 1024
"""Largest body of one stored chunk (consecutive lines of one stream)."""
_MAX_PARTIAL = 16 * 1024
"""A line without its newline is kept back until this long, then stored as is."""
_FLUSH_RETRIES = 3

CURRENT: ContextVar[AttemptLog | None] = ContextVar("orchestrator_task_log", default=None)
"""The log of the attempt the current task (or thread) runs for."""

_passthrough = threading.local()


def current() -> AttemptLog | None:
    return CURRENT.get()


def mask(text: str, secrets: frozenset[str] | set[str]) -> str:
    # Longest first: a secret that contains another is masked whole.
    for value in sorted(secrets, key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, MASK)
    return text


def protect(values: Iterable[str]) -> None:
    """Mask ``values`` (secrets) in everything the current attempt leaves behind:
    its captured log, and through :func:`mask_current` its error and output."""
    attempt = CURRENT.get()
    if attempt is None:
        return
    for value in values:
        if value:
            # As written, and as it appears inside JSON text.
            attempt.secrets.add(value)
            attempt.secrets.add(json.dumps(value)[1:-1])


def mask_current(text: str) -> str:
    """``text`` with the current attempt's secrets masked."""
    attempt = CURRENT.get()
    if attempt is None or not attempt.secrets:
        return text
    return mask(text, attempt.secrets)


def holds_secret(value: Any) -> bool:
    """Whether ``value`` (as JSON) holds one of the current attempt's secrets."""
    attempt = CURRENT.get()
    if attempt is None or not attempt.secrets:
        return False
    text = json.dumps(value, default=str)
    return any(secret and secret in text for secret in attempt.secrets)


def mask_outcome(fields: dict[str, Any]) -> dict[str, Any]:
    """An attempt's outcome (error, reason, JSON output) with its secrets masked."""
    attempt = CURRENT.get()
    if attempt is None or not attempt.secrets:
        return fields
    out = dict(fields)
    for key in ("error", "reason"):
        if isinstance(out.get(key), str):
            out[key] = mask(out[key], attempt.secrets)
    output = out.get("output")
    if isinstance(output, str):
        masked = mask(output, attempt.secrets)
        if masked != output:
            try:
                json.loads(masked)
            except ValueError:
                masked = json.dumps(f"{MASK} (the output held a secret and is withheld)")
            out["output"] = masked
    return out


class AttemptLog:
    """One attempt's lines waiting to be stored; writable from any thread.

    Entered (``with``), it is the current attempt's log for the code inside.
    Cheap to make and to end when nothing is written: every attempt has one.
    """

    __slots__ = (
        "_decoders",
        "_lines",
        "_lock",
        "_partial",
        "_token",
        "attempt",
        "cut",
        "dropped",
        "finished",
        "marked",
        "max_bytes",
        "run_id",
        "secrets",
        "task_id",
        "used",
        "writer",
    )

    def __init__(
        self,
        writer: TaskLogWriter | None,
        run_id: int,
        task_id: str,
        attempt: int,
        *,
        max_bytes: int,
    ) -> None:
        self.writer = writer
        self.run_id = run_id
        self.task_id = task_id
        self.attempt = attempt
        self.max_bytes = max_bytes
        # Values replaced by ``***`` in every line (see :mod:`orchestrator.secrets`).
        self.secrets: set[str] = set()
        self.used = 0
        self.dropped = 0
        self.cut = False
        self.finished = False
        self.marked = False  # handed to the writer at least once
        self._lines: list[tuple[str, str]] = []
        self._partial: dict[str, str] = {}
        self._decoders: dict[str, codecs.IncrementalDecoder] = {}
        self._lock = threading.Lock()
        self._token: Any = None

    def __enter__(self) -> AttemptLog:
        self._token = CURRENT.set(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        CURRENT.reset(self._token)

    # -- writing -------------------------------------------------------------------

    def write(self, stream: str, text: str) -> None:
        """Append ``text`` (any part of a line, or many lines) to ``stream``."""
        if not text:
            return
        with self._lock:
            if self.cut:
                self.dropped += len(text)
                return
            data = self._partial.pop(stream, "") + text
            *lines, rest = data.split("\n")
            if len(rest) >= _MAX_PARTIAL:
                lines.append(rest)
                rest = ""
            if rest:
                self._partial[stream] = rest
            for line in lines:
                self._add(stream, line)
        if lines:
            self._dirty(len(lines))

    def write_bytes(self, stream: str, data: bytes) -> None:
        """Append raw output (a subprocess pipe), decoded as UTF-8."""
        decoder = self._decoders.get(stream)
        if decoder is None:
            decoder = self._decoders[stream] = codecs.getincrementaldecoder("utf-8")("replace")
        self.write(stream, decoder.decode(data))

    def record(self, level: int, message: str) -> None:
        """A ``ctx.log`` record: one line per line of its message."""
        name = logging.getLevelName(level)
        with self._lock:
            if self.cut:
                self.dropped += len(message)
                return
            for line in message.split("\n"):
                self._add(LOG, f"{name} {line}")
        self._dirty(1)

    def finish(self) -> None:
        """Store what is left of unfinished lines; the attempt has ended."""
        if not (self._partial or self._decoders or self.dropped):
            self.finished = True
            return
        with self._lock:
            for stream, decoder in self._decoders.items():
                tail = decoder.decode(b"", final=True)
                if tail:
                    self._partial[stream] = self._partial.get(stream, "") + tail
            for stream, rest in self._partial.items():
                if self.cut:
                    self.dropped += len(rest)
                else:
                    self._add(stream, rest)
            self._partial.clear()
            if self.dropped and not self.finished:
                self._lines.append((META, f"[{self.dropped} more characters were dropped]"))
            self.finished = True
        self._dirty(1)

    def _add(self, stream: str, line: str) -> None:
        if self.secrets:
            line = mask(line, self.secrets)
        size = len(line.encode("utf-8", "replace")) + 1
        if self.used + size > self.max_bytes:
            self.cut = True
            self.dropped += size
            self._lines.append(
                (
                    META,
                    f"[log cut: this attempt's log reached its limit of {self.max_bytes} "
                    "bytes (ORCHESTRATOR_TASK_LOG_MAX_BYTES); further output is dropped]",
                )
            )
            return
        self.used += size
        self._lines.append((stream, line))

    def _dirty(self, count: int) -> None:
        # An attempt that wrote nothing costs the writer (and its end) nothing.
        if self.writer is not None and self._lines:
            self.marked = True
            self.writer.mark_dirty(self, count)

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            lines, self._lines = self._lines, []
        return lines

    @property
    def pending(self) -> bool:
        return bool(self._lines)


class TaskLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``ctx.log``: records go to the process's logging as before and, at INFO
    and above, to the attempt's log."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        attempt = CURRENT.get()
        if attempt is not None and attempt.secrets:
            # The process's own log must not show a secret either.
            try:
                msg, args = mask(str(msg) % args if args else str(msg), attempt.secrets), ()
            except (TypeError, ValueError):
                msg, args = mask(f"{msg} {args}", attempt.secrets), ()
        if attempt is not None and level >= logging.INFO:
            try:
                text = str(msg) % args if args else str(msg)
            except (TypeError, ValueError):
                text = f"{msg} {args}"
            exc_info = kwargs.get("exc_info")
            if exc_info:
                import traceback

                if isinstance(exc_info, BaseException):
                    exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
                elif not isinstance(exc_info, tuple):
                    exc_info = sys.exc_info()
                if exc_info[0] is not None:
                    text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
            attempt.record(level, text)
        # A handler of the process that writes to sys.stderr must not be captured twice.
        _passthrough.on = True
        try:
            super().log(level, msg, *args, **kwargs)
        finally:
            _passthrough.on = False


# --- stdout / stderr ----------------------------------------------------------------


class _Stdio:
    """Stands in for ``sys.stdout``/``sys.stderr``: writes made inside an
    attempt go to its log, all others to the real stream."""

    def __init__(self, stream: str, real: TextIO) -> None:
        self._stream = stream
        self._real = real

    def write(self, text: str) -> int:
        attempt = CURRENT.get()
        if attempt is None or getattr(_passthrough, "on", False):
            return self._real.write(text)
        attempt.write(self._stream, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if CURRENT.get() is None:
            self._real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def install_stdio() -> None:
    """Put the capturing proxies in place (again, if something replaced them)."""
    for name, stream in (("stdout", STDOUT), ("stderr", STDERR)):
        present = getattr(sys, name)
        if not isinstance(present, _Stdio):
            setattr(sys, name, _Stdio(stream, present))


# --- the writer --------------------------------------------------------------------


class TaskLogWriter:
    """Stores the lines of this process's attempts in batches."""

    def __init__(
        self,
        db: Database,
        *,
        max_bytes: int,
        flush_interval_s: float = 0.2,
        batch_lines: int = 2000,
        final_wait_s: float = 5.0,
    ) -> None:
        self.db = db
        self.max_bytes = max_bytes
        self.flush_interval_s = flush_interval_s
        self.batch_lines = batch_lines
        self.final_wait_s = final_wait_s
        self._dirty: set[AttemptLog] = set()
        self._dirty_lock = threading.Lock()
        self._waiting_lines = 0
        self._retry: list[tuple[list[Any], int]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        install_stdio()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._task = asyncio.create_task(self._run(), name="task-log-writer")

    async def stop(self) -> None:
        """Store everything still buffered (one try), then end."""
        self._stopping = True
        self._wake.set()
        self._urgent.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def capture(self, run_id: int, task_id: str, attempt: int) -> AttemptLog:
        """The attempt's log, to enter: the code run inside writes to it."""
        return AttemptLog(self, run_id, task_id, attempt, max_bytes=self.max_bytes)

    async def close(self, attempt_log: AttemptLog) -> None:
        """End ``attempt_log`` and wait (at most ``final_wait_s``) until its
        lines are stored."""
        attempt_log.finish()
        if not attempt_log.marked:
            return
        with self._dirty_lock:
            waiting = attempt_log in self._dirty
        if not waiting or self._task is None or self._task.done():
            return
        assert self._loop is not None
        done = self._loop.create_future()
        self._waiters.append(done)
        self._urgent.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.final_wait_s):
                await asyncio.shield(done)

    def mark_dirty(self, attempt_log: AttemptLog, count: int) -> None:
        with self._dirty_lock:
            first = not self._dirty
            self._dirty.add(attempt_log)
            self._waiting_lines += count
            urgent = self._waiting_lines >= self.batch_lines
        if not (first or urgent) or self._loop is None:
            return
        if threading.get_ident() == self._thread:
            self._signal(urgent)
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._signal, urgent)

    def _signal(self, urgent: bool) -> None:
        self._wake.set()
        if urgent:
            self._urgent.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._urgent.is_set():
                # Let lines gather for one interval, unless someone waits for them.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval_s):
                        await self._urgent.wait()
            self._wake.clear()
            self._urgent.clear()
            waiters, self._waiters = self._waiters, []
            try:
                await self._flush()
            except Exception as exc:
                log.warning("could not store task logs (%s); trying again", exc)
            finally:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if self._stopping:
                with self._dirty_lock:
                    if not self._dirty:
                        return
                self._signal(urgent=True)  # lines written while the last batch was stored

    async def _flush(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
            self._waiting_lines = 0
        columns: list[list[Any]] = [[], [], [], [], []]
        for attempt_log in dirty:
            for stream, body in _chunks(attempt_log.take()):
                columns[0].append(attempt_log.run_id)
                columns[1].append(attempt_log.task_id)
                columns[2].append(attempt_log.attempt)
                columns[3].append(stream)
                columns[4].append(body)
        batches = [*self._retry, (columns, 0)] if columns[0] else list(self._retry)
        self._retry = []
        for index, (batch, _tries) in enumerate(batches):
            try:
                async with self.db.pool.acquire() as conn:
                    await conn.execute(SQL.insert_task_logs, *batch)
            except Exception:
                left = [(b, t + 1) for b, t in batches[index:] if t + 1 < _FLUSH_RETRIES]
                lost = sum(len(b[0]) for b, t in batches[index:] if t + 1 >= _FLUSH_RETRIES)
                if lost:
                    log.error("dropped %d chunks of task logs that could not be stored", lost)
                self._retry = left
                if left:
                    self._wake.set()
                raise


def _chunks(lines: list[tuple[str, str]]) -> Iterator[tuple[str, str]]:
    """Consecutive lines of one stream joined, up to ``_CHUNK_CHARS`` each."""
    stream: str | None = None
    parts: list[str] = []
    size = 0
    for line_stream, line in lines:
        if parts and (line_stream != stream or size + len(line) > _CHUNK_CHARS):
            assert stream is not None
            yield stream, "\n".join(parts)
            parts, size = [], 0
        stream = line_stream
        parts.append(line)
        size += len(line) + 1
    if parts and stream is not None:
        yield stream, "\n".join(parts)


# --- reading -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    chunk: int
    """Id of the stored chunk the line came from (a cursor for following)."""
    stream: str
    at: datetime
    text: str


def _lines(rows: Any) -> list[LogLine]:
    return [
        LogLine(row["id"], row["stream"], row["logged_at"], text)
        for row in rows
        for text in row["body"].split("\n")
    ]


async def read_lines(
    db: Database, run_id: int, task_id: str, attempt: int, *, after: int = 0, limit: int = 10_000
) -> list[LogLine]:
    """Lines of one attempt stored after chunk ``after``, oldest first."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.task_log_chunks, run_id, task_id, attempt, after, limit)
    return _lines(rows)


async def tail(db: Database, run_id: int, task_id: str, attempt: int, count: int) -> list[LogLine]:
    """The last ``count`` lines of one attempt."""
    async with db.pool.acquire() as conn:
        rows = await conn.fetch(SQL.task_log_last_chunks, run_id, task_id, attempt, count)
    return _lines(reversed(rows))[-count:]


async def task_attempt(db: Database, run_id: int, task_id: str) -> tuple[int, str] | None:
    """The task's current attempt and state; None if the run has no such task."""
    async with db.pool.acquire() as conn:
        row = await conn.fetchrow(SQL.task_log_attempt, run_id, task_id)
    return None if row is None else (row["attempt"], row["state"])


_ENDED = frozenset({"success", "failed", "skipped", "upstream_failed", "dead_lettered"})


def attempt_running(current: int, state: str, attempt: int) -> bool:
    """Whether ``attempt`` may still write, given the task's current attempt and state
    (an attempt not started yet counts as running while the task may still start it)."""
    if current > attempt:
        return False
    if current == attempt:
        return state == "running"
    return state not in _ENDED
