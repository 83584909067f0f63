"""The ``orchestrator`` command as a user runs it: a real process, with only
the ``ORCHESTRATOR_*`` settings a test gives it (none leak in from the shell)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLI = Callable[..., "subprocess.CompletedProcess[str]"]


def cli_env(db_url: str | None = None, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    env["PYTHONPATH"] = str(ROOT)
    if db_url is not None:
        env["ORCHESTRATOR_DATABASE_URL"] = db_url
    env.update(settings)
    return env


def cli_runner(db_url: str | None = None, *, timeout: float = 60, **settings: str) -> CLI:
    """``cli("runs", "--json")`` runs ``orchestrator runs --json`` against ``db_url``."""
    env = cli_env(db_url, **settings)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    return cli
