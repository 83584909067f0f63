"""The engine: carries out the commit plan of :mod:`orchestrator.plan` in
the database, atomically.

Everything that changes a run happens here, in one transaction per batch:
creating runs, recording finished attempts, queuing or skipping successors,
finishing runs, starting runs that waited for ``max_active_runs``, ending
waits and, when the caller has free slots, claiming the next work in the same
commit. The decisions are the planner's; the engine answers its requests with
named SQL and sends the unit of work's notifications once, at the end.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from orchestrator import audit, plan as p, recording, sla, waits
from orchestrator.alert_spec import AlertRule
from orchestrator.alerts import AlertRecorder
from orchestrator.clock import SYSTEM_CLOCK, Clock
from orchestrator.compiled import CompiledWorkflow, SpecCache
from orchestrator.deferral import Resolution
from orchestrator.engine_types import (
    Claimed,
    Completion,
    HandOver,
    LocalWorker,
    RunRequest,
    claimed_from_rows,
)
from orchestrator.errors import DuplicateRunError, OrchestratorError, UnknownWorkflowError
from orchestrator.leases import lost_attempt
from orchestrator.metrics import METRICS
from orchestrator.notices import Notices
from orchestrator.plan import Outcome
from orchestrator.run_rows import run_row, runs_document, task_template
from orchestrator.spec import WorkflowSpec
from orchestrator.states import TASK_STATE_BY_NAME, RunState, TaskState, legal_run_sources
from orchestrator.store import SQL, Database

log = logging.getLogger(__name__)

__all__ = ["Claimed", "Completion", "Engine", "Outcome", "RunRequest"]


class Engine:
    def __init__(
        self,
        db: Database,
        *,
        lease_s: float = 30.0,
        default_pool_slots: int = 128,
        clock: Clock = SYSTEM_CLOCK,
        alert_rules: Sequence[AlertRule] = (),
    ):
        self.db = db
        #: Leases are stamped on this clock (the database's own for real time).
        self.clock = clock
        self.specs = SpecCache()
        self.lease_s = lease_s
        self.default_pool_slots = default_pool_slots
        #: Raises the alerts of what the commits do (workflow and project-wide rules).
        self.alerts = AlertRecorder(alert_rules, clock)
        #: The worker of this process, if any: commits that queue work hand it some.
        self.local: LocalWorker | None = None

    # -- workflows ---------------------------------------------------------

    def cached_workflow(self, version: str) -> CompiledWorkflow | None:
        """The compiled workflow of ``version`` if this process has it already."""
        return self.specs.peek(version)

    async def compiled_workflow(
        self, version: str, conn: asyncpg.Connection | None = None
    ) -> CompiledWorkflow:
        """The compiled workflow of ``version``, read from the database the first
        time (in ``conn``'s transaction when given)."""
        return await self.specs.get(conn if conn is not None else self.db.pool, version)

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

    async def set_pool(self, name: str, slots: int, *, actor: str, reason: str = "") -> None:
        if slots < 1:
            raise OrchestratorError(f"pool {name!r} needs at least 1 slot, not {slots}")
        async with self.db.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(SQL.set_pool, name, slots) is None:
                return  # already so: nothing to record
            await audit.record(
                conn,
                audit.Action(actor, "pool", reason, detail={"pool": name, "slots": slots}),
            )

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

    @contextlib.asynccontextmanager
    async def unit(
        self, *, hand_over: bool = True
    ) -> AsyncIterator[tuple[asyncpg.Connection, Notices]]:
        """A transaction and the notifications it collects, sent as its last
        statement (delivered at commit). When it queued work and this process
        has a worker with free slots, it claims for that worker too (unless
        ``hand_over`` is off: the caller claims itself), which starts the work
        once the commit returns."""
        local = self.local if hand_over else None
        offer = HandOver(local.owner, local.reserve) if local is not None else None
        try:
            async with self.db.transaction() as conn:
                notices = Notices(hand_over=offer)
                yield conn, notices
                if offer is not None:
                    if (
                        notices.queued > offer.queued_then
                        and not offer.limited_waiting
                        and offer.room() > 0
                    ):
                        await self._claim_for(conn, offer)
                    if offer.reserved:
                        notices.claimed_here(
                            len(offer.claimed), offer.reserved, bool(offer.limited_waiting)
                        )
                await notices.send(conn)
        except BaseException:
            if local is not None and offer is not None and offer.reserved:
                local.hand_over([], offer.reserved, None)
            raise
        if local is not None and offer is not None and offer.reserved:
            local.hand_over(offer.claimed, offer.reserved, offer.limited_waiting)

    async def _claim_in(
        self, conn: asyncpg.Connection, owner: str, limit: int
    ) -> tuple[list[Claimed], bool]:
        """Claim unlimited work for ``owner`` in the caller's transaction, and
        whether limited work waits (then nothing is claimed here)."""
        rows = await conn.fetch(SQL.claim, owner, limit, self.lease_s, self.clock.stamp())
        return claimed_from_rows(rows), rows[0]["limited_waiting"]

    async def _claim_for(self, conn: asyncpg.Connection, hand_over: HandOver) -> None:
        """Claim what ``hand_over`` has room for, with the claim statement."""
        claimed, hand_over.limited_waiting = await self._claim_in(
            conn, hand_over.owner, hand_over.room()
        )
        hand_over.claimed += claimed

    async def create_runs(self, requests: Sequence[RunRequest], *, actor: str) -> list[int]:
        """Create runs in one transaction; runs over ``max_active_runs`` wait queued."""
        if not requests:
            return []
        async with self.unit() as (conn, notices):
            names = sorted({r.workflow for r in requests})
            rows = await conn.fetch(SQL.versions_with_run_ids, names, len(requests))
            ids: list[int] = sorted(rows[0]["ids"])
            current = {r["name"]: r for r in rows if r["name"] is not None}
            await self.create_runs_in(
                conn, requests, ids, actor=actor, notices=notices, current=current
            )
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
        notices: Notices,
        current: Mapping[str, asyncpg.Record] | None = None,
    ) -> None:
        """Create runs with preallocated ``ids`` inside the caller's transaction
        (event intake writes its events and their runs in one commit).
        ``current``: the workflows' rows of ``current_versions``, when the
        caller read them already."""
        if not requests:
            return
        names = sorted({r.workflow for r in requests})
        if current is None:
            current = {row["name"]: row for row in await conn.fetch(SQL.current_versions, names)}
        for name in names:
            if name not in current:
                known = [r["name"] for r in await conn.fetch(SQL.list_workflows)]
                raise UnknownWorkflowError(name, known)
        compiled = {n: await self.specs.get(conn, current[n]["current_version"]) for n in names}
        room: dict[str, int] = {}
        for name in names:
            active = await self._active_runs(conn, name, current[name]["max_active_runs"])
            if active is not None:
                room[name] = p.room_left(active)
        starts = p.admit_new([r.workflow for r in requests], room)
        defaults = {name: c.spec.param_defaults for name, c in compiled.items()}
        running, queued = RunState.RUNNING.value, RunState.QUEUED.value
        runs: list[list[Any]] = []
        roots = 0
        for run_id, req, start in zip(ids, requests, starts, strict=True):
            c = compiled[req.workflow]
            if start:
                roots += len(c.dag.roots)
            state = running if start else queued
            runs.append(run_row(run_id, req, c, defaults[req.workflow], state, actor))
        notices.queued += roots
        # The worker of this process may take the roots in the same statement.
        offer = notices.hand_over
        slots = offer.room() if offer is not None and roots and not offer.limited_waiting else 0
        try:
            # The runs, the task instances of those that start, and their transitions.
            rows = await conn.fetch(
                SQL.insert_runs,
                runs_document(runs),
                task_template(compiled[n] for n in names),
                actor,
                offer.owner if offer is not None and slots > 0 else None,
                slots,
                self.lease_s,
                self.clock.stamp(),
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "runs_logical_date":
                raise DuplicateRunError(
                    "a run of this workflow for this logical date already exists: "
                    f"{exc.detail or exc}"
                ) from None
            raise
        if offer is not None and slots > 0 and not rows[0]["others_claimable"]:
            offer.claimed += claimed_from_rows(rows)
            offer.limited_waiting = False
            offer.queued_then = notices.queued
        timed = {name for name, c in compiled.items() if sla.has_deadlines(c.spec)}
        if timed:
            notices.timed_waits |= await sla.arm(
                conn,
                [
                    (run_id, compiled[r.workflow].spec, r.logical_date)
                    for run_id, r in zip(ids, requests, strict=True)
                    if r.workflow in timed
                ],
                self.clock,
            )
        METRICS.runs_created(r.workflow for r in requests)

    @staticmethod
    async def _active_runs(
        conn: asyncpg.Connection, workflow: str, limit: int | None
    ) -> p.ActiveRuns | None:
        """Under the workflow's row lock (held to commit), how many of its runs
        run: creating and starting runs of one workflow is serialised."""
        if limit is None:
            return None
        await conn.execute(SQL.lock_workflow, workflow)
        running: int = await conn.fetchval(SQL.count_running_runs, workflow)
        return p.ActiveRuns(limit, running)

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
            claimed, waiting = await self._claim_in(conn, owner, max(limit, 0))
            if not waiting:
                if claimed:
                    self.db.committed()  # a claim is a commit of its own
                return claimed, False
            if limit <= 0:
                return [], True
            async with conn.transaction():
                await conn.execute(SQL.lock_limited_claims)
                rows = await conn.fetch(
                    SQL.claim_mixed,
                    owner,
                    limit,
                    self.lease_s,
                    self.default_pool_slots,
                    self.clock.stamp(),
                )
            if rows:
                self.db.committed()
            return claimed_from_rows(rows), True

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
        claim = HandOver(claim_for, lambda: claim_limit) if claim_for and claim_limit > 0 else None
        async with self.unit(hand_over=claim_for is None) as (conn, notices):
            done = await self._carry_out(conn, p.commit(outcomes), actor, notices, claim)
            await self._record_outlets(conn, done, actor, notices)
            claimed: list[Claimed] = []
            limited_waiting: bool | None = None
            if claim is not None:
                if claim.limited_waiting is None:
                    # No move was applied, so nothing has claimed yet: claim what
                    # waits. (Work queued after a move is announced; the claim
                    # loop takes it.)
                    await self._claim_for(conn, claim)
                claimed, limited_waiting = claim.claimed, claim.limited_waiting
            # What this worker claims itself needs nobody woken.
            notices.queued += done.queued - len(claimed)
            notices.runs_ended(done.ended_runs)
            notices.timed_waits |= done.timed_waits
        return Completion(done.accepted, done.rejected, claimed, done.ended_runs, limited_waiting)

    # -- deferrals (orchestrator.waits) ------------------------------------------

    async def resolve(
        self, resolutions: Sequence[Resolution], *, actor: str
    ) -> tuple[int, dict[int, RunState]]:
        """End waits in a transaction of their own (see :meth:`resolve_in`)."""
        async with self.unit() as (conn, notices):
            return await self.resolve_in(conn, resolutions, actor=actor, notices=notices)

    async def resolve_in(
        self,
        conn: asyncpg.Connection,
        resolutions: Sequence[Resolution],
        *,
        actor: str,
        notices: Notices,
    ) -> tuple[int, dict[int, RunState]]:
        """End waits in the caller's transaction, each at most once: the task
        moves out of ``deferred`` (success, failed, skipped, or queued to resume
        its handler) and its successors are decided. Returns the number of task
        instances queued and the runs that ended."""
        if not resolutions:
            return 0, {}
        done = await self._carry_out(conn, p.end_waits(resolutions), actor, notices)
        await self._record_outlets(conn, done, actor, notices)
        notices.queued += done.queued
        notices.runs_ended(done.ended_runs)
        return done.queued, done.ended_runs

    async def _record_outlets(
        self, conn: asyncpg.Connection, done: p.Plan, actor: str, notices: Notices
    ) -> None:
        """Tasks with outlets that succeeded in this commit record their dataset
        updates in it too (and start the runs those trigger): exactly once,
        with the success, never for a task that failed or was skipped."""
        producing = []
        for run_id, task_id, version in done.succeeded:
            compiled = await self.specs.get(conn, version)
            if compiled.tasks[task_id].outlets:
                producing.append((run_id, task_id))
        if producing:
            from orchestrator.datasets import record_outlets  # local: datasets uses intake

            await record_outlets(self, conn, producing, actor=actor, notices=notices)

    # -- carrying out a plan -------------------------------------------------------

    async def carry_out(
        self, conn: asyncpg.Connection, planning: p.Planning, *, actor: str, notices: Notices
    ) -> p.Plan:
        """Carry out ``planning`` in the caller's transaction (operator actions
        decide what follows them through the same planner as completions)."""
        done = await self._carry_out(conn, planning, actor, notices)
        notices.queued += done.queued
        notices.runs_ended(done.ended_runs)
        notices.timed_waits |= done.timed_waits
        return done

    async def _carry_out(
        self,
        conn: asyncpg.Connection,
        planning: p.Planning,
        actor: str,
        notices: Notices,
        claim: HandOver | None = None,
    ) -> p.Plan:
        """Answer the planner's requests in ``conn``'s transaction until it is
        done, then raise the alerts of what it did (in the same transaction).
        With ``claim``, moves that queue successors also claim for its worker."""
        answer: Any = None
        while True:
            try:
                request = planning.send(answer)
            except StopIteration as stop:
                done: p.Plan = stop.value
                break
            if claim is not None and isinstance(request, p.ApplyMoves) and claim.room() > 0:
                answer = await recording.apply_moves(
                    conn, request.moves, actor, claim, self.lease_s, self.clock.stamp()
                )
            else:
                answer = await self._answer(conn, request, actor)
        if done.happened:
            await self.alerts.record(conn, done.happened, self.specs, notices)
        return done

    async def _answer(self, conn: asyncpg.Connection, request: p.Ask[Any], actor: str) -> Any:
        """One request of the planner, one named statement (or none: specs are cached)."""
        match request:
            case p.LockKeys(keys):
                await conn.execute(SQL.lock_keys, keys)
                return None
            case p.LockRuns(run_ids):
                return {
                    r["id"]: p.LockedRun(r["id"], r["workflow"], r["version"], RunState(r["state"]))
                    for r in await conn.fetch(SQL.lock_runs, run_ids)
                }
            case p.Dags(versions):
                return {v: (await self.specs.get(conn, v)).dag for v in versions}
            case p.RecordAttempts():
                return await recording.record_attempts(conn, request, actor, self.clock.stamp())
            case p.ApplyMoves(moves):
                return await recording.apply_moves(conn, moves, actor)
            case p.FinishRuns(ends):
                document = [[run_id, state.value] for run_id, state in ends.items()]
                rows = await conn.fetch(
                    SQL.finish_runs,
                    orjson.dumps(document).decode(),
                    legal_run_sources(RunState.SUCCESS),
                    actor,
                    "all tasks ended",
                )
                METRICS.runs_finished((r["workflow"], r["state"]) for r in rows)
                return [
                    p.EndedRun(
                        r["id"],
                        r["workflow"],
                        r["logical_date"],
                        RunState(r["state"]),
                        r["version"],
                    )
                    for r in rows
                ]
            case p.CountActive(workflow):
                rows = await conn.fetch(SQL.current_versions, [workflow])
                limit = rows[0]["max_active_runs"] if rows else None
                return await self._active_runs(conn, workflow, limit)
            case p.TakeQueued(workflow, limit):
                return [
                    p.QueuedRun(r["id"], r["version"], r["reopened"])
                    for r in await conn.fetch(SQL.queued_runs, workflow, limit)
                ]
            case p.StartRuns(run_ids):
                return frozenset(r["id"] for r in await conn.fetch(SQL.start_runs, run_ids, actor))
            case p.InsertTasks(runs):
                batch = [(r.id, await self.specs.get(conn, r.version)) for r in runs]
                await self._insert_tasks(conn, batch, actor)
                return None
            case p.WaitsOn(keys):
                return await waits.waiting_on(conn, keys)
            case p.RecordWaits(outcomes):
                return await waits.record(conn, outcomes, self.clock.stamp())
            case p.RunsOfWaits(wait_ids):
                return await waits.runs_of(conn, wait_ids)
            case p.EndWaits(resolutions):
                return await waits.end(conn, resolutions, actor)
            case p.EndDeferredTasks(moves):
                return await waits.end_tasks(conn, moves, actor)
            case p.TaskStates(run_ids):
                states: dict[int, dict[str, TaskState]] = {}
                for r in await conn.fetch(SQL.run_task_states, run_ids):
                    state = TASK_STATE_BY_NAME[r["state"]]
                    states.setdefault(r["run_id"], {})[r["task_id"]] = state
                return states
        raise TypeError(f"no answer for {request!r}")

    # -- leases ------------------------------------------------------------------

    async def heartbeat(self, owner: str, attempts: Sequence[tuple[int, int]] = ()) -> list[int]:
        """Renew ``owner``'s leases. Of its ``attempts`` (task instance id,
        attempt), returns the ids that are no longer its to run (the run was
        cancelled, or the lease taken back): the worker stops those handlers."""
        async with self.db.pool.acquire() as conn:
            gone: list[int] = []
            if attempts:
                rows = await conn.fetch(
                    SQL.cancelled_attempts,
                    owner,
                    [a[0] for a in attempts],
                    [a[1] for a in attempts],
                )
                gone = [r["id"] for r in rows]
            # The renewal last: once it shows, the heartbeat is done (tests on
            # a manual clock move time as soon as they see it).
            await conn.execute(SQL.heartbeat, owner, self.lease_s, self.clock.stamp())
        return gone

    async def expire_leases(self, *, actor: str, limit: int = 500) -> int:
        """Attempts whose lease ran out (worker died or froze) are lost: retry
        or fail them per their policy. Returns how many were taken back."""
        async with self.db.pool.acquire() as conn:
            rows = await conn.fetch(SQL.expired_leases, limit, self.clock.stamp())
            outcomes = [lost_attempt(r, await self.specs.get(conn, r["version"])) for r in rows]
        if not outcomes:
            return 0
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
