"""Schedule interval math: logical dates, DST days, catch-up policies (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings, strategies as st

from orchestrator.intake import DeadLetter, Event
from sources.cron import (
    CronError,
    CronSchedule,
    Interval,
    first_watermark,
    intervals_between,
    latest_complete,
    plan_catchup,
)
from sources.models import ScheduleTrigger
from sources.schedule import dedup_key, interval_event

PARIS = ZoneInfo("Europe/Paris")


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def paris(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, fold: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=PARIS, fold=fold)


def daily(**kw: Any) -> ScheduleTrigger:
    return ScheduleTrigger(cron="0 0 * * *", **kw)


def local_starts(schedule: CronSchedule, intervals: list[Interval]) -> list[str]:
    return [schedule.local(i.start).strftime("%H:%M%z") for i in intervals]


# -- logical dates ---------------------------------------------------------------------


def test_the_run_for_a_day_is_due_when_that_day_ends() -> None:
    trigger = daily()
    assert latest_complete(trigger, utc(2026, 1, 2)) == Interval(utc(2026, 1, 1), utc(2026, 1, 2))
    # One second earlier the 1 January interval is still open.
    just_before = latest_complete(trigger, utc(2026, 1, 2) - timedelta(seconds=1))
    assert just_before == Interval(utc(2025, 12, 31), utc(2026, 1, 1))
    assert just_before.logical_date == utc(2025, 12, 31)


def test_intervals_between_are_complete_contiguous_and_bounded() -> None:
    got = intervals_between(daily(), utc(2026, 1, 1), utc(2026, 1, 4, 12))
    assert got == [
        Interval(utc(2026, 1, 1), utc(2026, 1, 2)),
        Interval(utc(2026, 1, 2), utc(2026, 1, 3)),
        Interval(utc(2026, 1, 3), utc(2026, 1, 4)),
    ]
    # `after` inside an interval: only intervals starting at or after it.
    assert intervals_between(daily(), utc(2026, 1, 1, 6), utc(2026, 1, 4))[0].start == utc(
        2026, 1, 2
    )
    assert len(intervals_between(daily(), utc(2026, 1, 1), utc(2026, 3, 1), limit=5)) == 5


def test_next_and_previous_fire_at_a_fire_time() -> None:
    s = CronSchedule("0 2 * * *", "UTC")
    at = utc(2026, 1, 1, 2)
    assert s.next_fire(at) == utc(2026, 1, 2, 2)
    assert s.next_fire(at, inclusive=True) == at
    assert s.prev_fire(at) == at
    assert s.prev_fire(at - timedelta(microseconds=1)) == utc(2025, 12, 31, 2)


def test_times_are_wall_clock_in_the_trigger_zone() -> None:
    s = CronSchedule("0 2 * * *", "America/New_York")
    assert s.next_fire(utc(2026, 1, 1)) == utc(2026, 1, 1, 7)  # 02:00 EST
    assert s.next_fire(utc(2026, 7, 1)) == utc(2026, 7, 1, 6)  # 02:00 EDT


def test_a_cron_that_never_fires_is_a_clear_error() -> None:
    with pytest.raises(CronError, match="never fires"):
        CronSchedule("0 0 30 2 *", "UTC").next_fire(utc(2026, 1, 1))


# -- DST -------------------------------------------------------------------------------


def test_spring_forward_daily_time_in_the_gap_fires_after_the_gap() -> None:
    # 2026-03-29: Paris clocks jump from 02:00 CET to 03:00 CEST.
    s = CronSchedule("30 2 * * *", "Europe/Paris")
    got = s.intervals_between(paris(2026, 3, 28), paris(2026, 3, 31, 3))
    assert [s.local(i.start) for i in got] == [
        paris(2026, 3, 28, 2, 30),
        paris(2026, 3, 29, 3, 30),  # 02:30 does not exist that day
        paris(2026, 3, 30, 2, 30),
    ]
    # Real durations: 01:30Z to 01:30Z, then 01:30Z to 00:30Z.
    assert [i.end - i.start for i in got] == [
        timedelta(hours=24),
        timedelta(hours=23),
        timedelta(hours=24),
    ]


def test_spring_forward_hourly_has_23_intervals() -> None:
    s = CronSchedule("0 * * * *", "Europe/Paris")
    got = s.intervals_between(paris(2026, 3, 29), paris(2026, 3, 30))
    assert len(got) == 23
    assert "02:00+0100" not in local_starts(s, got)
    assert all(i.end - i.start == timedelta(hours=1) for i in got)


def test_fall_back_daily_fires_once_at_the_first_occurrence() -> None:
    # 2026-10-25: Paris clocks go back from 03:00 CEST to 02:00 CET.
    s = CronSchedule("0 2 * * *", "Europe/Paris")
    got = s.intervals_between(paris(2026, 10, 24), paris(2026, 10, 27, 12))
    assert [s.local(i.start).isoformat() for i in got] == [
        "2026-10-24T02:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-26T02:00:00+01:00",
    ]
    assert got[1].end - got[1].start == timedelta(hours=25)


def test_fall_back_hourly_fires_at_both_occurrences() -> None:
    s = CronSchedule("0 * * * *", "Europe/Paris")
    got = s.intervals_between(paris(2026, 10, 25), paris(2026, 10, 26))
    assert len(got) == 25
    starts = local_starts(s, got)
    assert starts[:5] == ["00:00+0200", "01:00+0200", "02:00+0200", "02:00+0100", "03:00+0100"]
    assert all(i.end - i.start == timedelta(hours=1) for i in got)
    # The second 02:00 is its own logical date: a distinct event key.
    keys = {dedup_key("w", i.start) for i in got}
    assert len(keys) == 25


def test_fall_back_fires_are_ordered_by_real_time() -> None:
    s = CronSchedule("*/30 * * * *", "Europe/Paris")
    # Arithmetic on a zoned datetime is wall-clock arithmetic: work in UTC.
    second_two = paris(2026, 10, 25, 2, 0, fold=1).astimezone(UTC)  # 02:00 CET
    assert s.prev_fire(second_two) == utc(2026, 10, 25, 1)
    assert s.prev_fire(second_two - timedelta(microseconds=1)) == utc(2026, 10, 25, 0, 30)
    assert s.next_fire(paris(2026, 10, 25, 2, 30)) == second_two


@pytest.mark.parametrize(
    "zone",
    ["Europe/Paris", "America/New_York", "Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata"],
)
def test_a_year_of_daily_intervals_has_one_per_local_day(zone: str) -> None:
    s = CronSchedule("30 2 * * *", zone)
    z = ZoneInfo(zone)
    got = s.logical_dates(datetime(2026, 1, 1, tzinfo=z), datetime(2027, 1, 1, tzinfo=z))
    assert len(got) == 365
    assert len({s.local(i.start).date() for i in got}) == 365
    assert all(a.end == b.start for a, b in pairwise(got))
    assert all(timedelta(hours=22) < i.end - i.start < timedelta(hours=26) for i in got)


TRANSITIONS = [utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 3, 8, 7), utc(2026, 11, 1, 6)]


@settings(max_examples=150, deadline=None)
@given(
    base=st.sampled_from(TRANSITIONS),
    offset_min=st.integers(min_value=-6 * 60, max_value=6 * 60),
    cron=st.sampled_from(["0 * * * *", "30 2 * * *", "*/20 * * * *", "15 1-3 * * *"]),
    zone=st.sampled_from(["Europe/Paris", "America/New_York"]),
)
def test_prev_and_next_fire_agree_around_transitions(
    base: datetime, offset_min: int, cron: str, zone: str
) -> None:
    s = CronSchedule(cron, zone)
    t = base + timedelta(minutes=offset_min, seconds=7)
    before, after = s.prev_fire(t), s.next_fire(t)
    assert before <= t < after
    # Nothing fires in between: each is the other's neighbour.
    assert s.next_fire(before) == after
    assert s.prev_fire(after - timedelta(microseconds=1)) == before


# -- catch-up ----------------------------------------------------------------------------


def test_catchup_all_runs_every_missed_interval_in_order() -> None:
    plan = plan_catchup(daily(catchup="all"), utc(2026, 1, 1), utc(2026, 1, 4, 0, 30))
    assert [i.logical_date for i in plan.run] == [utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)]
    assert plan.done_until == utc(2026, 1, 4)
    assert plan.skipped is None
    capped = plan_catchup(daily(catchup="all"), utc(2026, 1, 1), utc(2026, 1, 4), limit=2)
    assert len(capped.run) == 2 and capped.done_until == utc(2026, 1, 3)


def test_catchup_latest_runs_only_the_most_recent_interval() -> None:
    plan = plan_catchup(daily(catchup="latest"), utc(2026, 1, 1), utc(2026, 1, 4, 0, 30))
    assert plan.run == [Interval(utc(2026, 1, 3), utc(2026, 1, 4))]
    assert plan.done_until == utc(2026, 1, 4)
    assert plan.skipped == (utc(2026, 1, 1), utc(2026, 1, 3))
    # Nothing new has ended: nothing to do.
    again = plan_catchup(daily(catchup="latest"), plan.done_until, utc(2026, 1, 4, 23))
    assert again.run == [] and again.done_until == utc(2026, 1, 4)


def test_catchup_none_skips_what_ended_before_the_scheduler_came_back() -> None:
    trigger = daily(catchup="none")
    restarted = utc(2026, 1, 4, 0, 30)
    plan = plan_catchup(trigger, utc(2026, 1, 1), restarted, missed_before=restarted)
    assert plan.run == []
    assert plan.done_until == utc(2026, 1, 4)
    assert plan.skipped == (utc(2026, 1, 1), utc(2026, 1, 4))
    # The next interval ends while the scheduler runs: it runs.
    later = plan_catchup(
        trigger, plan.done_until, utc(2026, 1, 5, 0, 0, 1), missed_before=restarted
    )
    assert later.run == [Interval(utc(2026, 1, 4), utc(2026, 1, 5))]
    # Back within the grace of the last end: not counted as missed.
    quick = plan_catchup(
        trigger, utc(2026, 1, 3), utc(2026, 1, 4, 0, 0, 20), missed_before=utc(2026, 1, 3, 23, 59)
    )
    assert quick.run == [Interval(utc(2026, 1, 3), utc(2026, 1, 4))]


def test_a_new_schedule_starts_now_or_at_its_start() -> None:
    now = utc(2026, 1, 10, 15)
    assert first_watermark(daily(), now) == utc(2026, 1, 10)
    # A naive start is wall-clock time in the trigger's zone.
    trigger = daily(timezone="Europe/Paris", start=datetime(2026, 1, 5))
    assert first_watermark(trigger, now) == utc(2026, 1, 4, 23)
    assert latest_complete(trigger, utc(2026, 1, 5, 12)) is None
    assert latest_complete(trigger, utc(2026, 1, 5, 23)) == Interval(
        utc(2026, 1, 4, 23), utc(2026, 1, 5, 23)
    )


# -- events ----------------------------------------------------------------------------


def test_interval_event_renders_params_from_meta_with_a_stable_key() -> None:
    trigger = ScheduleTrigger(
        cron="0 2 * * *",
        timezone="Europe/Paris",
        params={"day": "{{ meta.date }}", "label": "report {{ meta.logical_date }}"},
    )
    interval = Interval(utc(2026, 1, 1, 1), utc(2026, 1, 2, 1))
    event = interval_event("nightly", trigger, interval)
    assert isinstance(event, Event)
    assert event.params == {"day": "2026-01-01", "label": "report 2026-01-01T02:00:00+01:00"}
    assert event.meta["interval_end"] == "2026-01-02T02:00:00+01:00"
    assert event.logical_date == interval.start and event.interval_end == interval.end
    # The key names the instant in UTC, whatever zone the datetime is in.
    assert event.dedup_key == "schedule:nightly:2026-01-01T01:00:00+00:00"
    assert dedup_key("nightly", paris(2026, 1, 1, 2)) == event.dedup_key


def test_a_params_mapping_that_fails_becomes_a_dead_letter() -> None:
    trigger = ScheduleTrigger(cron="0 2 * * *", params={"n": "{{ length(meta.nothing) }}"})
    letter = interval_event("nightly", trigger, Interval(utc(2026, 1, 1), utc(2026, 1, 2)))
    assert isinstance(letter, DeadLetter)
    assert "params mapping failed" in letter.reason and letter.source == "schedule"
