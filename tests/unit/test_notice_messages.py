"""What a unit of work notifies: at most one small message per channel, and
only when someone may be idle waiting for it."""

from __future__ import annotations

from orchestrator.notices import (
    DEFERRALS_CHANNEL,
    PAYLOAD_MAX,
    RUNS_CHANNEL,
    TASKS_CHANNEL,
    Notices,
)


def test_nothing_happened_nothing_is_sent() -> None:
    assert Notices().messages() == []


def test_work_the_committer_claims_itself_wakes_nobody() -> None:
    notices = Notices(queued=3)
    notices.queued -= 3
    assert notices.messages() == []


def test_one_message_per_channel_with_the_ended_runs_named_once() -> None:
    notices = Notices(queued=2, timed_waits=True)
    notices.runs_ended([5, 7])
    notices.runs_ended([7, 9])
    assert notices.messages() == [
        (TASKS_CHANNEL, ""),
        (RUNS_CHANNEL, "5,7,9"),
        (DEFERRALS_CHANNEL, ""),
    ]


def test_too_many_ended_runs_for_one_payload_ask_listeners_to_recheck_all() -> None:
    notices = Notices()
    notices.runs_ended(range(10**6, 10**6 + PAYLOAD_MAX))
    assert notices.messages() == [(RUNS_CHANNEL, "")]
