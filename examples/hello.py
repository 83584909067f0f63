"""A small workflow authored in Python, using the custom ``greet`` handler
from ``examples/handlers.py``:

    orchestrator trigger hello --param name=Ada --wait

Its params are declared as in YAML; ``ParamSpec`` is the typed way to write a
schema entry (a plain mapping such as ``{"type": "string"}`` works the same).
"""

from __future__ import annotations

from orchestrator.spec import ParamSpec, RetryPolicy, TaskSpec, WorkflowSpec

hello = WorkflowSpec(
    name="hello",
    description="Greet someone, then echo the greeting.",
    params={
        "name": ParamSpec(type="string", default="world", description="Who to greet."),
    },
    tasks=(
        TaskSpec(
            id="greet",
            handler="greet",
            inputs={"name": "{{ params.name }}", "greeting": "Hello"},
            retry=RetryPolicy(max_attempts=2, initial_delay_s=0.5),
        ),
        TaskSpec(
            id="shout",
            handler="echo",
            upstream=("greet",),
            inputs={
                "text": "{{ upstream.greet.message }}",
                "attempt": "{{ task.attempt }}",
                "run": "{{ run.workflow }} #{{ run.id }}",
            },
        ),
    ),
)
