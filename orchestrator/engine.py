"""The engine: applies the pure decisions of :mod:`orchestrator.decisions` to
the database, atomically.

Everything that changes a run happens here, in one transaction per batch:
creating runs, recording finished attempts, queuing or skipping successors,
finishing runs, starting runs that waited for ``max_active_runs`` and, when the
caller has free slots, claiming the next work in the same commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator import waits
from orchestrator.compiled import CompiledWorkflow, SpecCache
from orchestrator.decisions import decide, run_outcome
from orchestrator.deferral import Defer, Resolution, run_key
from orchestrator.errors import DuplicateRunError, OrchestratorError, UnknownWorkflowError
from orchestrator.spec import WorkflowSpec
from orchestrator.states import TERMINAL_TASK_STATES, RunState, TaskState, legal_run_sources
from orchestrator.store import SQL, Database

log = logging.getLogger(__name__)

RUNS_CHANNEL = "orchestrator_runs"
TASKS_CHANNEL = "orchestrator_tasks"
_NOTIFY_PAYLOAD_MAX = 7900  # PostgreSQL caps a payload just under 8000 bytes


@dataclass(frozen=True, slots=True)
class RunRequest:
    workflow: str
    params: Mapping[str, Any] = field(default_factory=dict)
    logical_date: datetime | None = None
    interval_end: datetime | None = None
    event_id: int | None = None
    """The event that started the run, if any."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A task instance leased to a worker, with what its handler needs."""

    id: int
    run_id: int
    task_id: str
    attempt: int
    handler: str
    workflow: str
    version: str
    params: dict[str, Any]
    logical_date: datetime | None
    interval_end: datetime | None
    upstream: dict[str, Any]
    resumed: Any = None
    """What woke this task, when a handler deferred and is resumed."""


@dataclass(slots=True)
class Outcome:
    """The end of one attempt, to be recorded under its lease."""

    id: int
    run_id: int
    task_id: str
    attempt: int
    owner: str
    target: TaskState
    output: str | None = None
    """JSON text."""
    error: str | None = None
    delay_s: float | None = None
    """For ``up_for_retry``: when the next attempt may start."""
    reason: str = ""
    expired_only: bool = False
    """Set by the lease reaper: apply only if the lease has really run out."""
    deferral: Defer | None = None
    """For ``deferred``: what the attempt waits for."""


@dataclass(slots=True)
class Completion:
    accepted: list[Outcome]
    rejected: list[Outcome]
    claimed: list[Claimed]
    finished_runs: dict[int, RunState]


def _claimed(rows: Iterable[asyncpg.Record]) -> list[Claimed]:
    return [
        Claimed(
            id=r["id"],
            run_id=r["run_id"],
            task_id=r["task_id"],
            attempt=r["attempt"],
            handler=r["handler"],
            workflow=r["workflow"],
            version=r["version"],
            params=orjson.loads(r["params"]),
            logical_date=r["logical_date"],
            interval_end=r["interval_end"],
            upstream=orjson.loads(r["upstream"]) if r["upstream"] else {},
            resumed=orjson.loads(r["resume_payload"]) if r["resume_payload"] else None,
        )
        for r in rows
    ]


class Engine:
    def __init__(self, db: Database, *, lease_s: float = 30.0, default_pool_slots: int = 128):
        self.db = db
        self.specs = SpecCache()
        self.lease_s = lease_s
        self.default_pool_slots = default_pool_slots

    # -- workflows ---------------------------------------------------------

    def cached_workflow(self, version: str) -> CompiledWorkflow | None:
        """The compiled workflow of ``version`` if this process has it already."""
        return self.specs.peek(version)

    async def compiled_workflow(self, version: str) -> CompiledWorkflow:
        """The compiled workflow of ``version``, read from the database the first time."""
        found = self.specs.peek(version)
        return found if found is not None else await self.specs.get(self.db.pool, version)

    async def register(self, specs: Iterable[WorkflowSpec]) -> dict[str, str]:
        """Store each spec's version and make it current for new runs."""
        versions: dict[str, str] = {}
        async with self.db.transaction() as conn:
            for spec in specs:
                compiled = self.specs.add(spec)
                await conn.execute(
                    SQL.upsert_version, compiled.version, spec.name, spec.canonical_json().decode()
                )
                await conn.execute(
                    SQL.set_current_version, spec.name, compiled.version, spec.max_active_runs
                )
                if compiled.pools:
                    await conn.execute(
                        SQL.ensure_pools, sorted(compiled.pools), self.default_pool_slots
                    )
                versions[spec.name] = compiled.version
        return versions

    async def set_pool(self, name: str, slots: int) -> None:
        if slots < 1:
            raise OrchestratorError(f"pool {name!r} needs at least 1 slot, not {slots}")
        async with self.db.pool.acquire() as conn:
            await conn.execute(SQL.set_pool, name, slots)

    # -- runs ----------------------------------------------------------------

    async def trigger(
        self,
        workflow: str,
        params: Mapping[str, Any] | None = None,
        *,
        actor: str = "api",
        logical_date: datetime | None = None,
    ) -> int:
        ids = await self.create_runs(
            [RunRequest(workflow, params or {}, logical_date)], actor=actor
        )
        return ids[0]

    async def create_runs(self, requests: Sequence[RunRequest], *, actor: str) -> list[int]:
        """Create runs in one transaction; runs over ``max_active_runs`` wait queued."""
        if not requests:
            return []
        async with self.db.transaction() as conn:
            ids = await self.allocate_run_ids(conn, len(requests))
            await self.create_runs_in(conn, requests, ids, actor=actor)
            return ids

    @staticmethod
    async def allocate_run_ids(conn: asyncpg.Connection, count: int) -> list[int]:
        return [r["id"] for r in await conn.fetch(SQL.allocate_run_ids, count)]

    async def create_runs_in(
        self,
        conn: asyncpg.Connection,
        requests: Sequence[RunRequest],
        ids: Sequence[int],
        *,
        actor: str,
    ) -> None:
        """Create runs with preallocated ``ids`` inside the caller's transaction
        (event intake writes its events and their runs in one commit)."""
        if not requests:
            return
        names = sorted({r.workflow for r in requests})
        current = {row["name"]: row for row in await conn.fetch(SQL.current_versions, names)}
        for name in names:
            if name not in current:
                known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
                raise UnknownWorkflowError(name, known)
        compiled = {n: await self.specs.get(conn, current[n]["current_version"]) for n in names}
        room: dict[str, int] = {}
        for name in names:
            limit = current[name]["max_active_runs"]
            if limit is not None:
                await conn.execute(SQL.lock_workflow, name)
                running = await conn.fetchval(SQL.count_running_runs, name)
                room[name] = max(0, limit - running)
        states: list[str] = []
        params_json: list[str] = []
        started: list[tuple[int, CompiledWorkflow]] = []
        for run_id, req in zip(ids, requests, strict=True):
            c = compiled[req.workflow]
            if not isinstance(req.params, Mapping):
                raise OrchestratorError(f"params for {req.workflow!r} must be a JSON object")
            if req.workflow in room:
                start = room[req.workflow] > 0
                room[req.workflow] -= int(start)
            else:
                start = True
            states.append(RunState.RUNNING if start else RunState.QUEUED)
            if start:
                started.append((run_id, c))
            try:
                params_json.append(orjson.dumps({**c.spec.param_defaults, **req.params}).decode())
            except TypeError as exc:
                raise OrchestratorError(
                    f"params for {req.workflow!r} are not JSON-serialisable: {exc}"
                ) from None
        try:
            await conn.execute(
                SQL.insert_runs,
                list(ids),
                [r.workflow for r in requests],
                [compiled[r.workflow].version for r in requests],
                states,
                params_json,
                [r.logical_date for r in requests],
                [r.interval_end for r in requests],
                [r.event_id for r in requests],
                actor,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "runs_logical_date":
                raise DuplicateRunError(
                    "a run of this workflow for this logical date already exists: "
                    f"{exc.detail or exc}"
                ) from None
            raise
        await self._insert_tasks(conn, started, actor)
        if started:
            await conn.execute(SQL.notify_tasks)

    async def _insert_tasks(
        self, conn: asyncpg.Connection, runs: Sequence[tuple[int, CompiledWorkflow]], actor: str
    ) -> None:
        if not runs:
            return
        cols: list[list[Any]] = [[] for _ in range(10)]
        for run_id, c in runs:
            for row in c.rows:
                cols[0].append(run_id)
                cols[1].append(row.task_id)
                cols[2].append(row.state.value)
                cols[3].append(row.handler)
                cols[4].append(row.pool)
                cols[5].append(row.priority)
                cols[6].append(row.limited)
                cols[7].append(row.concurrency_key)
                cols[8].append(row.max_concurrency)
                cols[9].append("{" + ",".join(f'"{n}"' for n in row.needs) + "}")
        await conn.execute(SQL.insert_task_instances, *cols, actor)

    # -- claims and completions ------------------------------------------------

    async def claim(self, owner: str, limit: int) -> tuple[list[Claimed], bool]:
        """Claim up to ``limit`` tasks. Returns them and whether limited work
        (named pools, per-task caps) is waiting: while it is, claims go through
        one serialised statement that orders both kinds by priority; otherwise
        through the lock-free fast path."""
        async with self.db.pool.acquire() as conn:
            waiting: bool = await conn.fetchval(SQL.limited_waiting)
            if limit <= 0:
                return [], waiting
            if not waiting:
                return _claimed(await conn.fetch(SQL.claim, owner, limit, self.lease_s)), False
            async with conn.transaction():
                await conn.execute(SQL.lock_limited_claims)
                rows = await conn.fetch(
                    SQL.claim_mixed, owner, limit, self.lease_s, self.default_pool_slots
                )
            return _claimed(rows), True

    async def complete(
        self,
        outcomes: Sequence[Outcome],
        *,
        actor: str,
        claim_for: str | None = None,
        claim_limit: int = 0,
    ) -> Completion:
        """Record finished attempts and everything that follows from them, in
        one transaction; optionally claim up to ``claim_limit`` new tasks for
        ``claim_for`` in the same commit."""
        async with self.db.transaction() as conn:
            # Same lock order as intake (correlation keys, then runs): a sensor
            # deferring while its event arrives cannot deadlock with it.
            keys = sorted(
                {
                    o.deferral.match_key
                    for o in outcomes
                    if o.deferral is not None and o.deferral.match_key
                }
            )
            if keys:
                await conn.execute(SQL.lock_keys, keys)
            run_rows = await conn.fetch(SQL.lock_runs, sorted({o.run_id for o in outcomes}))
            runs = {r["id"]: r for r in run_rows}
            # Only runs still running can have successors to decide.
            deciding = sorted(
                {
                    o.run_id
                    for o in outcomes
                    if o.target in TERMINAL_TASK_STATES
                    and o.run_id in runs
                    and runs[o.run_id]["state"] == RunState.RUNNING
                }
            )
            accepted_ids, states = await self._record_attempts(conn, outcomes, actor, deciding)
            # By attempt too: a late result of an older attempt may share the batch.
            accepted = [o for o in outcomes if (o.id, o.attempt) in accepted_ids]
            rejected = [o for o in outcomes if (o.id, o.attempt) not in accepted_ids]
            changed: dict[int, list[str]] = defaultdict(list)
            for o in accepted:
                if o.run_id in states:
                    states[o.run_id][o.task_id] = o.target
                    if o.target in TERMINAL_TASK_STATES:
                        changed[o.run_id].append(o.task_id)
            queued, finished = await self.advance(conn, runs, states, changed, actor)
            deferred = [o for o in accepted if o.deferral is not None]
            if deferred:
                early = await waits.record(self, conn, deferred)
                if early:
                    more_queued, more_finished = await self.resolve_in(conn, early, actor=actor)
                    queued += more_queued
                    finished.update(more_finished)
            claimed: list[Claimed] = []
            if claim_for is not None and claim_limit > 0:
                claimed = _claimed(
                    await conn.fetch(SQL.claim, claim_for, claim_limit, self.lease_s)
                )
            if queued > len(claimed):
                await conn.execute(SQL.notify_tasks)
            if finished:
                await self.notify_runs(conn, finished)
        return Completion(accepted, rejected, claimed, finished)

    async def _record_attempts(
        self,
        conn: asyncpg.Connection,
        outcomes: Sequence[Outcome],
        actor: str,
        deciding: list[int],
    ) -> tuple[set[tuple[int, int]], dict[int, dict[str, TaskState]]]:
        """Returns the accepted (id, attempt) pairs and the task states of ``deciding``
        runs as they were before this batch (the caller overlays the batch)."""
        rows = await conn.fetch(
            SQL.record_attempts,
            [o.id for o in outcomes],
            [o.attempt for o in outcomes],
            [o.target.value for o in outcomes],
            [o.output for o in outcomes],
            [o.error for o in outcomes],
            [o.delay_s for o in outcomes],
            [o.owner for o in outcomes],
            [o.expired_only for o in outcomes],
            [o.reason or o.target.value for o in outcomes],
            TaskState.RUNNING.value,
            actor,
            bool(deciding),
            deciding,
        )
        accepted: set[tuple[int, int]] = set()
        states: dict[int, dict[str, TaskState]] = defaultdict(dict)
        for r in rows:
            if r["id"] is not None:
                accepted.add((r["id"], r["attempt"]))
            else:
                states[r["run_id"]][r["task_id"]] = TaskState(r["state"])
        return accepted, states

    async def advance(
        self,
        conn: asyncpg.Connection,
        runs: Mapping[int, asyncpg.Record],
        states: Mapping[int, dict[str, TaskState]],
        changed: Mapping[int, list[str]],
        actor: str,
    ) -> tuple[int, dict[int, RunState]]:
        """Decide successors and run outcomes for runs whose tasks just ended."""
        live = list(changed)
        if not live:
            return 0, {}
        moves: list[list[Any]] = [[], [], [], [], []]
        finished: dict[int, RunState] = {}
        for run_id in live:
            compiled = await self.specs.get(conn, runs[run_id]["version"])
            run_states = states[run_id]
            for t in decide(compiled.dag, run_states, changed[run_id]):
                moves[0].append(run_id)
                moves[1].append(t.task_id)
                moves[2].append(t.source.value)
                moves[3].append(t.target.value)
                moves[4].append(f"trigger rule {compiled.dag.rules[t.task_id].value}")
                run_states[t.task_id] = t.target
            outcome = run_outcome(compiled.dag, run_states)
            if outcome is not None:
                finished[run_id] = outcome
        queued = 0
        if moves[0]:
            row = await conn.fetchrow(SQL.apply_decisions, *moves, actor)
            assert row is not None
            queued = row["queued"]
            if row["moved"] != len(moves[0]):
                log.error(
                    "guarded successor update moved %d of %d task instances",
                    row["moved"],
                    len(moves[0]),
                )
        if finished:
            more, also_finished = await self._finish_runs(conn, runs, finished, actor)
            queued += more
            finished = {**finished, **also_finished}
        return queued, finished

    async def _finish_runs(
        self,
        conn: asyncpg.Connection,
        runs: Mapping[int, asyncpg.Record],
        finished: Mapping[int, RunState],
        actor: str,
    ) -> tuple[int, dict[int, RunState]]:
        """End runs; start runs that waited for their workflow's max_active_runs;
        end waits on these runs (sensor.run). Returns the number of task
        instances queued, and other runs that ended because of that."""
        ids = list(finished)
        done = await conn.fetch(
            SQL.finish_runs,
            ids,
            [finished[i].value for i in ids],
            legal_run_sources(RunState.SUCCESS),
            actor,
            "all tasks ended",
        )
        workflows = {r["workflow"] for r in done}
        queued = 0
        for name in sorted(workflows):
            queued += await self._start_waiting_runs(conn, name, actor)
        # Runs that others wait for (sensor.run): end those waits in this commit.
        keys = sorted(
            {run_key(r["workflow"], r["logical_date"], r["state"]) for r in done}
            | {run_key(r["workflow"], None, r["state"]) for r in done}
        )
        waiting = await conn.fetch(SQL.waiting_for_keys, keys) if keys else []
        also_finished: dict[int, RunState] = {}
        if waiting:
            ended = {run_key(r["workflow"], r["logical_date"], r["state"]): r["id"] for r in done}
            ended.update({run_key(r["workflow"], None, r["state"]): r["id"] for r in done})
            more, also_finished = await self.resolve_in(
                conn,
                [
                    Resolution(
                        w["id"],
                        "success",
                        {"run_id": ended[w["match_key"]]},
                        reason=f"run {ended[w['match_key']]} ended",
                    )
                    for w in waiting
                ],
                actor=actor,
            )
            queued += more
        return queued, also_finished

    async def _start_waiting_runs(self, conn: asyncpg.Connection, workflow: str, actor: str) -> int:
        rows = await conn.fetch(SQL.current_versions, [workflow])
        if not rows or rows[0]["max_active_runs"] is None:
            return 0
        await conn.execute(SQL.lock_workflow, workflow)
        running = await conn.fetchval(SQL.count_running_runs, workflow)
        room = rows[0]["max_active_runs"] - running
        if room <= 0:
            return 0
        waiting = await conn.fetch(SQL.queued_runs, workflow, room)
        if not waiting:
            return 0
        started = await conn.fetch(SQL.start_runs, [r["id"] for r in waiting], actor)
        started_ids = {r["id"] for r in started}
        batch = [
            (r["id"], await self.specs.get(conn, r["version"]))
            for r in waiting
            if r["id"] in started_ids
        ]
        await self._insert_tasks(conn, batch, actor)
        return sum(sum(1 for row in c.rows if row.state == TaskState.QUEUED) for _, c in batch)

    async def notify_runs(self, conn: asyncpg.Connection, finished: Mapping[int, RunState]) -> None:
        payload = ",".join(str(i) for i in finished)
        if len(payload) > _NOTIFY_PAYLOAD_MAX:
            payload = ""  # listeners re-check every run they wait for
        await conn.execute(SQL.notify_runs, payload)

    # -- deferrals (orchestrator.waits) ------------------------------------------

    async def resolve(
        self, resolutions: Sequence[Resolution], *, actor: str
    ) -> tuple[int, dict[int, RunState]]:
        """End waits in a transaction of their own (see :func:`waits.resolve_in`)."""
        async with self.db.transaction() as conn:
            queued, finished = await self.resolve_in(conn, resolutions, actor=actor)
            if queued:
                await conn.execute(SQL.notify_tasks)
            if finished:
                await self.notify_runs(conn, finished)
            return queued, finished

    async def resolve_in(
        self, conn: asyncpg.Connection, resolutions: Sequence[Resolution], *, actor: str
    ) -> tuple[int, dict[int, RunState]]:
        return await waits.resolve_in(self, conn, resolutions, actor=actor)

    # -- leases ------------------------------------------------------------------

    async def heartbeat(self, owner: str) -> None:
        async with self.db.pool.acquire() as conn:
            await conn.execute(SQL.heartbeat, owner, self.lease_s)

    async def expire_leases(self, *, actor: str, limit: int = 500) -> int:
        """Attempts whose lease ran out (worker died or froze) are lost: retry
        or fail them per their policy. Returns how many were taken back."""
        from orchestrator.retry import decide_failure  # local: keeps import graph flat

        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.expired_leases, limit)
            if not rows:
                return 0
            outcomes = []
            for r in rows:
                compiled = await self.specs.get(conn, r["version"])
                decision = decide_failure(compiled.retry[r["task_id"]], r["attempt"], None)
                outcomes.append(
                    Outcome(
                        id=r["id"],
                        run_id=r["run_id"],
                        task_id=r["task_id"],
                        attempt=r["attempt"],
                        owner=r["lease_owner"],
                        target=decision.target,
                        delay_s=decision.delay_s
                        if decision.target == TaskState.UP_FOR_RETRY
                        else None,
                        error=f"attempt {r['attempt']} lost: lease held by {r['lease_owner']} "
                        "expired (worker died or stopped heartbeating)",
                        reason="lease expired",
                        expired_only=True,
                    )
                )
        result = await self.complete(outcomes, actor=actor)
        for o in result.accepted:
            log.warning(
                "lease of run %s task %s attempt %d expired; now %s",
                o.run_id,
                o.task_id,
                o.attempt,
                o.target.value,
            )
        return len(result.accepted)
