"""Recording complete landing-zone files: the queue between the checks of
:mod:`sources.files` and the database.

Checks put complete, hashed files here and go on looking at the next ones;
``RECORDERS`` tasks take batches of up to ``batch_max`` queued files and
record each batch in one transaction: the events, the runs they start, the
dead letters of refused paths and the pending moves. A file counts as taken
only after that commit; one still queued when the process stops is found
again by the scan at the next start.

A path's versions are recorded one after the other, in the order they were
seen (a batch holds at most one version of a path, and none of a path another
batch is recording), so comparing with the last recorded content decides
rightly whether a version is new.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.backoff import Backoff
from orchestrator.intake import DeadLetter, Event, Router
from orchestrator.sources import SourceContext
from sources.completeness import Stat
from sources.landing_fs import Refusal, absolute_in
from sources.models import FileTrigger
from sources.queries import SQL

__all__ = ["FileIdentity", "LandingRecorder"]

log = logging.getLogger(__name__)

ACTOR = "files"
#: Batches recorded at once (each in its own transaction): the database works
#: on one while the next one's rows are put together.
RECORDERS = 2
#: After a failed batch (database down, ...) its files are looked at again this
#: much later, doubling per failure in a row up to ``RETRY_MAX_S``.
RETRY_S = 1.0
RETRY_MAX_S = 30.0

#: A queued file: relative path, the stat it was hashed at, SHA-256.
Queued = tuple[str, Stat, str]


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What was last recorded for a path."""

    stat: Stat
    sha256: str


class LandingRecorder:
    def __init__(
        self,
        *,
        batch_max: int,
        known: dict[str, FileIdentity | None],
        look_again: Callable[[Sequence[str], float], None],
    ) -> None:
        """``known`` is the last recorded content per path (shared with the
        checks, updated here after each commit); ``look_again(paths, when)``
        hands back the files of a batch that could not be recorded."""
        self._batch_max = batch_max
        self._known = known
        self._look_again = look_again
        self._ctx: SourceContext | None = None
        self.router = Router()
        self.root = ""
        self._queue: deque[Queued] = deque()
        self.taking: dict[str, Stat] = {}
        """Paths queued or being recorded, by the stat they were queued with."""
        self._letters: dict[str, Refusal] = {}
        self.refused: dict[str, str] = {}
        """Path -> the dead-letter key recorded for it."""
        self._in_flight: set[str] = set()
        self._recording = 0
        self._wake = asyncio.Event()
        self.ingest_calls = 0
        """Transactions that recorded files or dead letters."""

    def start(self, ctx: SourceContext, root: str) -> list[asyncio.Task[None]]:
        self._ctx, self.root = ctx, root
        return [
            asyncio.create_task(self._recorder(), name=f"landing-record-{i}")
            for i in range(RECORDERS)
        ]

    @property
    def idle(self) -> bool:
        return not (self._queue or self._letters or self._recording)

    def put(self, rel: str, stat: Stat, sha256: str) -> None:
        self.taking[rel] = stat
        self._queue.append((rel, stat, sha256))
        self._wake.set()

    def refuse(self, refusal: Refusal) -> None:
        """Record a dead letter for ``refusal`` unless this one already was."""
        if self.refused.get(refusal.path) != refusal.key:
            self._letters[refusal.key] = refusal
            self._wake.set()

    # -- the recording tasks -------------------------------------------------------------

    async def _recorder(self) -> None:
        backoff = Backoff(RETRY_S, RETRY_MAX_S)
        while True:
            batch = self.next_batch()
            letters = list(self._letters.values())
            self._letters = {}
            if not batch and not letters:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._recording += 1
            try:
                await self._record(batch, letters)
                backoff.reset()
            except Exception:
                delay = backoff.next()
                log.exception(
                    "recording %d landed file(s) failed; looking at them again in %.1fs",
                    len(batch),
                    delay,
                )
                for refusal in letters:
                    self._letters.setdefault(refusal.key, refusal)
                clock = self._context().clock
                self._look_again([rel for rel, _, _ in batch], clock.now().timestamp() + delay)
                await clock.sleep(delay)
            finally:
                self._recording -= 1
                self._in_flight.difference_update(rel for rel, _, _ in batch)
                self._wake.set()  # versions held back for these paths may go now

    def next_batch(self) -> list[Queued]:
        """Up to ``batch_max`` queued files to record now (see the module docstring)."""
        batch: list[Queued] = []
        held: list[Queued] = []
        held_paths: set[str] = set()
        while self._queue and len(batch) < self._batch_max:
            item = self._queue.popleft()
            rel = item[0]
            if rel in self._in_flight or rel in held_paths:
                held.append(item)
                held_paths.add(rel)
            else:
                batch.append(item)
                self._in_flight.add(rel)
        self._queue.extendleft(reversed(held))
        return batch

    async def _record(self, batch: Sequence[Queued], letters: Sequence[Refusal]) -> None:
        try:
            events: list[tuple[Event, FileIdentity]] = []
            for rel, stat, sha in batch:
                known = self._known.get(rel)
                identity = FileIdentity(stat, sha)
                if known is not None and known.stat.size == stat.size and known.sha256 == sha:
                    self._known[rel] = identity  # touched, same bytes: nothing new
                    continue
                events.append((self._event(rel, stat, sha), identity))
            if events or letters:
                await self._ingest(events, letters)
        finally:
            for rel, stat, _ in batch:
                if self.taking.get(rel) == stat:
                    del self.taking[rel]

    async def _ingest(
        self, batch: Sequence[tuple[Event, FileIdentity]], letters: Sequence[Refusal]
    ) -> None:
        ctx = self._context()
        events = [event for event, _ in batch]
        moving = any(t.on_done == "move" for t in file_triggers(self.router))
        async with ctx.engine.db.transaction() as conn:
            accepted = await ctx.intake.ingest_in(
                conn, events, dead_letters=[self._dead_letter(r) for r in letters], actor=ACTOR
            )
            moves = [
                (answer.event_id, event.channel, event.meta["sha256"])
                for event, answer in zip(events, accepted, strict=True)
                if moving and not answer.duplicate and answer.run_ids and self._moves(event)
            ]
            if moves:
                await conn.execute(SQL.insert_landing_moves, *map(list, zip(*moves, strict=True)))
        self.ingest_calls += 1
        for event, identity in batch:
            self._known[event.channel] = identity
        for refusal in letters:
            self.refused[refusal.path] = refusal.key
        if events:
            log.info("landing zone: recorded %d file(s)", len(events))

    def _event(self, rel: str, stat: Stat, sha: str) -> Event:
        mtime = datetime.fromtimestamp(stat.mtime_ns / 1e9, UTC)
        return Event(
            source="file",
            channel=rel,
            dedup_key=f"file:{rel}:{stat.size}:{stat.mtime_ns}:{sha}",
            payload=None,
            meta={
                "path": rel,
                "absolute_path": absolute_in(self.root, rel),
                "size": stat.size,
                "mtime": mtime.isoformat(),
                "sha256": sha,
            },
        )

    def _dead_letter(self, refusal: Refusal) -> DeadLetter:
        return DeadLetter(
            source="file",
            channel=refusal.path,
            dedup_key=refusal.key,
            reason=refusal.reason,
            meta={"path": refusal.path, "absolute_path": absolute_in(self.root, refusal.path)},
        )

    def _moves(self, event: Event) -> bool:
        return any(t.on_done == "move" for t in file_triggers_for(self.router, event.channel))

    def _context(self) -> SourceContext:
        if self._ctx is None:
            raise RuntimeError("LandingRecorder.start(ctx, root) must be called first")
        return self._ctx


def file_triggers(router: Router) -> list[FileTrigger]:
    """Every file trigger of the workflows ``router`` routes to."""
    return [r.trigger for r in router.routes_of("file") if isinstance(r.trigger, FileTrigger)]


def file_triggers_for(router: Router, relative_path: str) -> list[FileTrigger]:
    """The file triggers whose glob matches ``relative_path``."""
    return [
        r.trigger
        for r in router.routes_on("file", relative_path)
        if isinstance(r.trigger, FileTrigger)
    ]
