"""Pure scheduling decisions: which tasks may run, be skipped or fail, given states.

Nothing here does I/O. The engine reads task states, calls :func:`decide`, and
writes the returned transitions with guarded updates; because the functions are
pure, the same code is checked exhaustively by property tests without a
database. Every transition is checked against :mod:`orchestrator.states`, so a
bug here raises instead of moving a row along an edge the table does not list.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from orchestrator.errors import IllegalTransitionError, SpecError
from orchestrator.spec import TriggerRule, WorkflowSpec
from orchestrator.states import (
    FAILED_TASK_STATES,
    TERMINAL_TASK_STATES,
    RunState,
    TaskState,
    is_legal,
)

T = TaskState
R = TriggerRule


@dataclass(frozen=True, slots=True)
class Transition:
    task_id: str
    source: TaskState
    target: TaskState


@dataclass(frozen=True, slots=True, eq=False)
class Dag:
    """A workflow's graph with everything :func:`decide` needs precomputed.

    Built once per workflow version, so per-batch decisions only look up
    tuples. ``rank`` is each task's position in a topological order: deciding
    in rank order lets a cascade settle in one pass, each task looked at once.
    """

    tasks: tuple[str, ...]
    upstream: Mapping[str, tuple[str, ...]]
    downstream: Mapping[str, tuple[str, ...]]
    rules: Mapping[str, TriggerRule]
    roots: tuple[str, ...]
    rank: Mapping[str, int]

    @classmethod
    def from_spec(cls, spec: WorkflowSpec) -> Dag:
        return cls.build(
            {t.id: t.upstream for t in spec.tasks}, {t.id: t.trigger_rule for t in spec.tasks}
        )

    @classmethod
    def build(
        cls,
        upstream: Mapping[str, Sequence[str]],
        rules: Mapping[str, TriggerRule] | None = None,
    ) -> Dag:
        """Tasks in ``upstream``'s order; missing rules default to all_success.

        Raises :class:`SpecError` for unknown ids and cycles: a cycle would
        leave tasks scheduled forever instead of failing loudly.
        """
        rules = rules or {}
        tasks = tuple(upstream)
        # Duplicated upstream ids would only double-count; drop them.
        ups = {t: tuple(dict.fromkeys(upstream[t])) for t in tasks}
        unknown = sorted(set(rules) - set(tasks))
        if unknown:
            raise SpecError(f"trigger rules for unknown tasks {', '.join(unknown)}")
        down: dict[str, list[str]] = {t: [] for t in tasks}
        for t in tasks:
            for u in ups[t]:
                if u not in down:
                    raise SpecError(f"unknown upstream {u!r}", task=t)
                down[u].append(t)
        # Kahn's algorithm, ties broken by spec order so ranks are stable.
        missing = {t: len(ups[t]) for t in tasks}
        ready = [(i, t) for i, t in enumerate(tasks) if not missing[t]]
        index = {t: i for i, t in enumerate(tasks)}
        order: list[str] = []
        while ready:
            _, t = heapq.heappop(ready)
            order.append(t)
            for d in down[t]:
                missing[d] -= 1
                if not missing[d]:
                    heapq.heappush(ready, (index[d], d))
        if len(order) != len(tasks):
            cyclic = sorted(t for t in tasks if missing[t])
            raise SpecError(f"cycle among tasks {', '.join(cyclic)}")
        return cls(
            tasks=tasks,
            upstream=MappingProxyType(ups),
            downstream=MappingProxyType({t: tuple(d) for t, d in down.items()}),
            rules=MappingProxyType({t: rules.get(t, R.ALL_SUCCESS) for t in tasks}),
            roots=tuple(t for t in tasks if not ups[t]),
            rank=MappingProxyType({t: i for i, t in enumerate(order)}),
        )


def initial_states(dag: Dag) -> dict[str, TaskState]:
    """Roots are queued at once; everything else waits for its upstreams."""
    return {t: T.SCHEDULED if dag.upstream[t] else T.QUEUED for t in dag.tasks}


def _verdict(rule: TriggerRule, n: int, ok: int, bad: int, skip: int) -> TaskState | None:
    """What ``rule`` decides given upstream counts, or None to keep waiting.

    A rule decides as soon as the outcome can no longer change (e.g. one
    failed upstream dooms all_success) so downstream work is not held up.
    """
    done = ok + bad + skip == n
    match rule:
        case R.ALL_SUCCESS:
            if bad:
                return T.UPSTREAM_FAILED
            if skip:
                return T.SKIPPED
            return T.QUEUED if ok == n else None
        case R.ALL_DONE:
            return T.QUEUED if done else None
        case R.ALL_FAILED:
            if ok or skip:
                return T.SKIPPED
            return T.QUEUED if bad == n else None
        case R.ONE_SUCCESS:
            if ok:
                return T.QUEUED
            if done:
                return T.UPSTREAM_FAILED if bad else T.SKIPPED
            return None
        case R.ONE_FAILED:
            if bad:
                return T.QUEUED
            return T.SKIPPED if done else None
        case R.NONE_FAILED:
            if bad:
                return T.UPSTREAM_FAILED
            return T.QUEUED if done else None
    raise ValueError(f"unknown trigger rule {rule!r}")


def _checked(task_id: str, source: TaskState, target: TaskState) -> Transition:
    if not is_legal(source, target):
        raise IllegalTransitionError(f"task {task_id!r}", target, f"no edge from {source.value!r}")
    return Transition(task_id, source, target)


def decide(
    dag: Dag, states: Mapping[str, TaskState], changed: Iterable[str] | None = None
) -> list[Transition]:
    """Transitions of scheduled tasks that the trigger rules now determine.

    With ``changed`` only tasks downstream of those ids (and the ids
    themselves, if scheduled) are examined, so a completion batch costs in
    proportion to what it touched. Skips and upstream failures cascade to a
    fixed point within the call; queued tasks stop the cascade, being not yet
    final. Transitions come back in topological order; ``states`` is not
    modified.
    """
    rank, upstream, downstream, rules = dag.rank, dag.upstream, dag.downstream, dag.rules
    if changed is None:
        seeds: Iterable[str] = dag.tasks
    else:
        seeds = {d for c in changed for d in (c, *downstream[c])}
    heap = [(rank[t], t) for t in seeds if upstream[t] and states[t] == T.SCHEDULED]
    heapq.heapify(heap)
    seen = {t for _, t in heap}
    decided: dict[str, TaskState] = {}
    out: list[Transition] = []
    while heap:
        # Rank order: by the time a task is popped, every upstream that this
        # call will decide has been decided, so no task is examined twice.
        _, task = heapq.heappop(heap)
        ok = bad = skip = 0
        ups = upstream[task]
        for u in ups:
            s = decided[u] if u in decided else states[u]
            if s == T.SUCCESS:
                ok += 1
            elif s in FAILED_TASK_STATES:
                bad += 1
            elif s == T.SKIPPED:
                skip += 1
        target = _verdict(rules[task], len(ups), ok, bad, skip)
        if target is None:
            continue
        out.append(_checked(task, T.SCHEDULED, target))
        decided[task] = target
        if target in TERMINAL_TASK_STATES:
            for d in downstream[task]:
                if d not in seen and states[d] == T.SCHEDULED:
                    seen.add(d)
                    heapq.heappush(heap, (rank[d], d))
    return out


def cleared_roots(
    dag: Dag, states: Mapping[str, TaskState], changed: Iterable[str]
) -> list[Transition]:
    """Roots among ``changed`` that are scheduled (an operator cleared them)
    are queued: with no upstream, nothing else is to be waited for."""
    return [
        _checked(t, T.SCHEDULED, T.QUEUED)
        for t in changed
        if not dag.upstream[t] and states[t] == T.SCHEDULED
    ]


def run_outcome(dag: Dag, states: Mapping[str, TaskState]) -> RunState | None:
    """A run ends when every task is final; it succeeds only if none failed."""
    failed = False
    for t in dag.tasks:
        s = states[t]
        if s not in TERMINAL_TASK_STATES:
            return None
        failed = failed or s in FAILED_TASK_STATES
    return RunState.FAILED if failed else RunState.SUCCESS


def cancel_transitions(states: Mapping[str, TaskState]) -> list[Transition]:
    """Cancelling a run skips every unfinished task; finished ones keep their result."""
    # TaskState(s) also accepts plain strings as read from the database.
    return [
        _checked(t, TaskState(s), T.SKIPPED)
        for t, s in states.items()
        if s not in TERMINAL_TASK_STATES
    ]
