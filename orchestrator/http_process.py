"""One of the extra processes serving the HTTP port (see :mod:`orchestrator.http_processes`).

``python -m orchestrator.http_process``, started by the orchestrator only: it
reads its :class:`~orchestrator.http_processes.Launch` on stdin, serves the
HTTP application on the shared port, says so on stdout, then follows the
workflows sent on stdin until the pipe closes or SIGTERM/SIGINT arrives, and
stops: the deliveries it has taken are committed and answered first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from orchestrator import logs
from orchestrator.app import Orchestrator
from orchestrator.devmode import _run_loop, stop_on_signals
from orchestrator.errors import OrchestratorError
from orchestrator.http_processes import SERVING, Launch, read_frame
from orchestrator.plugins import create_sources

log = logging.getLogger(__name__)


async def serve() -> None:
    loop = asyncio.get_running_loop()
    lifeline = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(lifeline), sys.stdin)
    launch = await read_frame(lifeline)
    if not isinstance(launch, Launch):
        return  # the orchestrator went away before it said what to serve
    settings = launch.settings
    logs.configure(logging.getLevelName(launch.log_level), settings.log_format)
    orch = Orchestrator(
        settings,
        launch.database_url,
        workflows=launch.workflows,
        migrate=False,
        register=False,
        sources=create_sources(settings),
        http=True,
        share_port="join",
    )
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await orch.start()
        follower = asyncio.create_task(_follow(lifeline, orch, stop))
        try:
            sys.stdout.buffer.write(SERVING)
            sys.stdout.flush()
            # Nothing else goes to the pipe, which nobody reads any more.
            os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
            await stop.wait()
        finally:
            follower.cancel()
            await orch.stop()


async def _follow(lifeline: asyncio.StreamReader, orch: Orchestrator, stop: asyncio.Event) -> None:
    while (workflows := await read_frame(lifeline)) is not None:
        assert isinstance(workflows, tuple)
        orch.route(workflows)
    stop.set()  # the orchestrator stops, or is gone


def main() -> int:
    try:
        _run_loop(serve())
    except OrchestratorError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
