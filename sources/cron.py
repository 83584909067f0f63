"""Schedule intervals: pure time arithmetic over ``croniter`` and ``zoneinfo``.

A :class:`~orchestrator.trigger_spec.ScheduleTrigger` cuts time into
intervals ``[start, end)`` between consecutive cron fire times. A run's
*logical date* is its interval's start, and the run is created when the
interval *ends* (Airflow semantics): the ``0 0 * * *`` run for 2026-01-01
starts at 2026-01-02 00:00, when that day's data is complete.

Time zones and DST
------------------
Cron fields are matched against wall-clock time in the trigger's zone.
``croniter`` walks naive wall-clock times (its own time-zone handling runs a
daily job twice on a fall-back day); each wall-clock match is then placed on
the real time line here, by rules taken from ISC/Vixie cron:

* a wall-clock time that does not exist (the spring-forward gap) fires at
  the same distance after the gap: ``30 2 * * *`` in Europe/Paris fires at
  03:30 CEST on the last Sunday of March; two matches landing on one instant
  fire once (``0 * * * *`` has 23 intervals that day);
* a wall-clock time that happens twice (fall-back) fires once, at its first
  occurrence, unless the cron runs every hour (hour field ``*`` or all 24
  hours): then it fires at both, so ``0 * * * *`` has 25 intervals that day.

Catch-up
--------
The scheduler remembers, per schedule, ``done_until``: every interval ending
at or before it has been handled (run, or deliberately skipped).
:func:`plan_catchup` decides which complete intervals after that to run:

* ``all`` — every interval with ``start >= done_until`` and ``end <= now``,
  oldest first (at most ``limit`` per call; the rest on the next call);
* ``latest`` — only the most recent complete interval, if it starts at or
  after ``done_until``; older missed ones are skipped;
* ``none`` — only intervals that ended at or after ``missed_before`` (the
  scheduler passes "when this replica became leader, minus a grace"): what
  ended while no scheduler was running is skipped, so after downtime the
  first run is for the first interval that ends once the scheduler is back.

Every instant returned here is in UTC: Python compares two datetimes of one
zone by their wall clock, ignoring the DST fold, which would make 02:30 CEST
and 02:30 CET equal. :meth:`CronSchedule.local` converts for display.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

from orchestrator.errors import OrchestratorError
from sources.models import ScheduleTrigger

__all__ = [
    "Catchup",
    "CronError",
    "CronSchedule",
    "Interval",
    "aware_in",
    "first_watermark",
    "intervals_between",
    "latest_complete",
    "plan_catchup",
    "schedule_of",
]

# More than any zone's DST shift (the largest, Antarctica/Troll, is 2 h): wall
# clock and real time never disagree by more than this around a transition.
_SLACK = timedelta(hours=3)
_TINY = timedelta(microseconds=1)


class CronError(OrchestratorError):
    """A cron expression that can never fire (e.g. ``0 0 30 2 *``)."""


@dataclass(frozen=True, slots=True, order=True)
class Interval:
    """``[start, end)`` between two consecutive fire times."""

    start: datetime
    end: datetime

    @property
    def logical_date(self) -> datetime:
        return self.start


@dataclass(frozen=True, slots=True)
class Catchup:
    """What :func:`plan_catchup` decided."""

    run: list[Interval]
    """Intervals to create runs for, oldest first."""
    done_until: datetime
    """The new watermark: every interval ending at or before it is handled."""
    skipped: tuple[datetime, datetime] | None = None
    """``[from, to)``: complete intervals starting in this range were skipped."""


def aware_in(value: datetime, zone: ZoneInfo) -> datetime:
    """``value`` as an aware datetime: a naive one is wall-clock time in ``zone``."""
    return value.replace(tzinfo=zone) if value.tzinfo is None else value


class CronSchedule:
    """The fire times of one cron expression in one time zone."""

    def __init__(self, cron: str, timezone: str) -> None:
        self.cron = cron
        self.zone = ZoneInfo(timezone)
        hours = croniter(cron).expanded[1]
        self._every_hour = {str(h) for h in hours} in ({"*"}, {str(h) for h in range(24)})

    def __repr__(self) -> str:
        return f"CronSchedule({self.cron!r}, {self.zone.key!r})"

    # -- wall clock <-> real time -------------------------------------------------

    def utc(self, value: datetime) -> datetime:
        """``value`` in UTC; a naive ``value`` is wall-clock time in this zone."""
        return aware_in(value, self.zone).astimezone(UTC)

    def local(self, instant: datetime) -> datetime:
        """``instant`` in this zone, for display (compare instants in UTC: Python
        compares two datetimes of one zone by wall clock, ignoring DST folds)."""
        return instant.astimezone(self.zone)

    def _wall(self, instant: datetime) -> datetime:
        """The naive wall-clock time of ``instant`` in this zone, to the second."""
        return instant.astimezone(self.zone).replace(tzinfo=None, microsecond=0)

    def _instants(self, wall: datetime) -> list[datetime]:
        """Where a wall-clock match lands on the time line (see module docs)."""
        first = wall.replace(tzinfo=self.zone).astimezone(UTC)
        if self._wall(first) != wall:
            # In the gap: fold=0 reads it with the offset from before the
            # transition, which lands the same distance after the gap.
            return [first]
        second = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        if second != first and self._every_hour:
            return [first, second]
        return [first]

    def _steady(self, wall: datetime) -> bool:
        """No offset change within the slack around ``wall``: there, wall-clock
        order is time-line order."""
        before = (wall - _SLACK).replace(tzinfo=self.zone).utcoffset()
        after = (wall + _SLACK).replace(tzinfo=self.zone).utcoffset()
        return before == after

    def _walk(self, start: datetime, *, forward: bool) -> Iterator[datetime]:
        it = croniter(self.cron, start)
        try:
            while True:
                yield it.get_next(datetime) if forward else it.get_prev(datetime)
        except CroniterBadDateError:
            raise CronError(f"cron {self.cron!r} never fires") from None

    # -- fire times ------------------------------------------------------------

    def next_fire(self, after: datetime, *, inclusive: bool = False) -> datetime:
        """The first fire time after ``after`` (or at it, when ``inclusive``)."""
        after = self.utc(after)
        if inclusive:
            after -= _TINY
        wall = self._wall(after)
        start = wall if self._steady(wall) else wall - _SLACK
        best: datetime | None = None
        for candidate in self._walk(start, forward=True):
            for instant in self._instants(candidate):
                if instant > after and (best is None or instant < best):
                    best = instant
            if best is not None and (
                candidate > self._wall(best) + _SLACK
                or (self._steady(candidate) and self._instants(candidate)[0] >= best)
            ):
                return best
        raise AssertionError("unreachable")  # pragma: no cover

    def prev_fire(self, at: datetime) -> datetime:
        """The last fire time at or before ``at``."""
        at = self.utc(at)
        wall = self._wall(at) + timedelta(seconds=1)
        start = wall if self._steady(wall) else wall + _SLACK
        best: datetime | None = None
        for candidate in self._walk(start, forward=False):
            for instant in self._instants(candidate):
                if instant <= at and (best is None or instant > best):
                    best = instant
            if best is not None and (
                candidate < self._wall(best) - _SLACK
                or (self._steady(candidate) and self._instants(candidate)[-1] <= best)
            ):
                return best
        raise AssertionError("unreachable")  # pragma: no cover

    # -- intervals ---------------------------------------------------------------

    def intervals_between(
        self, after: datetime, until: datetime, *, limit: int | None = None
    ) -> list[Interval]:
        """Complete intervals with ``start >= after`` and ``end <= until``,
        oldest first; at most ``limit`` of them."""
        out: list[Interval] = []
        start = self.next_fire(after, inclusive=True)
        while limit is None or len(out) < limit:
            end = self.next_fire(start)
            if end > until:
                break
            out.append(Interval(start, end))
            start = end
        return out

    def logical_dates(self, start: datetime, end: datetime) -> list[Interval]:
        """Intervals whose logical date (start) is in ``[start, end)``, ended or not."""
        out: list[Interval] = []
        fire = self.next_fire(start, inclusive=True)
        while fire < self.utc(end):
            following = self.next_fire(fire)
            out.append(Interval(fire, following))
            fire = following
        return out

    def latest_complete(self, now: datetime) -> Interval:
        """The most recent interval with ``end <= now``."""
        end = self.prev_fire(now)
        return Interval(self.prev_fire(end - _TINY), end)


@lru_cache(maxsize=256)
def _schedule(cron: str, timezone: str) -> CronSchedule:
    return CronSchedule(cron, timezone)


def schedule_of(trigger: ScheduleTrigger) -> CronSchedule:
    return _schedule(trigger.cron, trigger.timezone)


def intervals_between(
    trigger: ScheduleTrigger, after: datetime, until: datetime, *, limit: int | None = None
) -> list[Interval]:
    """Complete intervals of ``trigger`` with ``start >= after`` and ``end <= until``."""
    return schedule_of(trigger).intervals_between(after, until, limit=limit)


def latest_complete(trigger: ScheduleTrigger, now: datetime) -> Interval | None:
    """The most recent interval of ``trigger`` that has ended at ``now``; None
    when it would start before ``trigger.start``."""
    schedule = schedule_of(trigger)
    latest = schedule.latest_complete(now)
    if trigger.start is not None and latest.start < schedule.utc(trigger.start):
        return None
    return latest


def first_watermark(trigger: ScheduleTrigger, now: datetime) -> datetime:
    """Where a schedule seen for the first time starts: ``trigger.start`` if
    set, else the start of the interval running at ``now`` — its run is the
    first one, created when it ends; no history is replayed."""
    schedule = schedule_of(trigger)
    if trigger.start is not None:
        return schedule.utc(trigger.start)
    return schedule.prev_fire(now)


def plan_catchup(
    trigger: ScheduleTrigger,
    done_until: datetime,
    now: datetime,
    *,
    policy: Literal["all", "latest", "none"] | None = None,
    missed_before: datetime | None = None,
    limit: int = 1000,
) -> Catchup:
    """Which complete intervals after ``done_until`` to run at ``now`` (see
    the module docs); ``policy`` defaults to ``trigger.catchup``.

    ``missed_before`` is for ``none``: intervals ending before it are skipped
    (default: ``now``, i.e. everything already complete is skipped).
    """
    schedule = schedule_of(trigger)
    policy = policy or trigger.catchup
    done_until = done_until.astimezone(UTC)
    if policy == "all":
        due = schedule.intervals_between(done_until, now, limit=limit)
        return Catchup(due, due[-1].end if due else done_until)
    latest = schedule.latest_complete(now)
    if latest.end <= done_until:
        return Catchup([], done_until)
    if policy == "latest":
        run = [latest] if latest.start >= done_until else []
    else:
        cutoff = missed_before if missed_before is not None else now
        # Only intervals ending at or after the cutoff can run: start the
        # search at the interval in progress at the cutoff.
        first = max(done_until, schedule.prev_fire(cutoff))
        run = [i for i in schedule.intervals_between(first, now, limit=limit) if i.end >= cutoff]
        if len(run) == limit:
            return Catchup(run, run[-1].end, _skipped(done_until, run[0].start))
    skipped_to = run[0].start if run else latest.end
    return Catchup(run, latest.end, _skipped(done_until, skipped_to))


def _skipped(since: datetime, to: datetime) -> tuple[datetime, datetime] | None:
    return (since, to) if to > since else None
