"""One alert relay in a process of its own, for the crash test:
``python relay_process.py DB_URL LEASE_S``. Prints ``READY`` once started and
runs until killed. Secrets come from the environment (``ORCHESTRATOR_SECRET_*``).
"""

from __future__ import annotations

import asyncio
import sys

from orchestrator.alert_relay import AlertRelay, RelaySettings
from orchestrator.clock import SYSTEM_CLOCK
from orchestrator.secrets import EnvironmentBackend, Secrets
from orchestrator.store import connect


async def main(url: str, lease_s: float) -> None:
    db = await connect(url, size=2, min_size=1)
    relay = AlertRelay(
        db,
        SYSTEM_CLOCK,
        Secrets([EnvironmentBackend()]),
        settings=RelaySettings(lease_s=lease_s, poll_s=0.1),
    )
    async with relay:
        print("READY", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
