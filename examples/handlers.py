"""Custom handlers for the example workflows.

Any function marked with ``@handler`` in a file under ``examples/`` is
registered when the folder is loaded, and workflows in any file may use it.
"""

from __future__ import annotations

from orchestrator.context import TaskContext
from orchestrator.registry import handler


@handler("greet")
async def greet(ctx: TaskContext, *, name: str, greeting: str = "Hello") -> dict[str, str]:
    """Build a greeting; the output is what downstream templates see."""
    ctx.log.info("greeting %s", name)
    return {"message": f"{greeting}, {name}!", "idempotency_key": ctx.idempotency_key}
