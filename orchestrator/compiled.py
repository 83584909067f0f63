"""Workflow versions prepared once for the hot path, cached by version hash.

A version never changes, so a process may keep its compiled form forever; a
version registered by another process is fetched from the database once.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from orchestrator.decisions import Dag, initial_states
from orchestrator.errors import StoreError
from orchestrator.spec import RetryPolicy, TaskSpec, WorkflowSpec
from orchestrator.states import TaskState
from orchestrator.store.queries import SQL
from orchestrator.validation import needed_outputs


@dataclass(frozen=True, slots=True)
class TaskRow:
    """The columns a new task instance gets from its spec."""

    task_id: str
    state: TaskState
    handler: str
    pool: str
    priority: int
    limited: bool
    concurrency_key: str | None
    max_concurrency: int | None
    needs: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CompiledWorkflow:
    version: str
    spec: WorkflowSpec
    dag: Dag
    rows: tuple[TaskRow, ...]
    tasks: dict[str, TaskSpec]
    retry: dict[str, RetryPolicy]
    timeout_s: dict[str, float]

    @property
    def pools(self) -> set[str]:
        return {r.pool for r in self.rows if r.pool != "default"}


def compile_workflow(spec: WorkflowSpec, version: str | None = None) -> CompiledWorkflow:
    dag = Dag.from_spec(spec)
    initial = initial_states(dag)
    needs = needed_outputs(spec)
    rows = tuple(
        TaskRow(
            task_id=t.id,
            state=initial[t.id],
            handler=t.handler,
            pool=t.pool,
            priority=t.priority,
            limited=t.pool != "default" or t.max_concurrency is not None,
            concurrency_key=f"{spec.name}.{t.id}" if t.max_concurrency is not None else None,
            max_concurrency=t.max_concurrency,
            needs=tuple(needs.get(t.id, ())),
        )
        for t in spec.tasks
    )
    return CompiledWorkflow(
        version=version or spec.version,
        spec=spec,
        dag=dag,
        rows=rows,
        tasks={t.id: t for t in spec.tasks},
        retry={t.id: spec.retry_for(t) for t in spec.tasks},
        timeout_s={t.id: spec.timeout_for(t) for t in spec.tasks},
    )


class SpecCache:
    def __init__(self) -> None:
        self._by_version: dict[str, CompiledWorkflow] = {}

    def add(self, spec: WorkflowSpec) -> CompiledWorkflow:
        version = spec.version
        found = self._by_version.get(version)
        if found is None:
            found = self._by_version[version] = compile_workflow(spec, version)
        return found

    def peek(self, version: str) -> CompiledWorkflow | None:
        return self._by_version.get(version)

    async def get(self, conn: asyncpg.Connection | asyncpg.Pool, version: str) -> CompiledWorkflow:
        found = self._by_version.get(version)
        if found is not None:
            return found
        row = await conn.fetchrow(SQL.get_version, version)
        if row is None:
            raise StoreError(f"workflow version {version} is not in the database")
        spec = WorkflowSpec.model_validate_json(row["spec"])
        found = self._by_version[version] = compile_workflow(spec, version)
        return found
