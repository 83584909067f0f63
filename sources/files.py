"""The landing zone: complete files under ``settings.landing_dir`` become events.

How a file travels:

1. *Seen* — by the watcher (``watchfiles``), by the scan at start (files
   dropped while the orchestrator was stopped) or by the periodic full rescan
   (anything the watcher missed: an overflowed inotify queue, a directory
   moved in whole). Temporary names are never looked at
   (:func:`sources.completeness.is_ignored`).
2. *Checked* — stat and marker look-ups run in a worker thread;
   :func:`sources.completeness.judge` decides. Files still settling wait on a
   small heap of next-check times (no busy polling); files waiting for a marker
   are parked until something changes in their directory or the next rescan.
3. *Recorded* — complete files are hashed (SHA-256, in threads) and recorded
   in batches: one transaction per up to ``batch_max`` files, holding the
   events, the runs they start, the dead letters of refused paths and the
   pending moves. A file counts as taken only after that commit.
4. *Moved* (``on_done: move``) — once every run the event started has ended,
   the file goes to ``processed/<path>`` (all succeeded) or ``failed/<path>``.

Identity and dedup. The event's dedup key is
``file:{path}:{size}:{mtime_ns}:{sha256}``, so the same bytes seen twice (a
rescan, a restart, two replicas) are one event. A ``touch`` changes the mtime
and therefore the key, so before recording, the content is compared with the
last *recorded* content of that path (kept in memory, loaded from the events
table for paths not seen yet): same size and SHA-256 means nothing new, and no
event is written. Rewriting a file with different bytes is a new event, and so
is going back to earlier bytes (A, B, A is three events), which a key without
the mtime could not tell. A file moved away by ``on_done: move`` leaves no
"last content", so dropping the same file again starts it again.

Refused: symbolic links (to files or directories), paths that resolve outside
the landing zone or through a link, and anything that is not a regular file
(a FIFO would block the hash). Each becomes one dead letter naming why, once
per path and link target; nothing else happens.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from watchfiles import awatch

from orchestrator.backoff import Backoff
from orchestrator.clock import Clock, wait_for_event
from orchestrator.intake import DeadLetter, Event, Router
from orchestrator.metrics import METRICS
from orchestrator.sources import SourceContext, loop_stopped
from orchestrator.states import TERMINAL_RUN_STATES
from sources.completeness import MarkerNames, Observation, Rule, Stat, judge
from sources.landing_fs import (
    Found,
    Refusal,
    absolute_in,
    choose_target,
    classify_paths,
    digest_many,
    look_many,
    move_file,
    walk_tree,
)
from sources.models import FileTrigger
from sources.queries import SQL

__all__ = ["FileIdentity", "LandingSource"]

log = logging.getLogger(__name__)
T = TypeVar("T")

ACTOR = "files"
#: Most due files looked at in one pass; the rest follow right after.
CHECK_MAX_FACTOR = 5
#: How many threads hash one batch.
HASH_THREADS = 4
#: After a failed pass (database down, ...) its files are looked at again this much
#: later, doubling per failed pass in a row up to ``RETRY_MAX_S``.
RETRY_S = 1.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What was last recorded for a path."""

    stat: Stat
    sha256: str


@dataclass(slots=True)
class _Candidate:
    due: float | None = None
    """Next check (seconds on the source's clock); None while parked or being checked."""
    observation: Observation | None = None
    waiting_for: str = "a first look"
    checking: bool = False
    changed: bool = False
    """Something changed in its directory while it was being checked."""


def _readable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.R_OK | os.X_OK)


class LandingSource:
    """The ``files`` event source (see the module docstring)."""

    name = "files"

    def __init__(
        self,
        *,
        default_quiet_s: float = 2.0,
        move_interval_s: float = 1.0,
        batch_max: int = 1000,
        watch_debounce_ms: int = 200,
    ) -> None:
        """``default_quiet_s`` applies to files no trigger matches (they are
        recorded too, a sensor may wait for them); ``move_interval_s`` is how
        often ended runs are looked for (``on_done: move``)."""
        self._default_quiet_s = default_quiet_s
        self._move_interval_s = move_interval_s
        self._batch_max = batch_max
        self._debounce_ms = watch_debounce_ms
        self._ctx: SourceContext | None = None
        self._router = Router()
        self._markers = MarkerNames(())
        self.root = ""
        """The landing zone's real absolute path, once started."""
        self._rescan_s = 30.0
        self._pending: dict[str, _Candidate] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._parked: dict[str, set[str]] = defaultdict(set)
        self._known: dict[str, FileIdentity | None] = {}
        self._letters: dict[str, Refusal] = {}
        self._refused: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._stop_watching = asyncio.Event()
        self._busy = False
        self._tasks: list[asyncio.Task[None]] = []
        self.scans = 0
        """Full scans finished (the first one runs at start)."""
        self.ingest_calls = 0
        """Transactions that recorded files or dead letters."""

    # -- Source protocol ----------------------------------------------------------------

    def setup(self, ctx: SourceContext) -> None:
        self._ctx = ctx

    def use_router(self, router: Router) -> None:
        self._router = router
        self._markers = MarkerNames(t for t in _file_triggers(router))
        # New rules may complete (or stop parking) files already waiting.
        now = self._now_or_zero()
        for rel, cand in self._pending.items():
            if cand.due is None and not cand.checking:
                self._schedule(rel, cand, now)

    async def start(self) -> None:
        ctx = self._context()
        landing = ctx.settings.landing_dir
        await asyncio.to_thread(landing.mkdir, parents=True, exist_ok=True)
        self.root = await asyncio.to_thread(os.path.realpath, landing)
        self._rescan_s = ctx.settings.landing_rescan_s
        self._stop_watching = asyncio.Event()
        self._tasks = [asyncio.create_task(self._watch(), name="landing-watch")]
        # The watcher registers on its first step; a scan started after that
        # misses nothing, and the periodic rescan closes any remaining gap.
        await asyncio.sleep(0)
        self._tasks += [
            asyncio.create_task(self._rescan(), name="landing-rescan"),
            asyncio.create_task(self._pump(), name="landing-check"),
            asyncio.create_task(self._mover(), name="landing-move"),
        ]
        log.info("landing zone %s: watching (full rescan every %gs)", self.root, self._rescan_s)
        # Read when scraped: the files seen and not taken in yet.
        METRICS.landing_pending.set_function(lambda: len(self._pending))

    async def stop(self) -> None:
        self._stop_watching.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        METRICS.landing_pending.set(0)

    async def not_ready(self) -> str | None:
        for task in self._tasks:
            if stopped := loop_stopped(task, f"the landing zone's {task.get_name()} loop"):
                return stopped
        if self.root and not await asyncio.to_thread(_readable_dir, self.root):
            return f"the landing zone {self.root} is not a readable directory"
        return None

    # -- what tests and operators can look at ---------------------------------------------

    def pending(self) -> dict[str, str]:
        """Files seen but not complete yet, with what each is waiting for."""
        return {rel: cand.waiting_for for rel, cand in self._pending.items()}

    def seen(self, relative_path: str) -> FileIdentity | None:
        """The last recorded (or touched) identity of a path, if known."""
        return self._known.get(relative_path)

    @property
    def idle(self) -> bool:
        """Nothing due, being checked or being recorded (files parked until their
        marker appears may remain)."""
        if self._letters or self._busy:
            return False
        return all(c.due is None and not c.checking for c in self._pending.values())

    # -- seeing files ------------------------------------------------------------------

    async def _watch(self) -> None:
        while not self._stop_watching.is_set():
            try:
                async for changes in awatch(
                    self.root,
                    watch_filter=None,
                    debounce=self._debounce_ms,
                    step=50,
                    stop_event=self._stop_watching,
                    recursive=True,
                    ignore_permission_denied=True,
                ):
                    paths = {path for _change, path in changes}
                    self._take(await asyncio.to_thread(classify_paths, self.root, paths))
                return
            except Exception:
                log.exception(
                    "watching %s failed; rescans (every %gs) keep finding files",
                    self.root,
                    self._rescan_s,
                )
            await self._clock.sleep(self._rescan_s)

    async def _rescan(self) -> None:
        while True:
            try:
                found = await asyncio.to_thread(walk_tree, self.root)
                self._take(found)
                self._forget_absent(found)
                self.scans += 1
            except Exception:
                log.exception("scanning the landing zone %s failed", self.root)
            await self._clock.sleep(self._rescan_s)

    def _take(self, found: Found) -> None:
        for refusal in found.refused:
            if self._refused.get(refusal.path) != refusal.key:
                self._letters[refusal.key] = refusal
        if found.refused:
            self._wake.set()
        self._offer(found.files)

    def _offer(self, stats: Mapping[str, Stat | None]) -> None:
        now = self._now()
        for rel, stat in stats.items():
            if self._markers.matches(rel):
                self._unpark(posixpath.dirname(rel), now)
                continue
            known = self._known.get(rel)
            if stat is not None and known is not None and known.stat == stat:
                continue  # unchanged since it was recorded: the common rescan case
            cand = self._pending.get(rel)
            if cand is None:
                cand = self._pending[rel] = _Candidate()
                self._schedule(rel, cand, now)
            elif cand.checking:
                cand.changed = True
            elif cand.due is None:
                self._schedule(rel, cand, now)
            # Already due: that check will see whatever changed.

    def _forget_absent(self, found: Found) -> None:
        """Keep memory bounded by the files present; a path that comes back is
        looked up in the database again."""
        present = found.files.keys() | {r.path for r in found.refused}
        for table in (self._known, self._refused):
            for rel in [r for r in table if r not in present and r not in self._pending]:
                del table[rel]

    # -- checking ------------------------------------------------------------------------

    def _schedule(self, rel: str, cand: _Candidate, when: float) -> None:
        directory = posixpath.dirname(rel)
        parked = self._parked.get(directory)
        if parked is not None:
            parked.discard(rel)
            if not parked:
                del self._parked[directory]
        cand.due = when
        heapq.heappush(self._heap, (when, next(self._seq), rel))
        if self._heap[0][2] == rel:
            self._wake.set()

    def _park(self, rel: str, cand: _Candidate) -> None:
        cand.due = None
        self._parked[posixpath.dirname(rel)].add(rel)

    def _unpark(self, directory: str, now: float) -> None:
        for rel in self._parked.pop(directory, set()):
            cand = self._pending.get(rel)
            if cand is not None and cand.due is None and not cand.checking:
                self._schedule(rel, cand, now)

    def _pop_due(self, now: float) -> list[str]:
        due: list[str] = []
        while self._heap and self._heap[0][0] <= now and len(due) < self._check_max:
            when, _seq, rel = heapq.heappop(self._heap)
            cand = self._pending.get(rel)
            if cand is None or cand.due != when or cand.checking:
                continue  # superseded by a later schedule
            cand.due = None
            cand.checking = True
            due.append(rel)
        return due

    @property
    def _check_max(self) -> int:
        return self._batch_max * CHECK_MAX_FACTOR

    async def _pump(self) -> None:
        backoff = Backoff(RETRY_S, RETRY_MAX_S)
        while True:
            now = self._now()
            due = self._pop_due(now)
            if not due and not self._letters:
                delay = max(0.0, self._heap[0][0] - now) if self._heap else None
                self._wake.clear()
                await wait_for_event(self._clock, self._wake, delay)
                continue
            self._busy = True
            try:
                await self._check(due)
                backoff.reset()
            except Exception:
                delay = backoff.next()
                log.exception(
                    "checking %d landed file(s) failed; retrying in %.1fs", len(due), delay
                )
                later = self._now() + delay
                for rel in due:
                    cand = self._pending.setdefault(rel, _Candidate())
                    cand.checking = False
                    self._schedule(rel, cand, later)
                await self._clock.sleep(delay)
            finally:
                self._busy = False

    async def _check(self, rels: list[str]) -> None:
        await self._load_known([rel for rel in rels if rel not in self._known])
        rules = {rel: self._rule(rel) for rel in rels}
        wanted = {
            rel: [p for p in rule.marker_paths(rel).values() if p is not None]
            for rel, rule in rules.items()
        }
        looks = await asyncio.to_thread(look_many, self.root, wanted)
        now = self._now()
        ready: list[tuple[str, Stat]] = []
        for rel, (found, present) in looks.items():
            cand = self._pending[rel]
            cand.checking = False
            if found is None or isinstance(found, Refusal):
                del self._pending[rel]
                if isinstance(found, Refusal) and self._refused.get(rel) != found.key:
                    self._letters[found.key] = found
                continue
            known = self._known.get(rel)
            if known is not None and known.stat == found:
                del self._pending[rel]
                continue
            verdict = judge(rules[rel], cand.observation, found, present, now, relative_path=rel)
            cand.observation = verdict.observation
            cand.waiting_for = verdict.waiting_for
            if verdict.complete:
                del self._pending[rel]
                ready.append((rel, found))
            elif verdict.check_at is not None:
                self._schedule(rel, cand, verdict.check_at)
            elif cand.changed:
                self._schedule(rel, cand, now)
            else:
                self._park(rel, cand)
            cand.changed = False
        await self._record(ready)

    def _rule(self, rel: str) -> Rule:
        triggers = _file_triggers_for(self._router, rel)
        return Rule.for_triggers(triggers, default_quiet_s=self._default_quiet_s)

    async def _load_known(self, rels: Sequence[str]) -> None:
        """The last recorded content of paths not seen since start."""
        db = self._context().engine.db
        for chunk in _batched(rels, 5000):
            async with db.pool.acquire() as conn:
                rows = await conn.fetch(SQL.landing_last_recorded, chunk)
            last = {r["channel"]: r for r in rows}
            for rel in chunk:
                row = last.get(rel)
                if row is None or row["move_state"] in ("processed", "failed"):
                    self._known[rel] = None
                else:
                    self._known[rel] = _identity_from_key(rel, row["dedup_key"])

    # -- recording -----------------------------------------------------------------------

    async def _record(self, ready: list[tuple[str, Stat]]) -> None:
        events: list[tuple[Event, FileIdentity]] = []
        for rel, stat, sha in await self._digest(ready):
            if sha is None:  # changed (or vanished) while hashing: look again
                self._offer({rel: None})
                continue
            known = self._known.get(rel)
            identity = FileIdentity(stat, sha)
            if known is not None and known.stat.size == stat.size and known.sha256 == sha:
                self._known[rel] = identity  # touched, same bytes: nothing new
                continue
            events.append((self._event(rel, stat, sha), identity))
        letters = list(self._letters.values())
        self._letters = {}
        try:
            for i, chunk in enumerate(_batched(events, self._batch_max) or [[]]):
                await self._ingest(chunk, letters if i == 0 else [])
        except BaseException:
            for refusal in letters:
                self._letters.setdefault(refusal.key, refusal)
            raise

    async def _digest(self, ready: list[tuple[str, Stat]]) -> list[tuple[str, Stat, str | None]]:
        if not ready:
            return []
        size = -(-len(ready) // HASH_THREADS)
        parts = await asyncio.gather(
            *(
                asyncio.to_thread(digest_many, self.root, ready[i : i + size])
                for i in range(0, len(ready), size)
            )
        )
        return [item for part in parts for item in part]

    async def _ingest(
        self, batch: Sequence[tuple[Event, FileIdentity]], letters: Sequence[Refusal]
    ) -> None:
        if not batch and not letters:
            return
        ctx = self._context()
        events = [event for event, _ in batch]
        async with ctx.engine.db.transaction() as conn:
            accepted = await ctx.intake.ingest_in(
                conn, events, dead_letters=[self._dead_letter(r) for r in letters], actor=ACTOR
            )
            moves = [
                (answer.event_id, event.channel, event.meta["sha256"])
                for event, answer in zip(events, accepted, strict=True)
                if not answer.duplicate and answer.run_ids and self._moves(event.channel)
            ]
            if moves:
                await conn.execute(SQL.insert_landing_moves, *map(list, zip(*moves, strict=True)))
        self.ingest_calls += 1
        for event, identity in batch:
            self._known[event.channel] = identity
        for refusal in letters:
            self._refused[refusal.path] = refusal.key
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

    def _moves(self, rel: str) -> bool:
        return any(t.on_done == "move" for t in _file_triggers_for(self._router, rel))

    # -- moving finished files -----------------------------------------------------------

    async def _mover(self) -> None:
        while True:
            try:
                await self.move_finished()
            except Exception:
                log.exception("moving finished landing-zone files failed; retrying")
            # Without a move trigger only moves left from an earlier
            # configuration remain: looking at the rescan pace is enough.
            moving = any(t.on_done == "move" for t in _file_triggers(self._router))
            await self._clock.sleep(self._move_interval_s if moving else self._rescan_s)

    async def move_finished(self, limit: int = 500) -> int:
        """Move the files whose runs have all ended; returns how many moved."""
        db = self._context().engine.db
        terminal = sorted(s.value for s in TERMINAL_RUN_STATES)
        async with db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.landing_moves_due, terminal, limit)
        moved = 0
        for row in rows:
            event_id, rel = row["event_id"], row["path"]
            outcome = "processed" if row["succeeded"] else "failed"
            proposed = row["target"] or await asyncio.to_thread(
                choose_target, self.root, rel, outcome, event_id
            )
            # The target is stored before the file moves: after a crash in
            # between, the next attempt finishes the same move.
            async with db.pool.acquire() as conn:
                target = await conn.fetchval(SQL.landing_move_target, event_id, proposed)
            if target is None:
                continue  # finished elsewhere meanwhile
            result = await asyncio.to_thread(move_file, self.root, rel, row["sha256"], target)
            state = target.split("/", 1)[0] if result == "moved" else "skipped"
            async with db.pool.acquire() as conn:
                await conn.execute(SQL.landing_move_done, event_id, state)
            if result == "moved":
                moved += 1
                self._known[rel] = None  # gone: the same bytes dropped again are new
                log.info("landing zone: moved %s to %s (event %d)", rel, target, event_id)
            else:
                log.warning("landing zone: left %s in place (event %d): %s", rel, event_id, result)
        return moved

    # -- helpers -------------------------------------------------------------------------

    def _context(self) -> SourceContext:
        if self._ctx is None:
            raise RuntimeError("LandingSource.setup(ctx) must be called before start()")
        return self._ctx

    @property
    def _clock(self) -> Clock:
        return self._context().clock

    def _now(self) -> float:
        """Seconds on the source's clock: quiet periods and due checks use it."""
        return self._clock.now().timestamp()

    def _now_or_zero(self) -> float:
        return 0.0 if self._ctx is None else self._now()


def _file_triggers(router: Router) -> Iterable[FileTrigger]:
    return [r.trigger for r in router.routes_of("file") if isinstance(r.trigger, FileTrigger)]


def _file_triggers_for(router: Router, relative_path: str) -> list[FileTrigger]:
    return [
        r.trigger
        for r in router.routes_on("file", relative_path)
        if isinstance(r.trigger, FileTrigger)
    ]


def _identity_from_key(rel: str, key: str) -> FileIdentity | None:
    prefix, size, mtime_ns, sha = key.rsplit(":", 3)
    if prefix != f"file:{rel}" or not size.isdigit() or not mtime_ns.lstrip("-").isdigit():
        return None
    return FileIdentity(Stat(int(size), int(mtime_ns)), sha)


def _batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# -- file-system side: plain functions run in worker threads ---------------------------
