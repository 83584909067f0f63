-- apply_decisions, the statement that moves decided tasks and claims for the
-- worker that finished their predecessors, as a function whose statement
-- runs on a generic plan: planned once per session, never again per call.
--
-- As a prepared statement it was planned again at every call once its
-- lookups were written to go by key (below): the plan cache compares the
-- generic plan, costed for ten rows per array, with custom plans costed for
-- the arrays' real sizes (one row a step in a chain), and re-planning cost a
-- chain step 2.5 ms at bind, on a slow hour, against 0.7 ms to execute.
-- A generic plan is also the steadier one: it cannot take the arrays' sizes
-- or a burst's stale statistics for a reason to scan a table.
--
-- Written so that every plan finds its rows by key:
-- - each move's task row through the (run_id, task_id) index, one lookup
--   per move (OFFSET 0 keeps the planner from turning them into a join that,
--   on a burst's stale estimates, scans the table);
-- - whether any task is held is asked once (usually nothing is), not once
--   per move;
-- - which rows are claimed is known from two arrays read once: joined to the
--   ranking CTE instead, each moved row rescanned it in a nested loop (the
--   planner takes a CTE for a row or two), about 10 ms of a 128-task commit
--   under EXPLAIN ANALYZE.
-- The parameters, in order, are those of the named query apply_decisions
-- (store/sql/engine.sql), which says what the statement does.
CREATE FUNCTION apply_decisions(
    move_run_ids bigint[], move_task_ids text[], move_sources task_state[],
    move_targets task_state[], move_reasons text[], move_actor text, claim_owner text,
    claim_room integer, lease_seconds float8, lease_stamp timestamptz)
RETURNS TABLE (limited_waiting boolean, queued bigint, moved bigint, id bigint, run_id bigint,
               task_id text, attempt integer, tries_before integer, handler text,
               resume_payload text, workflow text, version text, params text,
               logical_date timestamptz, interval_end timestamptz, upstream text,
               queue_wait_s float8)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(move_run_ids, move_task_ids, move_sources, move_targets, move_reasons)
            AS i(run_id, task_id, source, target, reason)
    ), moving AS (
        -- The rows to move, as this statement sees them under their runs' locks.
        SELECT t.id, t.priority, t.limited, i.source, i.reason,
               CASE WHEN i.target NOT IN ('queued', 'held') THEN i.target
                    -- Asked once (the usual answer: nothing is held), not once per move.
                    WHEN NOT EXISTS (SELECT 1 FROM task_holds) THEN 'queued'::task_state
                    WHEN EXISTS (SELECT 1 FROM task_holds h JOIN runs hr ON hr.workflow = h.workflow
                                 WHERE hr.id = i.run_id AND h.task IN (i.task_id, '*'))
                    THEN 'held'::task_state ELSE 'queued'::task_state END AS target
        FROM input i
        -- Each row by its key, whatever the statistics say: OFFSET 0 keeps the
        -- planner from turning the lookups into a join that, on a burst's stale
        -- estimates, scans the table.
        CROSS JOIN LATERAL (
            SELECT s.id, s.priority, s.limited FROM task_instances s
            WHERE s.run_id = i.run_id AND s.task_id = i.task_id AND s.state = i.source
            OFFSET 0
        ) t
    ), limited AS (
        -- Asked only by a caller that claims (names a lease owner).
        SELECT claim_owner IS NOT NULL AND (EXISTS (
            SELECT 1 FROM task_instances
            WHERE state IN ('queued', 'up_for_retry') AND limited
              AND (not_before IS NULL OR not_before <= now())
        ) OR EXISTS (SELECT 1 FROM moving WHERE target = 'queued' AND limited)) AS waiting
    ), claimable AS (
        SELECT id, priority, state, greatest(queued_at, not_before) AS ready_at FROM task_instances
        WHERE state IN ('queued', 'up_for_retry') AND NOT limited
          AND (not_before IS NULL OR not_before <= now())
          AND NOT (SELECT waiting FROM limited)
          AND id NOT IN (SELECT id FROM moving)  -- each row is updated once
        ORDER BY priority DESC, id
        LIMIT claim_room
        FOR UPDATE SKIP LOCKED
    ), best AS (
        SELECT c.id, c.successor FROM (
            SELECT id, priority, true AS successor FROM moving
            WHERE target = 'queued' AND NOT limited AND NOT (SELECT waiting FROM limited)
            UNION ALL
            SELECT id, priority, false FROM claimable
        ) c
        ORDER BY c.priority DESC, c.successor DESC, c.id
        LIMIT claim_room
    ), chosen AS (
        -- Which of the moved and of the claimable rows are claimed, as arrays
        -- read once. Joined to best instead, each moved row rescanned the whole
        -- CTE in a nested loop (the planner takes a CTE for a row or two): about
        -- 10 ms of a 128-task commit (EXPLAIN ANALYZE), against a fraction of a
        -- millisecond for these membership tests.
        SELECT coalesce(array_agg(id) FILTER (WHERE successor), '{}') AS successors,
               coalesce(array_agg(id) FILTER (WHERE NOT successor), '{}') AS others
        FROM best
    ), decided AS (
        SELECT m.*, m.id = ANY((SELECT successors FROM chosen)::bigint[]) AS claim FROM moving m
    ), updated AS (
        UPDATE task_instances t
        SET state = CASE WHEN m.claim THEN 'running'::task_state ELSE m.target END,
            queued_at = CASE WHEN m.target = 'queued' THEN now() ELSE t.queued_at END,
            ended_at = CASE WHEN m.target = 'queued' THEN t.ended_at ELSE now() END,
            attempt = t.attempt + m.claim::integer,
            started_at = CASE WHEN m.claim THEN now() ELSE t.started_at END,
            lease_owner = CASE WHEN m.claim THEN claim_owner END,
            lease_until = CASE WHEN m.claim THEN
                coalesce(lease_stamp, clock_timestamp()) + make_interval(secs => lease_seconds) END,
            not_before = CASE WHEN m.claim THEN NULL ELSE t.not_before END
        FROM decided m
        WHERE t.id = m.id AND t.state = m.source
        RETURNING t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.handler, t.needs,
                  t.resume_payload, m.source, m.target, m.reason, m.claim AS claimed
    ), taken AS (
        UPDATE task_instances t
        SET state = 'running', attempt = t.attempt + 1, lease_owner = claim_owner,
            lease_until = coalesce(lease_stamp, clock_timestamp()) + make_interval(secs => lease_seconds),
            started_at = now(), not_before = NULL
        FROM claimable c
        WHERE t.id = c.id AND c.id = ANY((SELECT others FROM chosen)::bigint[])
        RETURNING t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.handler, t.needs,
                  t.resume_payload, c.state AS picked_state, c.ready_at
    ), claimed AS (
        SELECT id, run_id, task_id, attempt, tries_before, handler, needs, resume_payload,
               'queued'::task_state AS picked_state, now() AS ready_at
        FROM updated WHERE claimed
        UNION ALL
        SELECT * FROM taken
    ), logged AS (
        -- A successor claimed here is logged queued (its decision), then running.
        INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
        SELECT run_id, task_id, source::text, target::text, attempt - claimed::integer, move_actor, reason
        FROM updated
        UNION ALL
        SELECT run_id, task_id, picked_state::text, 'running', attempt, claim_owner, 'claimed' FROM claimed
    ), handed AS (
        SELECT c.id, c.run_id, c.task_id, c.attempt, c.tries_before, c.handler,
               c.resume_payload::text AS resume_payload, h.*,
               extract(epoch FROM now() - c.ready_at)::float8 AS queue_wait_s
        FROM claimed c CROSS JOIN LATERAL hand_over(c.run_id, c.needs) h
    ), counts AS (
        SELECT count(*) FILTER (WHERE target = 'queued') AS queued, count(*) AS moved FROM updated
    )
    SELECT l.waiting AS limited_waiting, n.queued, n.moved, h.*
    FROM limited l CROSS JOIN counts n LEFT JOIN handed h ON true
    ORDER BY h.id;
END $$;
