"""An asyncio worker with N slots.

It claims task instances (``FOR UPDATE SKIP LOCKED``, batched), runs their
handlers under a timeout, and hands finished attempts to its flushers, each
recording many of them in one transaction (``worker_flushers`` of them, so
one batch is recorded while another waits for its commit to be durable).
That transaction also claims the next work for the slots it frees, in the
statement that queues the successors: a chain's next step runs at once.
NOTIFY wakes an idle worker; a poll is the safety net.
Leases are renewed for all of this worker's attempts by one statement per
heartbeat, and any worker takes back attempts whose lease ran out.

Heartbeats, reaper passes and the backoff after a failed loop wait on the
injected clock; handlers get it as ``ctx.clock``. The flush window, the poll
safety net, retry wake-ups and the shutdown grace are event-loop pacing (see
:mod:`orchestrator.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from orchestrator.backoff import Backoff
from orchestrator.clock import SYSTEM_CLOCK, Clock, monotonic, real_pause
from orchestrator.context import TaskContext
from orchestrator.deferral import Defer
from orchestrator.engine import Claimed, Engine, Outcome
from orchestrator.errors import NonRetryableError, OutputNotJSONError, OutputTooLargeError
from orchestrator.handler_inputs import input_problems
from orchestrator.health import Liveness
from orchestrator.metrics import METRICS
from orchestrator.registry import HandlerRegistry
from orchestrator.retry import decide_failure
from orchestrator.secrets import Secrets, TaskSecrets
from orchestrator.settings import Settings
from orchestrator.states import TaskState
from orchestrator.task_logs import (
    TaskLogWriter,
    holds_secret,
    mask_current,
    mask_outcome,
    protect,
)
from orchestrator.templates import build_scope, render

log = logging.getLogger(__name__)

#: Why an attempt still running when the worker stopped was cut short.
INTERRUPTED = "worker shut down during the attempt"

#: Called at the named fault-injection points ``"before_handler"`` and
#: ``"after_handler"`` with the attempt; recovery tests pass one to make an
#: attempt stall or crash there (e.g. tests/integration/test_limits.py).
#: Test fault points: ("claim_loop", None) each time the claim loop comes
#: round, ("before_handler" | "after_handler", the attempt) around a handler.
FaultHook = Callable[[str, Claimed | None], Awaitable[None]]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Worker:
    def __init__(
        self,
        engine: Engine,
        registry: HandlerRegistry,
        settings: Settings,
        *,
        name: str | None = None,
        fault: FaultHook | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.registry = registry
        self.settings = settings
        self.slots = settings.worker_slots
        self.owner = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        # Set while limited work (named pools, per-task caps) waits: the flusher
        # then leaves claiming to the claim loop, which orders both kinds by priority.
        self._limited_waiting = False
        self._fault = fault
        self.liveness: Liveness | None = None
        """Told each time the claim loop comes round (``/healthz``)."""
        self._busy = 0  # slots running a handler or waiting for their result to commit
        self._reserved = 0  # slots promised to a claim in flight
        self._running: set[asyncio.Task[None]] = set()
        # The handler tasks by (task instance id, attempt): cancelled when the
        # heartbeat says the attempt is no longer this worker's (run cancelled).
        self._attempts: dict[tuple[int, int], asyncio.Task[None]] = {}
        self._buffer: list[Outcome] = []
        self._wake = asyncio.Event()
        self._handed = asyncio.Event()  # set each time a hand-over (or flush) ends
        self._flush_wanted = asyncio.Event()
        self._stopping = False
        # Set once no attempt runs any more: the flusher records what is left and ends.
        self._draining = False
        # Attempts cut short by stop(), logged once their new state is committed.
        self._interrupted: set[tuple[int, int]] = set()
        self._loops: dict[str, asyncio.Task[None]] = {}
        self.executed = 0
        self.rejected = 0
        self.claim_rounds = 0
        """Claims the claim loop has finished (the first one runs at start)."""
        s = settings
        self.task_logs = TaskLogWriter(
            engine.db, max_bytes=s.task_log_max_bytes, flush_interval_s=s.task_log_flush_s
        )
        self.secrets = TaskSecrets(Secrets.from_settings(settings))

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("claim", self._claim_loop),
            *((f"flush-{n}", self._flush_loop) for n in range(self.settings.worker_flushers)),
            ("heartbeat", self._heartbeat_loop),
            ("reaper", self._reaper_loop),
        ]
        for label, fn in loops:
            self._loops[label] = asyncio.create_task(self._guard(label, fn), name=f"worker-{label}")
        self.task_logs.start()
        # Work queued by this process's commits is claimed for this worker in them.
        self.engine.local = self

    def wake(self, _payload: str = "") -> None:
        """Called on NOTIFY: there may be new work."""
        self._wake.set()

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming, let running attempts finish for ``grace_s``, interrupt
        the rest, and commit every outcome before returning.

        An interrupted attempt is recorded as a failed attempt (retried per its
        policy). Only if the database cannot be reached is an attempt left
        ``running``; its lease then runs out and another worker takes it back.
        """
        self._stopping = True
        if self.engine.local is self:
            self.engine.local = None
        self._wake.set()
        claimer = self._loops.get("claim")
        if claimer is not None:
            # A claim in flight still launches what it claimed: let it land
            # (cancelled after it commits, its attempts would wait for the reaper).
            _done, pending = await asyncio.wait({claimer}, timeout=self.settings.lease_s)
            for task in pending:
                task.cancel()
        await self._finish_attempts(grace_s)
        # The flusher ends once everything is recorded, never in the middle of
        # a commit: cancelling it there would lose outcomes already logged.
        self._draining = True
        self._flush_wanted.set()
        flushers = {t for label, t in self._loops.items() if label.startswith("flush-")}
        if flushers:
            await asyncio.wait(flushers)
        await self._drain_buffer()
        for task in self._loops.values():
            task.cancel()
        for task in self._loops.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._loops.clear()
        await self.task_logs.stop()

    async def _finish_attempts(self, grace_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # A flush in flight may still launch attempts it claimed, and a commit
        # of this process may still hand some over: wait for those too.
        while (self._running or self._reserved > 0) and (left := deadline - loop.time()) > 0:
            if self._running:
                await asyncio.wait(set(self._running), timeout=left)
                continue
            self._handed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._handed.wait()
        if self._running:
            pending = set(self._running)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=5)

    async def _guard(self, label: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Keep a loop alive across database errors: log, back off, go on."""
        backoff = Backoff(0.05, 5.0)
        while not self._stopping:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    # stop() retries once and names what could not be recorded.
                    log.warning("worker %s loop failed while stopping: %s", label, _describe(exc))
                    return
                delay = backoff.next()
                log.exception("worker %s loop failed; restarting in %.2fs", label, delay)
                await self.clock.sleep(delay)

    # -- claiming ------------------------------------------------------------------

    @property
    def free(self) -> int:
        return self.slots - self._busy - self._reserved

    async def _claim_loop(self) -> None:
        poll = self.settings.poll_interval_s
        while not self._stopping:
            if self.liveness is not None:
                self.liveness.beat("worker claim loop")
            if self._fault:
                await self._fault("claim_loop", None)
            self._wake.clear()
            # free can be negative while a flush holds a reservation: never reserve less.
            want = max(0, min(self.free, self.settings.claim_batch))
            self._reserved += want
            try:
                claimed, self._limited_waiting = await self.engine.claim(self.owner, want)
            finally:
                self._reserved -= want
                self._handed.set()
            self.claim_rounds += 1
            self._launch(claimed)
            if want and len(claimed) == want and self.free > 0:
                continue  # there may be more right away
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await self._wake.wait()

    def reserve(self) -> int:
        """Slots for a claim made by a commit of this process (engine.unit)."""
        if self._stopping or self._limited_waiting:
            return 0
        want = max(0, min(self.free, self.settings.claim_batch))
        self._reserved += want
        return want

    def hand_over(
        self, claimed: list[Claimed], reserved: int, limited_waiting: bool | None
    ) -> None:
        """Start what a commit of this process claimed for this worker."""
        self._reserved -= reserved
        self._handed.set()
        if limited_waiting is not None:
            self._limited_waiting = limited_waiting
        if limited_waiting:
            self._wake.set()  # the claim loop orders limited work
        self._launch(claimed)

    def _launch(self, claimed: list[Claimed]) -> None:
        for c in claimed:
            self._busy += 1
            task = asyncio.create_task(self._execute(c))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            key = (c.id, c.attempt)
            self._attempts[key] = task
            task.add_done_callback(self._forget(key))

    def _forget(self, key: tuple[int, int]) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._attempts.pop(key, None)

        return forget

    # -- executing -----------------------------------------------------------------

    async def _execute(self, c: Claimed) -> None:
        outcome: Outcome
        with self.task_logs.capture(c.run_id, c.task_id, c.attempt) as attempt_log:
            try:
                outcome = await self._attempt(c)
            except asyncio.CancelledError:
                # Logged once committed (see _flush): until then nothing has changed.
                outcome = self._failure(c, None, INTERRUPTED, announce=False)
                self._interrupted.add((c.id, c.attempt))
        await self.task_logs.close(attempt_log)  # its last lines are stored first
        self._buffer.append(outcome)
        self._flush_wanted.set()

    async def _attempt(self, c: Claimed) -> Outcome:
        compiled = await self.engine.compiled_workflow(c.version)
        task = compiled.tasks[c.task_id]
        if c.handler not in self.registry:
            return self._failure(
                c,
                NonRetryableError(
                    f"handler {c.handler!r} is not registered in worker {self.owner}"
                ),
                compiled=compiled,
            )
        ctx = TaskContext(
            run_id=c.run_id,
            task_id=c.task_id,
            attempt=c.attempt,
            workflow=c.workflow,
            params=c.params,
            upstream=c.upstream,
            logical_date=c.logical_date.isoformat() if c.logical_date else None,
            resumed=c.resumed,
            clock=self.clock,
        )
        timeout = compiled.timeout_s[c.task_id]
        try:
            if self._fault:
                await self._fault("before_handler", c)
            inputs = {}
            if task.inputs:
                scope = build_scope(
                    params=c.params,
                    upstream=c.upstream,
                    run_id=c.run_id,
                    workflow=c.workflow,
                    task_id=c.task_id,
                    attempt=c.attempt,
                    logical_date=c.logical_date,
                    interval_end=c.interval_end,
                )
                if values := self.secrets.for_task(c.version, c.task_id, task.inputs):
                    protect(values.values())  # masked in whatever this attempt leaves behind
                    scope["secrets"] = values
                inputs = render(task.inputs, scope)
            result = await self._call(c.handler, ctx, inputs, timeout)
            output = self._encode(result)
            if self._fault:
                await self._fault("after_handler", c)
        except asyncio.CancelledError:
            raise
        except Defer as wait:
            if holds_secret([wait.config, wait.match_key, wait.match_pattern]):
                # A wait's settings are stored: a secret must not be among them.
                leak = NonRetryableError("a wait's settings may not hold a secret (stored)")
                return self._failure(c, leak, compiled=compiled)
            # The slot is given back as soon as this outcome is recorded.
            self.executed += 1
            return self._outcome(
                c, TaskState.DEFERRED, reason=f"waits for {wait.description}", deferral=wait
            )
        except Exception as exc:
            return self._failure(c, exc, compiled=compiled)
        self.executed += 1
        return self._outcome(c, TaskState.SUCCESS, output=output, reason="handler returned")

    async def _call(
        self, name: str, ctx: TaskContext, inputs: dict[str, Any], timeout: float
    ) -> Any:
        fn = self.registry.get(name)
        # Inputs that do not fit the handler's signature fail the task before
        # the call: no retry can change them.
        problems = input_problems(fn, inputs)
        if problems:
            given = ", ".join(sorted(inputs)) or "none"
            raise NonRetryableError(
                f"handler {name!r} cannot be called with the task's inputs ({given}): "
                + "; ".join(problems)
            )
        started = monotonic()
        try:
            async with asyncio.timeout(timeout):
                if self.registry.is_async(name):
                    return await fn(ctx, **inputs)
                return await asyncio.to_thread(fn, ctx, **inputs)
        except TimeoutError as exc:
            raise TimeoutError(f"attempt timed out after {timeout:g}s") from exc
        finally:
            METRICS.task_duration.observe(monotonic() - started)

    def _encode(self, result: Any) -> str | None:
        if result is None:
            return None
        try:
            data = orjson.dumps(result)
        except TypeError as exc:
            raise OutputNotJSONError(str(exc)) from None
        if len(data) > self.settings.max_output_bytes:
            raise OutputTooLargeError(len(data), self.settings.max_output_bytes)
        return data.decode()

    def _failure(
        self,
        c: Claimed,
        exc: BaseException | None,
        reason: str = "",
        *,
        compiled: Any = None,
        announce: bool = True,
    ) -> Outcome:
        compiled = compiled or self.engine.cached_workflow(c.version)
        policy = compiled.retry[c.task_id] if compiled else None
        if policy is None:
            target, delay = TaskState.UP_FOR_RETRY, 0.0
        else:
            # Counted from the last clear: a cleared task has its retries again.
            decision = decide_failure(policy, c.attempt - c.tries_before, exc)
            target, delay = decision.target, decision.delay_s
        error = mask_current(_describe(exc) if exc is not None else reason)
        if target == TaskState.UP_FOR_RETRY and not self._stopping:
            self._wake_later(delay)
        if announce:
            log.log(
                logging.WARNING if target == TaskState.UP_FOR_RETRY else logging.ERROR,
                "run %s task %s attempt %d failed (%s): %s",
                c.run_id,
                c.task_id,
                c.attempt,
                target.value,
                error,
            )
        return self._outcome(
            c,
            target,
            error=error,
            delay_s=delay if target == TaskState.UP_FOR_RETRY else None,
            reason=reason or ("retry scheduled" if target == TaskState.UP_FOR_RETRY else "failed"),
        )

    def _outcome(self, c: Claimed, target: TaskState, **fields: Any) -> Outcome:
        """The end of attempt ``c`` under this worker's lease."""
        fields = mask_outcome(fields)
        return Outcome(
            id=c.id,
            run_id=c.run_id,
            task_id=c.task_id,
            attempt=c.attempt,
            owner=self.owner,
            target=target,
            **fields,
        )

    def _wake_later(self, delay: float) -> None:
        loop = asyncio.get_running_loop()
        # A retry becomes due at a known time: wake for it rather than wait for a poll.
        loop.call_later(delay + 0.001, self._wake.set)

    # -- recording -------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while not (self._draining and not self._buffer):
            await self._flush_wanted.wait()
            others_running = self._busy > len(self._buffer)
            if (
                self.settings.flush_delay_s
                and others_running
                and len(self._buffer) < self.settings.claim_batch
            ):
                # Let attempts finishing within a millisecond share the commit.
                await real_pause(self.settings.flush_delay_s)
            self._flush_wanted.clear()
            batch, self._buffer = self._buffer, []
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[Outcome]) -> None:
        want = 0
        if not self._stopping and not self._limited_waiting:
            # The slots of this batch free up when it commits: claim into them now.
            want = max(0, min(self.free + len(batch), self.settings.claim_batch))
        self._reserved += want
        try:
            result = await self.engine.complete(
                batch, actor=self.owner, claim_for=self.owner, claim_limit=want
            )
        except Exception:
            # Nothing was recorded: keep the outcomes for the next flush.
            self._buffer[:0] = batch
            self._flush_wanted.set()
            raise
        finally:
            self._reserved -= want
            self._handed.set()
        self._busy -= len(batch)
        if result.limited_waiting is not None:
            self._limited_waiting = result.limited_waiting
        for o in result.accepted:
            METRICS.task_attempts.labels(o.target.value).inc()
            if self._interrupted and (o.id, o.attempt) in self._interrupted:
                self._interrupted.discard((o.id, o.attempt))
                log.warning(
                    "run %s task %s attempt %d interrupted (%s): now %s",
                    o.run_id,
                    o.task_id,
                    o.attempt,
                    INTERRUPTED,
                    o.target.value,
                )
        for o in result.rejected:
            self._interrupted.discard((o.id, o.attempt))
            self.rejected += 1
            log.warning(
                "late result rejected: run %s task %s attempt %d is no longer leased to %s",
                o.run_id,
                o.task_id,
                o.attempt,
                self.owner,
            )
        self._launch(result.claimed)
        # A commit that claimed less than it asked for saw every claimable
        # task: the claim loop is woken only when more may be there (or
        # limited work waits for it); later work comes with a notification.
        more = want == 0 or len(result.claimed) == want or bool(result.limited_waiting)
        if self.free > 0 and more:
            self._wake.set()

    async def _drain_buffer(self) -> None:
        """At shutdown: one more try for outcomes a failed flush kept, then name
        what stays unrecorded (those attempts are taken back when their lease
        runs out)."""
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await self._flush(batch)
        except Exception as exc:
            log.error(
                "could not record %d finished attempts at shutdown (%s); they stay "
                "running until their lease runs out (%gs) and are then taken back",
                len(self._buffer),
                _describe(exc),
                self.settings.lease_s,
            )
            for o in self._buffer:
                log.error(
                    "not recorded: run %s task %s attempt %d (would be %s)",
                    o.run_id,
                    o.task_id,
                    o.attempt,
                    o.target.value,
                )

    # -- leases ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await self.clock.sleep(interval)
            if self._busy:
                running = [k for k, t in self._attempts.items() if not t.done()]
                gone = set(await self.engine.heartbeat(self.owner, running))
                for key in running:
                    task = self._attempts.get(key)
                    if key[0] in gone and task is not None:
                        # Its run was cancelled: the handler stops (a shell
                        # command's process group is killed); the result it
                        # would have is refused by the lease guard anyway.
                        log.info("attempt %d of task instance %d cancelled", key[1], key[0])
                        task.cancel()

    async def _reaper_loop(self) -> None:
        interval = self.settings.reaper_interval
        while True:
            # Spread replicas' reaper passes so they do not all scan at once.
            await self.clock.sleep(interval * (0.5 + random.random()))
            loop = asyncio.get_running_loop()
            started = loop.time()  # how long the pass took, for the log: real time
            taken = await self.engine.expire_leases(actor=f"reaper:{self.owner}")
            if taken:
                log.info(
                    "took back %d expired attempts in %.1f ms",
                    taken,
                    (loop.time() - started) * 1000,
                )
                self._wake.set()
