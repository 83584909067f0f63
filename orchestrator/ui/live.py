"""Live updates for pages: ``GET /api/v1/live`` (server-sent events).

``?run=ID`` follows one run: its state, its tasks' states (only those that
changed, after a first full picture) and its new transitions.
``?workflows=1`` follows the workflow list: each workflow's summary and its
newest runs, sent whole whenever it changed.

One :class:`LiveHub` per process does the reading for every page: it wakes
on this process's commits (:meth:`orchestrator.store.Database.on_commit`: no
NOTIFY is added to any transaction) and on the notifications other
processes already send (:mod:`orchestrator.notices`), lets a burst settle for
a few milliseconds, then reads every watched run in one round of queries,
encodes each run's message once and writes the same bytes to each of its
watchers' connections. A watcher costs one write per message: never a query,
and no task of its own woken (the engine shares this process, and its
cores). A re-read on a timer is the safety net for changes made by processes
that notify nobody (a worker that claims its successors itself).

A watcher too slow to take what it is sent is disconnected; the browser's
``EventSource`` reconnects and starts again from a full picture.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, Field

from orchestrator.api_rules import MAX_ID
from orchestrator.clock import monotonic, real_pause
from orchestrator.notices import CHANNELS
from orchestrator.openapi import operation
from orchestrator.problems import BadInput
from orchestrator.store import SQL, Database
from orchestrator.store.listener import Subscription
from orchestrator.workflow_list import list_workflows

log = logging.getLogger(__name__)

#: Bytes a watcher's connection may hold unsent before it is dropped (it reconnects).
MAX_UNSENT = 8 * 1024 * 1024
#: Newest runs per workflow in the list's strips.
RECENT_RUNS = 20
#: A comment line this often keeps proxies from closing an idle stream (and
#: finds the streams whose page went away).
KEEPALIVE_S = 15.0


@dataclass(frozen=True, slots=True)
class Message:
    """One server-sent event, encoded once for every watcher."""

    raw: bytes
    framed: bytes
    """The same as one chunk of a chunked HTTP/1.1 body."""

    @classmethod
    def of(cls, raw: bytes) -> Message:
        return cls(raw, b"".join((b"%x\r\n" % len(raw), raw, b"\r\n")))


def encode(event: str, data: Any) -> Message:
    return Message.of(b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")


KEEPALIVE = Message.of(b": keepalive\n\n")


@dataclass(eq=False)
class Watcher:
    """One open stream. The hub writes to its connection directly, after the
    response's headers and first bytes went out through aiohttp."""

    transport: asyncio.Transport
    chunked: bool
    """The body is chunked (HTTP/1.1): each message goes out as one chunk."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once nothing more is written: the stream's handler then returns."""

    def send(self, message: Message) -> None:
        if self.ended.is_set():
            return
        if self.transport.is_closing():  # the page went away
            self.ended.set()
        elif self.transport.get_write_buffer_size() > MAX_UNSENT:
            self.ended.set()  # too slow: it starts again from a full picture
        else:
            self.transport.write(message.framed if self.chunked else message.raw)


@dataclass(eq=False)
class _Run:
    watchers: set[Watcher] = field(default_factory=set)
    joining: set[Watcher] = field(default_factory=set)
    """Watchers waiting for their first, full picture."""
    run: dict[str, Any] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    newest: int = 0
    """The highest transition id sent."""
    sent: list[int] = field(default_factory=list)
    """Transition ids sent above ``newest - LATE_IDS``, ascending."""
    whole: bool = True
    """Read the tasks themselves next round (first picture, or the safety net)."""

    def floor(self) -> int:
        """Forget the ids sent at or below the floor; return it."""
        floor = max(self.newest - LATE_IDS, 0)
        del self.sent[: bisect.bisect_right(self.sent, floor)]
        return floor


#: Transition ids are drawn before commit, so a row can become visible after
#: one with a higher id: each round counts the transitions this many ids below
#: the newest it sent, and reads them again when the count is not what it
#: sent (a commit later than that is caught by the next whole re-read).
LATE_IDS = 512


class LiveHub:
    def __init__(
        self,
        db: Database,
        *,
        settle_s: float = 0.05,
        safety_s: float = 2.0,
        list_gap_s: float = 0.5,
    ) -> None:
        self.db = db
        self.settle_s = settle_s
        """How long a burst of commits may go on before the round that reads it."""
        self.safety_s = safety_s
        self.list_gap_s = list_gap_s
        """The workflow list is read at most this often (it takes several queries)."""
        self._runs: dict[int, _Run] = {}
        self._list_watchers: set[Watcher] = set()
        self._list_message: Message | None = None
        self._list_dirty = True
        self._list_at = 0.0
        self._whole_at = 0.0
        self._kept_alive_at = 0.0
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unhook: Callable[[], None] | None = None
        self._subscriptions: list[Subscription] = []
        self.rounds = 0
        """Rounds of reading done (each serves every watcher)."""
        self.cpu_s = 0.0
        """CPU time this process spent making and writing messages (the
        driver's decoding of the rows read is not in it)."""

    # -- lifecycle -----------------------------------------------------------------

    def _start(self) -> None:
        if self._task is not None:
            return
        self._unhook = self.db.on_commit(self.poke)
        self._subscriptions = [
            self.db.listener.subscribe(channel, self._notified) for channel in CHANNELS
        ]
        self._kept_alive_at = monotonic()
        self._task = asyncio.create_task(self._loop(), name="orchestrator-live")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._unhook is not None:
            self._unhook()
            self._unhook = None
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions = []
        for watcher in self._all_watchers():
            watcher.ended.set()

    def _all_watchers(self) -> list[Watcher]:
        found = list(self._list_watchers)
        for run in self._runs.values():
            found.extend(run.watchers | run.joining)
        return found

    # -- watching --------------------------------------------------------------------

    def watch_run(self, run_id: int, watcher: Watcher) -> None:
        self._start()
        run = self._runs.setdefault(run_id, _Run())
        # Its first picture comes from the next round's task rows, which the
        # others watching get as changes only.
        run.joining.add(watcher)
        run.whole = True
        self.poke()

    def watch_workflows(self, watcher: Watcher) -> None:
        self._start()
        self._list_watchers.add(watcher)
        if self._list_message is not None:
            watcher.send(self._list_message)
        self._list_dirty = True
        self.poke()

    def leave(self, watcher: Watcher) -> None:
        watcher.ended.set()
        self._list_watchers.discard(watcher)
        for run_id, run in list(self._runs.items()):
            run.watchers.discard(watcher)
            run.joining.discard(watcher)
            if not (run.watchers or run.joining):
                del self._runs[run_id]

    @property
    def watchers(self) -> int:
        return len(self._all_watchers())

    # -- reading ---------------------------------------------------------------------

    def poke(self) -> None:
        """Something was committed: read again soon (if anyone watches).

        Called after every commit of the engine's: it must stay this cheap."""
        if self._runs or self._list_watchers:
            self._dirty.set()
            self._list_dirty = True

    def _notified(self, _payload: str) -> None:
        self.poke()

    async def _loop(self) -> None:
        while True:
            watched = bool(self._runs or self._list_watchers)
            try:
                async with asyncio.timeout(self.safety_s if watched else None):
                    await self._dirty.wait()
            except TimeoutError:  # nothing heard for a while: look anyway
                self._list_dirty = True
            if monotonic() - self._whole_at >= self.safety_s:
                # The safety net: changes no commit hook or NOTIFY told of,
                # and transitions committed later than LATE_IDS allows.
                self._whole_at = monotonic()
                for run in self._runs.values():
                    run.whole = True
                # A run that no longer changes sends its watchers nothing that
                # would find the pages gone.
                for watcher in self._all_watchers():
                    if watcher.transport.is_closing():
                        watcher.ended.set()
            if monotonic() - self._kept_alive_at >= KEEPALIVE_S:
                self._kept_alive_at = monotonic()
                self._send(self._all_watchers(), KEEPALIVE)
            if self.settle_s > 0:
                await real_pause(self.settle_s)  # real time: a burst shares one round
            self._dirty.clear()
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away: the next round tries again
                log.warning("live view could not read the database", exc_info=True)
                await real_pause(self.safety_s)

    def _send(self, watchers: Iterable[Watcher], message: Message) -> None:
        started = time.thread_time()
        for watcher in watchers:
            watcher.send(message)
        self.cpu_s += time.thread_time() - started

    async def _round(self) -> None:
        self.rounds += 1
        if self._runs:
            await self._read_runs()
        if self._list_watchers and self._list_dirty:
            wait = self._list_at + self.list_gap_s - monotonic()
            if wait > 0:
                self._dirty.set()  # come back once the gap has passed
                await real_pause(min(wait, self.list_gap_s))
                return
            self._list_dirty = False
            self._list_at = monotonic()
            await self._read_list()

    async def _read_runs(self) -> None:
        """One round for every watched run: its state and its new transitions
        (the tasks' states follow from them); the task rows themselves only
        for a run's first picture and on the safety-net timer."""
        reading = dict(self._runs)
        """What the queries are asked about (watchers may come and go meanwhile)."""
        ids = list(reading)
        floors = [w.floor() for w in reading.values()]
        newest = [w.newest for w in reading.values()]
        sent = [len(w.sent) for w in reading.values()]
        whole = [i for i, w in reading.items() if w.whole]
        # A watcher joining from now on is served by the next round.
        joining = {i: set(w.joining) for i, w in reading.items()}
        for w in reading.values():
            w.whole = False
        try:
            async with self.db.pool.acquire() as conn:
                runs = await conn.fetch(SQL.live_run_states, ids)
                steps = await conn.fetch(SQL.live_transitions, ids, newest, floors, sent)
                tasks = await conn.fetch(SQL.live_task_states, whole) if whole else []
        except BaseException:
            for i in whole:
                reading[i].whole = True
            raise
        started = time.thread_time()
        changes: dict[int, dict[str, dict[str, Any]]] = {i: {} for i in ids}
        fresh: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        for row in tasks:
            watched = reading[row["run_id"]]
            task = dict(row)
            del task["run_id"]
            if watched.tasks.get(task["task_id"]) != task:
                watched.tasks[task["task_id"]] = task
                changes[row["run_id"]][task["task_id"]] = task
        whole_now = set(whole)
        late: dict[int, set[int]] = {}
        """Per run whose margin was read again, the ids sent in it."""
        for row in steps:
            run_id = row["run_id"]
            watched = reading[run_id]
            if row["id"] > watched.newest:  # rows come in id order
                watched.sent.append(row["id"])
                watched.newest = row["id"]
            else:
                sent_ids = late.get(run_id)
                if sent_ids is None:
                    sent_ids = late[run_id] = set(watched.sent)
                if row["id"] in sent_ids:
                    continue
                bisect.insort(watched.sent, row["id"])
            step = dict(row)
            del step["run_id"]  # the message is about the one run
            fresh[run_id].append(step)
            task_id = step["task_id"]
            if task_id is None or run_id in whole_now:
                continue  # the run's own change, or the task rows say it already
            known = watched.tasks.setdefault(task_id, {"task_id": task_id})
            if step["id"] >= known.get("_step", 0):
                known.update(state=step["to_state"], attempt=step["attempt"], _step=step["id"])
                # Only what the transition says: the row's other columns may be stale.
                changes[run_id][task_id] = {
                    "task_id": task_id,
                    "state": step["to_state"],
                    "attempt": step["attempt"],
                }
        for row in runs:
            watched = reading[row["id"]]
            state = dict(row)
            moved = watched.run != state
            watched.run = state
            if moved or changes[row["id"]] or fresh[row["id"]]:
                message = encode(
                    "run",
                    {
                        "full": False,
                        "run": state,
                        "tasks": list(changes[row["id"]].values()),
                        "transitions": fresh[row["id"]],
                    },
                )
                for watcher in watched.watchers:
                    watcher.send(message)
            ready = joining[row["id"]] & watched.joining
            if ready:
                full = encode(
                    "run",
                    {
                        "full": True,
                        "run": state,
                        "tasks": [
                            {k: v for k, v in t.items() if k != "_step"}
                            for t in watched.tasks.values()
                        ],
                        "transitions": fresh[row["id"]],
                    },
                )
                for watcher in ready:
                    watcher.send(full)
                watched.watchers |= ready
                watched.joining -= ready
        self.cpu_s += time.thread_time() - started

    async def _read_list(self) -> None:
        summaries = await list_workflows(self.db)
        names = [s.name for s in summaries]
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.recent_runs_per_workflow, names, RECENT_RUNS)
        recent: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in rows:
            recent[r["workflow"]].append({"id": r["id"], "state": r["state"]})
        message = encode(
            "workflows",
            {"workflows": [{**asdict(s), "recent": recent[s.name]} for s in summaries]},
        )
        if self._list_message is None or message.raw != self._list_message.raw:
            self._list_message = message
            self._send(self._list_watchers, message)


# -- the route ----------------------------------------------------------------------

HUB_KEY = web.AppKey("live_hub", LiveHub)


class LiveQuery(BaseModel):
    run: int | None = Field(default=None, ge=1, le=MAX_ID, description="Follow this run.")
    workflows: bool = Field(default=False, description="Follow the workflow list.")


class LiveMessage(BaseModel):
    """One server-sent event's data (``event: run`` or ``event: workflows``)."""

    full: bool = Field(
        default=False, description="tasks is the whole picture (each stream's first event)."
    )
    run: dict[str, Any] | None = Field(
        default=None, description="The run's id, workflow, state and times."
    )
    tasks: list[dict[str, Any]] = Field(
        default_factory=list, description="Tasks whose state changed (all of them when full)."
    )
    transitions: list[dict[str, Any]] = Field(
        default_factory=list,
        description="The run's new transitions, in id order, each as in GET /api/v1/runs/{id}: "
        "id, task_id (null: the run's own), from_state, to_state, attempt, at, actor, reason.",
    )
    workflows: list[dict[str, Any]] | None = Field(
        default=None, description="The workflow list, each with its newest runs (`recent`)."
    )


@operation(
    summary="Server-sent events following a run or the workflow list",
    response=LiveMessage,
    query=LiveQuery,
    tag="live",
    media="text/event-stream",
    description="Each event's data is a LiveMessage in JSON; the stream stays open.",
)
async def live(request: web.Request) -> web.StreamResponse:
    run_text = request.query.get("run")
    run_id: int | None = None
    if run_text is not None:
        if not run_text.isdigit() or not 1 <= int(run_text) <= MAX_ID:
            raise BadInput("query", "run", f"'run' must be an integer from 1 to {MAX_ID}")
        run_id = int(run_text)
    elif request.query.get("workflows") not in ("1", "true"):
        raise BadInput("query", "run", "give ?run=ID or ?workflows=1")
    hub = request.app[HUB_KEY]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    # Through aiohttp, which sends the headers with it: the hub writes after them.
    await response.write(b"retry: 1000\n\n")
    if request.transport is None:  # the page went away already
        return response
    watcher = Watcher(
        request.transport, chunked=response.headers.get("Transfer-Encoding") == "chunked"
    )
    if run_id is not None:
        hub.watch_run(run_id, watcher)
    else:
        hub.watch_workflows(watcher)
    try:
        await watcher.ended.wait()
    finally:
        hub.leave(watcher)
    return response


def add_routes(app: web.Application) -> None:
    async def start_hub(app: web.Application) -> None:
        from orchestrator.api import ENGINE_KEY

        engine = app.get(ENGINE_KEY)
        if engine is not None:  # an app built without an engine serves no live pages
            app[HUB_KEY] = LiveHub(engine.db)

    async def stop_hub(app: web.Application) -> None:
        hub = app.get(HUB_KEY)
        if hub is not None:
            await hub.stop()

    app.on_startup.append(start_hub)
    app.on_shutdown.append(stop_hub)
    app.router.add_get("/api/v1/live", live)
