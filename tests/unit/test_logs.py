"""Log lines fit for a log pipeline: JSON with RFC 3339 UTC times and ids;
the access log never shows a callback's token."""

from __future__ import annotations

import json
import logging
import os
import re

from orchestrator.access_log import loggable_path
from orchestrator.logs import JSONFormatter, rfc3339_utc


def record(**extra: object) -> logging.LogRecord:
    r = logging.LogRecord("orchestrator.worker", logging.WARNING, __file__, 1, "run %s", (7,), None)
    r.created = 1_764_547_200.25  # 2025-12-01T00:00:00.250Z
    for key, value in extra.items():
        setattr(r, key, value)
    return r


def test_json_lines_carry_a_utc_rfc3339_time_and_the_ids_known() -> None:
    line = JSONFormatter().format(record(workflow="sales", run_id=7, task_id="load", attempt=2))
    out = json.loads(line)
    assert out == {
        "at": "2025-12-01T00:00:00.250Z",
        "level": "WARNING",
        "logger": "orchestrator.worker",
        "message": "run 7",
        "pid": os.getpid(),
        "workflow": "sales",
        "run_id": 7,
        "task_id": "load",
        "attempt": 2,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rfc3339_utc(0.0))


def test_the_access_log_masks_callback_tokens() -> None:
    assert loggable_path("/api/v1/callbacks/s3cr3t-token") == "/api/v1/callbacks/***"
    assert loggable_path("/api/v1/runs/5") == "/api/v1/runs/5"
    assert loggable_path("/hooks/sales") == "/hooks/sales"
