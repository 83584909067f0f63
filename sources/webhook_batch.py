"""Group commit for webhook intake.

Each webhook request must be answered only after its event is committed, and
one commit per request caps intake at the rate of single-row transactions.
Requests arriving within ``delay_s`` of each other (or up to ``max_batch``)
therefore share one :meth:`Intake.ingest` call — one transaction — and each is
answered with its own :class:`Accepted` once that transaction has committed.

A few flushers run at once, so one batch can be built while others commit;
under load the batches grow by themselves while a commit is in flight.

Failures: when the database is unreachable every request of the batch gets
that error (the caller answers 503). Any other error is retried event by event
so that one poison event fails only its own request. A lost connection is
retried once on a fresh one: the pool reconnects, and dedup keys make a
replay of a commit that did happen harmless.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from orchestrator.clock import real_pause
from orchestrator.errors import OrchestratorError
from orchestrator.intake import Accepted, Event, Intake
from orchestrator.store import UNAVAILABLE

log = logging.getLogger(__name__)

#: Errors after which the same transaction may well succeed on a fresh connection.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    ConnectionError,
)


class BatcherClosedError(OrchestratorError):
    """The batcher is stopping; no new event is taken."""


_Waiter = tuple[Event, "asyncio.Future[Accepted]"]


class GroupCommit:
    """Collects events from concurrent requests into shared ``ingest`` calls."""

    def __init__(
        self,
        intake: Intake,
        *,
        delay_s: float = 0.002,
        max_batch: int = 256,
        flushers: int = 3,
        actor: str = "webhook",
    ) -> None:
        if max_batch < 1 or flushers < 1:
            raise ValueError("max_batch and flushers must be at least 1")
        self.intake = intake
        self.delay_s = delay_s
        self.max_batch = max_batch
        self.flushers = flushers
        self.actor = actor
        self._pending: list[_Waiter] = []
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.batches = 0
        """Transactions committed so far (the benchmark reports the mean batch size)."""
        self.events = 0

    async def start(self) -> None:
        self._closing = False
        self._tasks = [
            asyncio.create_task(self._flusher(), name=f"webhook-group-commit-{i}")
            for i in range(self.flushers)
        ]

    async def stop(self) -> None:
        """Take no new events, commit (or fail) the ones already handed in."""
        self._closing = True
        self._ready.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # Nothing should be left, but a waiter must never hang.
        self._fail(self._take_all(), BatcherClosedError("webhook intake is stopping"))

    async def submit(self, event: Event) -> Accepted:
        """Wait until ``event`` is committed (or its batch failed)."""
        if self._closing or not self._tasks:
            raise BatcherClosedError("webhook intake is not running")
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._ready.set()
        return await future

    async def _flusher(self) -> None:
        while True:
            await self._ready.wait()
            if not self._pending:
                if self._closing:
                    return
                self._ready.clear()
                continue
            if self.delay_s and not self._closing and len(self._pending) < self.max_batch:
                # Let concurrent requests join this commit.
                await real_pause(self.delay_s)
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if not batch:
                continue
            try:
                await self._commit(batch)
            except Exception as exc:  # a bug here must not leave requests waiting forever
                log.exception("webhook group commit failed unexpectedly")
                self._fail(batch, exc)

    def _take_all(self) -> list[_Waiter]:
        batch, self._pending = self._pending, []
        return batch

    async def _commit(self, batch: Sequence[_Waiter]) -> None:
        events = [event for event, _ in batch]
        try:
            answers = await self._ingest(events)
        except UNAVAILABLE as exc:
            self._fail(batch, exc)
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
            else:
                log.warning(
                    "a webhook batch of %d failed (%s); retrying one by one", len(batch), exc
                )
                for one in batch:
                    await self._commit([one])
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():  # the request may have been cancelled
                    future.set_result(answer)

    async def _ingest(self, events: list[Event]) -> list[Accepted]:
        try:
            answers = await self.intake.ingest(events, actor=self.actor)
        except _CONNECTION_LOST as exc:
            log.info("database connection lost during webhook intake (%s); retrying once", exc)
            answers = await self.intake.ingest(events, actor=self.actor)
        self.batches += 1
        self.events += len(events)
        return answers

    @staticmethod
    def _fail(batch: Sequence[_Waiter], exc: BaseException) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)
                # The request handler may be gone: do not warn about an unread error.
                future.exception()
