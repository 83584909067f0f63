"""When a partition's log is plainly another one than the log read before."""

from __future__ import annotations

from types import SimpleNamespace

from sources.kafka_logs import LogView, fingerprint, merged, new_log_reason

KNOWN = LogView(start=10, end=50, first_offset=10, first_record="1700:aa")


def test_the_same_log_read_further_is_the_same_log() -> None:
    assert new_log_reason(KNOWN, LogView(10, 80, 10, "1700:aa")) is None
    # First record not read this time (or the log is still read up to where it was).
    assert new_log_reason(KNOWN, LogView(10, 50)) is None


def test_retention_and_compaction_move_the_start_forward_in_the_same_log() -> None:
    later = LogView(30, 90, 31, "1900:bb")
    assert new_log_reason(KNOWN, later) is None
    assert merged(KNOWN, later) == later
    assert merged(later, LogView(30, 60)) == LogView(30, 90, 31, "1900:bb")


def test_an_end_or_start_that_went_back_is_another_log() -> None:
    assert new_log_reason(KNOWN, LogView(10, 3)) == "its end went back from offset 50 to 3"
    assert new_log_reason(KNOWN, LogView(0, 60)) == "its start went back from offset 10 to 0"


def test_another_first_record_at_the_same_offset_or_an_earlier_one_is_another_log() -> None:
    assert new_log_reason(KNOWN, LogView(10, 50, 10, "1800:cc")) == (
        "its first record (offset 10) is not the one seen earlier"
    )
    assert new_log_reason(KNOWN, LogView(10, 50, 5, "1800:cc")) == (
        "its first record is at offset 5, before the 10 seen earlier"
    )


def test_a_fingerprint_tells_key_value_and_timestamp_apart() -> None:
    def record(key: bytes | None, value: bytes | None, ts: int = 1) -> SimpleNamespace:
        return SimpleNamespace(key=key, value=value, timestamp=ts)

    prints = {
        fingerprint(record(None, b"a")),
        fingerprint(record(b"", b"a")),
        fingerprint(record(b"a", None)),
        fingerprint(record(b"a", b"")),
        fingerprint(record(None, b"a", ts=2)),
        fingerprint(record(b"ab", b"c")),
        fingerprint(record(b"a", b"bc")),
    }
    assert len(prints) == 7
    assert fingerprint(record(b"k", b"v")) == fingerprint(record(b"k", b"v"))
