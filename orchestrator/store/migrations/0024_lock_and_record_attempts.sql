-- A completion's first statement: lock its runs, then record its finished
-- attempts and read the task states its decisions need, in one round trip.
--
-- Two statements in one function, because each needs its own snapshot: in a
-- VOLATILE function every statement takes a new one (under READ COMMITTED),
-- so the second sees every commit made before the first was granted the
-- runs' locks. Read in one statement, a completion that waited for a run's
-- lock would decide on task states from before the commit it waited for (two
-- siblings ending at once, each seeing the other still running: their
-- successor never queued). PL/pgSQL keeps each statement's plan for the
-- session, as a prepared statement would.
--
-- Rows: one per locked run (workflow set: id order, by key, as lock_runs);
-- one per accepted attempt (id set); then every task state (task_id set) of
-- the runs in candidates that are still running, as of the second
-- statement's snapshot: before this batch (the caller overlays the accepted
-- targets). Attempts are guarded by state, attempt and lease: a late result
-- from a worker whose lease was taken over matches nothing and is rejected.
-- stamp: the lease clock's time (NULL: the database's).
CREATE FUNCTION lock_and_record_attempts(
    run_ids bigint[], ids bigint[], attempts integer[], targets task_state[],
    outputs text[], errors text[], delays_s float8[], owners text[],
    expired_only boolean[], reasons text[], source task_state, actor text,
    candidates bigint[], stamp timestamptz)
RETURNS TABLE (id bigint, attempt integer, run_id bigint, task_id text, state text,
               workflow text, version text)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    SELECT NULL::bigint, NULL::integer, r.id, NULL::text, r.state::text, r.workflow, r.version
    FROM (SELECT DISTINCT u.id FROM unnest(run_ids) AS u(id) ORDER BY u.id) i
    CROSS JOIN LATERAL (
        SELECT runs.id, runs.workflow, runs.version, runs.state FROM runs
        WHERE runs.id = i.id FOR UPDATE
    ) r;

    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(ids, attempts, targets, outputs, errors, delays_s, owners,
                             expired_only, reasons)
            AS i(id, attempt, target, output, error, delay_s, owner, expired_only, reason)
    ), updated AS (
        UPDATE task_instances t
        -- A retry of a task an operator holds waits held (keeping its delay);
        -- checked under the run's lock, like apply_decisions.
        SET state = CASE WHEN i.target = 'up_for_retry' AND EXISTS (
                        SELECT 1 FROM task_holds h JOIN runs hr ON hr.workflow = h.workflow
                        WHERE hr.id = t.run_id AND h.task IN (t.task_id, '*'))
                    THEN 'held'::task_state ELSE i.target END,
            output = i.output::jsonb, error = i.error,
            lease_owner = NULL, lease_until = NULL,
            not_before = CASE WHEN i.delay_s IS NULL THEN NULL
                              ELSE now() + make_interval(secs => i.delay_s) END,
            ended_at = CASE WHEN i.target IN ('up_for_retry', 'deferred') THEN NULL ELSE now() END
        FROM input i
        -- The id array as well as the join: looked up by key, never a scan of
        -- the running rows, whatever the statistics of fresh rows say.
        WHERE t.id = i.id AND t.id = ANY(ids)
          AND t.state = source AND t.attempt = i.attempt
          AND t.lease_owner = i.owner
          AND (NOT i.expired_only OR t.lease_until < coalesce(stamp, now()))
        RETURNING t.id, t.run_id, t.task_id, t.attempt, t.state, i.reason
    ), logged AS (
        INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
        SELECT u.run_id, u.task_id, source::text, u.state::text, u.attempt, actor, u.reason
        FROM updated u
    )
    SELECT u.id, u.attempt, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text
    FROM updated u
    UNION ALL
    SELECT NULL, NULL, t.run_id, t.task_id, t.state::text, NULL, NULL
    FROM task_instances t JOIN runs r ON r.id = t.run_id
    WHERE t.run_id = ANY(candidates) AND r.state = 'running';
END $$;
