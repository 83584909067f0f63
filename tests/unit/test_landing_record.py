"""The queue between landing-zone checks and the database: which files one
batch records, so that a path's versions are recorded in the order seen."""

from __future__ import annotations

from collections.abc import Sequence

from sources.completeness import Stat
from sources.landing_record import FileIdentity, LandingRecorder


def recorder(batch_max: int) -> LandingRecorder:
    def look_again(_paths: Sequence[str], _when: float) -> None:
        raise AssertionError("nothing fails here")

    known: dict[str, FileIdentity | None] = {}
    return LandingRecorder(batch_max=batch_max, known=known, look_again=look_again)


def version(n: int) -> Stat:
    return Stat(size=n, mtime_ns=n)


def test_a_batch_takes_up_to_batch_max_files_in_the_order_they_were_queued() -> None:
    rec = recorder(batch_max=3)
    for name in "abcde":
        rec.put(f"d/{name}.csv", version(1), "sha")
    assert [rel for rel, _, _ in rec.next_batch()] == ["d/a.csv", "d/b.csv", "d/c.csv"]
    assert [rel for rel, _, _ in rec.next_batch()] == ["d/d.csv", "d/e.csv"]
    assert rec.next_batch() == []


def test_a_later_version_of_a_path_waits_for_the_batch_recording_the_earlier_one() -> None:
    rec = recorder(batch_max=10)
    rec.put("a.csv", version(1), "A")
    rec.put("b.csv", version(1), "B")
    rec.put("a.csv", version(2), "B")  # rewritten while the first is still queued
    rec.put("c.csv", version(1), "C")
    first = rec.next_batch()
    assert [(rel, sha) for rel, _, sha in first] == [("a.csv", "A"), ("b.csv", "B"), ("c.csv", "C")]
    # Another recorder, while the first batch is in flight: the second version waits.
    assert rec.next_batch() == []
    assert rec.taking == {"a.csv": version(2), "b.csv": version(1), "c.csv": version(1)}
    assert not rec.idle
