-- lock_and_record_attempts (0024), reading the candidates' task states by
-- key, whatever the statistics say.
--
-- In a burst (a fanout of a few thousand runs on fresh tables; a busy day's
-- first minutes too) the planner's estimates of the hot tables are far off,
-- and the plan it made for that read grew with the backlog: a scan of the
-- whole task_instances table, joined to every live run (or, on other
-- estimates, every live run scanned again for each task state).
--
-- Now the runs' states come from the first statement, which holds their
-- locks: a run's state cannot change while its row is locked, so the second
-- statement reads only the task states of candidates found running there,
-- run by run through the (run_id, task_id) index (OFFSET 0 keeps the planner
-- from turning those lookups back into a join), and does not join runs.
--
-- Both statements run on generic plans (plan_cache_mode, for this function
-- only), made once per session: left to the plan cache, the statements were
-- planned again at every call (a generic plan is costed for ten rows per
-- array, a custom one for the real batch, one row a step in a chain), which
-- cost more than running them. The update reaches its rows only through the
-- input, by primary key: given the id array as well, a generic plan built on
-- stale estimates took the table's side for a row or two and compared every
-- attempt with every row it found, 135 ms for a batch of 384 in a burst.
CREATE OR REPLACE FUNCTION lock_and_record_attempts(
    run_ids bigint[], ids bigint[], attempts integer[], targets task_state[],
    outputs text[], errors text[], delays_s float8[], owners text[],
    expired_only boolean[], reasons text[], source task_state, actor text,
    candidates bigint[], stamp timestamptz)
RETURNS TABLE (id bigint, attempt integer, run_id bigint, task_id text, state text,
               workflow text, version text)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    locked record;
    live bigint[] := '{}';
BEGIN
    FOR locked IN
        SELECT r.id, r.workflow, r.version, r.state
        FROM (SELECT DISTINCT u.id FROM unnest(run_ids) AS u(id) ORDER BY u.id) i
        CROSS JOIN LATERAL (
            SELECT runs.id, runs.workflow, runs.version, runs.state FROM runs
            WHERE runs.id = i.id FOR UPDATE
        ) r
    LOOP
        id := NULL; attempt := NULL; task_id := NULL;
        run_id := locked.id; state := locked.state::text;
        workflow := locked.workflow; version := locked.version;
        RETURN NEXT;
        IF locked.state = 'running' AND locked.id = ANY(candidates) THEN
            live := live || locked.id;
        END IF;
    END LOOP;

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
        WHERE t.id = i.id
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
    FROM unnest(live) AS c(id)
    CROSS JOIN LATERAL (
        SELECT s.run_id, s.task_id, s.state FROM task_instances s WHERE s.run_id = c.id
        OFFSET 0
    ) t;
END $$;
