-- The triggerer's timers index only the waits that have a time: a wait for an
-- event without a deadline (most of them, and there may be millions) has
-- nothing to index there. Kept out, it costs no entry when it starts or ends,
-- and the index no longer passes for a list of every waiting deferral, which
-- led the planner, short of statistics, to read all of them to end a few.
-- The triggerer's range conditions on least(wake_at, timeout_at) imply the
-- new predicate, so its reads use the index as before.
DROP INDEX deferrals_waiting_due;
CREATE INDEX deferrals_waiting_due ON deferrals (least(wake_at, timeout_at))
    WHERE state = 'waiting' AND least(wake_at, timeout_at) IS NOT NULL;
