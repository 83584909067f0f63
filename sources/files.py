"""The landing zone: complete files under ``settings.landing_dir`` become events.

How a file travels:

1. *Seen* — by the watcher (``watchfiles``), by the scan at start (files
   dropped while the orchestrator was stopped) or by the periodic full rescan
   (anything the watcher missed: an overflowed inotify queue, a directory
   moved in whole). Temporary names are never looked at
   (:func:`sources.completeness.is_ignored`).
   What the watcher or a scan saw (size and mtime) is the file's first
   observation, so a file that stays quiet is looked at once more, when its
   quiet period has passed.
2. *Checked* — stat and marker look-ups run in a worker thread, up to
   ``batch_max`` files per call; :func:`sources.completeness.judge` decides.
   Files still settling wait on a small heap of next-check times (no busy
   polling); files waiting for a marker are parked until something changes in
   their directory or the next rescan. Complete files are hashed (SHA-256, in
   threads) by the same pass and queued for recording.
3. *Recorded* — by tasks of their own (:mod:`sources.landing_record`), so
   checking and hashing the next files go on while a batch is written: one
   transaction per up to ``batch_max`` queued files, holding the events, the
   runs they start, the dead letters of refused paths and the pending moves.
   A file counts as taken only after that commit.
4. *Moved* (``on_done: move``) — once every run the event started has ended,
   the file goes to ``processed/<path>`` (all succeeded) or ``failed/<path>``
   (:mod:`sources.landing_moves`).

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
import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from typing import TypeVar

from watchfiles import awatch

from orchestrator.backoff import Backoff
from orchestrator.clock import Clock, wait_for_event
from orchestrator.intake import Router
from orchestrator.metrics import METRICS
from orchestrator.sources import SourceContext, loop_stopped
from sources.completeness import MarkerNames, Observation, Rule, Stat, judge
from sources.landing_fs import (
    Found,
    Refusal,
    classify_paths,
    digest_many,
    look_many,
    walk_tree,
)
from sources.landing_moves import move_finished
from sources.landing_pending import Candidate, CheckSchedule
from sources.landing_record import (
    FileIdentity,
    LandingRecorder,
    file_triggers,
    file_triggers_for,
)
from sources.queries import SQL

__all__ = ["FileIdentity", "LandingSource"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Most threads hashing one pass's complete files, one per ``HASH_SHARE_BYTES``
#: of content: hashing large files releases the GIL, while for small ones the
#: hand-off to more threads costs more than it gains.
HASH_THREADS = 4
HASH_SHARE_BYTES = 16 << 20
#: After a failed pass (database down, ...) its files are looked at again this much
#: later, doubling per failed pass in a row up to ``RETRY_MAX_S``.
RETRY_S = 1.0
RETRY_MAX_S = 30.0


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
        self._pending: dict[str, Candidate] = {}
        self._rules: dict[tuple[int, ...], Rule] = {}
        self._looks = CheckSchedule(self._pending)
        self._known: dict[str, FileIdentity | None] = {}
        self._recorder = LandingRecorder(
            batch_max=batch_max, known=self._known, look_again=self._look_again
        )
        self._stop_watching = asyncio.Event()
        self._busy = False
        self._tasks: list[asyncio.Task[None]] = []
        self.scans = 0
        """Full scans finished (the first one runs at start)."""
        self.looks = 0
        """Files looked at by checks (what the watcher and scans see is not counted)."""

    # -- Source protocol ----------------------------------------------------------------

    def setup(self, ctx: SourceContext) -> None:
        self._ctx = ctx

    def use_router(self, router: Router) -> None:
        self._router = router
        self._recorder.router = router
        self._markers = MarkerNames(t for t in file_triggers(router))
        # New rules may complete (or stop parking) files already waiting.
        self._rules = {}
        now = self._now_or_zero()
        for rel, cand in self._pending.items():
            cand.rule = None
            if cand.due is None and not cand.checking:
                self._looks.schedule(rel, cand, now)

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
            *self._recorder.start(ctx, self.root),
            asyncio.create_task(self._mover(), name="landing-move"),
        ]
        log.info("landing zone %s: watching (full rescan every %gs)", self.root, self._rescan_s)
        # Read when scraped: the files seen and not taken in yet (being
        # checked, or complete and waiting for their commit).
        METRICS.landing_pending.set_function(
            lambda: len(self._pending.keys() | self._recorder.taking.keys())
        )

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

    @property
    def ingest_calls(self) -> int:
        """Transactions that recorded files or dead letters."""
        return self._recorder.ingest_calls

    def seen(self, relative_path: str) -> FileIdentity | None:
        """The last recorded (or touched) identity of a path, if known."""
        return self._known.get(relative_path)

    @property
    def idle(self) -> bool:
        """Nothing due, being checked or being recorded (files parked until their
        marker appears may remain)."""
        if self._busy or not self._recorder.idle:
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
            self._recorder.refuse(refusal)
        self._offer(found.files)

    def _offer(self, stats: Mapping[str, Stat | None]) -> None:
        """Files seen (with their stat; None: look again from scratch)."""
        now = self._now()
        for rel, stat in stats.items():
            if self._markers.matches(rel):
                self._looks.unpark(posixpath.dirname(rel), now)
                continue
            if stat is not None and self._unchanged(rel, stat):
                continue  # recorded (or being recorded) as it is: the common rescan case
            cand = self._pending.get(rel)
            if cand is None:
                cand = self._pending[rel] = Candidate()
            elif cand.checking:
                cand.changed = True
                continue
            if stat is not None and (cand.observation is None or cand.observation.stat != stat):
                # Seen as it is now (the stat was taken before ``now``): the
                # first of the two looks a quiet period needs.
                cand.observation = Observation(stat, now)
            when = self._next_look(rel, cand, now)
            if cand.due is None or cand.due < when:
                self._looks.schedule(rel, cand, when)
            # Due earlier (a retry, a marker look): that check sees whatever changed.

    def _unchanged(self, rel: str, stat: Stat) -> bool:
        known = self._known.get(rel)
        return (known is not None and known.stat == stat) or self._recorder.taking.get(rel) == stat

    def _next_look(self, rel: str, cand: Candidate, now: float) -> float:
        """When a look can decide: once the quiet period since the last
        observation has passed, or now when markers must be looked for."""
        rule = self._rule_of(rel, cand)
        if cand.observation is None or rule.markers or not rule.quiet_s:
            return now
        return max(now, cand.observation.since + rule.quiet_s)

    def _forget_absent(self, found: Found) -> None:
        """Keep memory bounded by the files present; a path that comes back is
        looked up in the database again."""
        present = found.files.keys() | {r.path for r in found.refused}
        busy = self._pending.keys() | self._recorder.taking.keys()
        for table in (self._known, self._recorder.refused):
            for rel in [r for r in table if r not in present and r not in busy]:
                del table[rel]

    # -- checking ------------------------------------------------------------------------

    async def _pump(self) -> None:
        backoff = Backoff(RETRY_S, RETRY_MAX_S)
        while True:
            now = self._now()
            due = self._looks.pop_due(now, self._batch_max)
            if not due:
                wake = self._looks.wake
                wake.clear()
                await wait_for_event(self._clock, wake, self._looks.next_in(now))
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
                    cand = self._pending.setdefault(rel, Candidate())
                    cand.checking = False
                    self._looks.schedule(rel, cand, later)
                await self._clock.sleep(delay)
            finally:
                self._busy = False

    async def _check(self, rels: list[str]) -> None:
        self.looks += len(rels)
        await self._load_known([rel for rel in rels if rel not in self._known])
        rules = {rel: self._rule_of(rel, self._pending[rel]) for rel in rels}
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
                if isinstance(found, Refusal):
                    self._recorder.refuse(found)
                continue
            if self._unchanged(rel, found):
                del self._pending[rel]
                continue
            verdict = judge(rules[rel], cand.observation, found, present, now, relative_path=rel)
            cand.observation = verdict.observation
            cand.waiting_for = verdict.waiting_for
            if verdict.complete:
                del self._pending[rel]
                ready.append((rel, found))
            elif verdict.check_at is not None:
                self._looks.schedule(rel, cand, verdict.check_at)
            elif cand.changed:
                self._looks.schedule(rel, cand, now)
            else:
                self._looks.park(rel, cand)
            cand.changed = False
        for rel, stat, sha in await self._digest(ready):
            if sha is None:  # changed (or vanished) while hashing: look again
                self._offer({rel: None})
                continue
            self._recorder.put(rel, stat, sha)

    def _look_again(self, rels: Sequence[str], when: float) -> None:
        """Files that could not be recorded: seen anew, looked at from ``when``."""
        for rel in rels:
            if rel not in self._pending:  # else already seen anew, and looked at soon
                cand = self._pending[rel] = Candidate()
                self._looks.schedule(rel, cand, when)

    def _rule_of(self, rel: str, cand: Candidate) -> Rule:
        if cand.rule is None:
            triggers = file_triggers_for(self._router, rel)
            key = tuple(map(id, triggers))  # files of one glob share their rule
            rule = self._rules.get(key)
            if rule is None:
                rule = Rule.for_triggers(triggers, default_quiet_s=self._default_quiet_s)
                self._rules[key] = rule
            cand.rule = rule
        return cand.rule

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

    async def _digest(self, ready: list[tuple[str, Stat]]) -> list[tuple[str, Stat, str | None]]:
        if not ready:
            return []
        content = sum(stat.size for _, stat in ready)
        threads = max(1, min(HASH_THREADS, content // HASH_SHARE_BYTES))
        size = -(-len(ready) // threads)
        parts = await asyncio.gather(
            *(
                asyncio.to_thread(digest_many, self.root, ready[i : i + size])
                for i in range(0, len(ready), size)
            )
        )
        return [item for part in parts for item in part]

    # -- moving finished files -----------------------------------------------------------

    async def _mover(self) -> None:
        while True:
            try:
                await self.move_finished()
            except Exception:
                log.exception("moving finished landing-zone files failed; retrying")
            # Without a move trigger only moves left from an earlier
            # configuration remain: looking at the rescan pace is enough.
            moving = any(t.on_done == "move" for t in file_triggers(self._router))
            await self._clock.sleep(self._move_interval_s if moving else self._rescan_s)

    async def move_finished(self, limit: int = 500) -> int:
        """Move the files whose runs have all ended; returns how many moved."""
        moved = await move_finished(self._context().engine.db, self.root, limit)
        for rel in moved:
            self._known[rel] = None  # gone: the same bytes dropped again are new
        return len(moved)

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


def _identity_from_key(rel: str, key: str) -> FileIdentity | None:
    prefix, size, mtime_ns, sha = key.rsplit(":", 3)
    if prefix != f"file:{rel}" or not size.isdigit() or not mtime_ns.lstrip("-").isdigit():
        return None
    return FileIdentity(Stat(int(size), int(mtime_ns)), sha)


def _batched(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
