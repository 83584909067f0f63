"""Attempts whose lease ran out: what becomes of them."""

from __future__ import annotations

import asyncpg

from orchestrator.compiled import CompiledWorkflow
from orchestrator.plan import Outcome
from orchestrator.retry import decide_failure
from orchestrator.states import TaskState


def lost_attempt(row: asyncpg.Record, compiled: CompiledWorkflow) -> Outcome:
    """The outcome of an attempt whose worker died or stopped heartbeating:
    retried or failed per its task's policy, as a failure with no exception.
    Recorded only if the lease has still run out when it is committed."""
    decision = decide_failure(
        compiled.retry[row["task_id"]], row["attempt"] - row["tries_before"], None
    )
    return Outcome(
        id=row["id"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        attempt=row["attempt"],
        owner=row["lease_owner"],
        target=decision.target,
        delay_s=decision.delay_s if decision.target == TaskState.UP_FOR_RETRY else None,
        error=f"attempt {row['attempt']} lost: lease held by {row['lease_owner']} "
        "expired (worker died or stopped heartbeating)",
        reason="lease expired",
        expired_only=True,
    )
