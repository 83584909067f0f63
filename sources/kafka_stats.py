"""What the Kafka source has done since it started: for tests, metrics and logs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class KafkaIntakeStats:
    """What the source has done since it started (for tests, metrics and logs)."""

    batches: int = 0
    messages: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    runs: int = 0
    commits: int = 0
    commit_failures: int = 0
    ingest_failures: int = 0
    dropped_batches: int = 0
    """Batches given up at a revocation or at stop: their offsets stay uncommitted."""
    rebalances: int = 0
    committed_past_end: int = 0
    """Partitions assigned with a committed offset past their high watermark (read
    again from their beginning)."""
    new_logs: int = 0
    """Partitions found reading another log than before (a new topic id or incarnation)."""
    last_error: str | None = None
    assigned: frozenset[tuple[str, int]] = field(default_factory=frozenset)
