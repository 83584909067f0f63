-- name: apply_decisions_and_claim
-- apply_decisions, and in the same statement a claim of up to $8 tasks for
-- lease owner $7 (as claim: $9 lease seconds, $10 the lease clock's time):
-- the successors this statement queues, which the claim of a later statement
-- could not see any sooner, and the work that was claimable before it, taken
-- together by priority; at equal priority the successors come first, so a
-- worker runs the next step of what it just finished without waiting for a
-- notification or another round trip. A queued successor is logged queued,
-- then claimed. While limited work (named pools, per-task caps) waits,
-- nothing is claimed here (claim_mixed orders both kinds by priority).
-- $1..$6 as apply_decisions. Every row carries limited_waiting and the
-- counts of apply_decisions (queued counts the successors claimed here too);
-- the tasks claimed come one per row, with the columns of claim.
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::task_state[], $4::task_state[],
                         $5::text[])
        AS i(run_id, task_id, source, target, reason)
), moving AS (
    -- The rows to move, as this statement sees them under their runs' locks.
    SELECT t.id, t.priority, t.limited, i.source, i.reason,
           CASE WHEN i.target IN ('queued', 'held') THEN
               CASE WHEN EXISTS (SELECT 1 FROM task_holds h JOIN runs hr ON hr.workflow = h.workflow
                                 WHERE hr.id = i.run_id AND h.task IN (i.task_id, '*'))
                    THEN 'held'::task_state ELSE 'queued'::task_state END
           ELSE i.target END AS target
    FROM input i JOIN task_instances t
      ON t.run_id = i.run_id AND t.task_id = i.task_id AND t.state = i.source
    -- The arrays as well as the join: looked up by key, never a table scan.
    WHERE t.run_id = ANY($1::bigint[]) AND t.task_id = ANY($2::text[])
), limited AS (
    SELECT EXISTS (
        SELECT 1 FROM task_instances
        WHERE state IN ('queued', 'up_for_retry') AND limited
          AND (not_before IS NULL OR not_before <= now())
    ) OR EXISTS (SELECT 1 FROM moving WHERE target = 'queued' AND limited) AS waiting
), claimable AS (
    SELECT id, priority, state, greatest(queued_at, not_before) AS ready_at FROM task_instances
    WHERE state IN ('queued', 'up_for_retry') AND NOT limited
      AND (not_before IS NULL OR not_before <= now())
      AND NOT (SELECT waiting FROM limited)
      AND id NOT IN (SELECT id FROM moving)  -- each row is updated once
    ORDER BY priority DESC, id
    LIMIT $8
    FOR UPDATE SKIP LOCKED
), best AS (
    SELECT c.id, c.successor FROM (
        SELECT id, priority, true AS successor FROM moving
        WHERE target = 'queued' AND NOT limited AND NOT (SELECT waiting FROM limited)
        UNION ALL
        SELECT id, priority, false FROM claimable
    ) c
    ORDER BY c.priority DESC, c.successor DESC, c.id
    LIMIT $8
), updated AS (
    UPDATE task_instances t
    SET state = CASE WHEN b.id IS NULL THEN m.target ELSE 'running'::task_state END,
        queued_at = CASE WHEN m.target = 'queued' THEN now() ELSE t.queued_at END,
        ended_at = CASE WHEN m.target = 'queued' THEN t.ended_at ELSE now() END,
        attempt = t.attempt + (b.id IS NOT NULL)::integer,
        started_at = CASE WHEN b.id IS NULL THEN t.started_at ELSE now() END,
        lease_owner = CASE WHEN b.id IS NULL THEN NULL ELSE $7 END,
        lease_until = CASE WHEN b.id IS NULL THEN NULL ELSE
            coalesce($10::timestamptz, clock_timestamp()) + make_interval(secs => $9) END,
        not_before = CASE WHEN b.id IS NULL THEN t.not_before END
    FROM moving m LEFT JOIN best b ON b.id = m.id AND b.successor
    WHERE t.id = m.id AND t.state = m.source
    RETURNING t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.handler, t.needs,
              t.resume_payload, m.source, m.target, m.reason, b.id IS NOT NULL AS claimed
), taken AS (
    UPDATE task_instances t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = $7,
        lease_until = coalesce($10::timestamptz, clock_timestamp()) + make_interval(secs => $9),
        started_at = now(), not_before = NULL
    FROM claimable c JOIN best b ON b.id = c.id AND NOT b.successor
    WHERE t.id = c.id
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
    SELECT run_id, task_id, source::text, target::text, attempt - claimed::integer, $6, reason
    FROM updated
    UNION ALL
    SELECT run_id, task_id, picked_state::text, 'running', attempt, $7, 'claimed' FROM claimed
), handed AS (
    SELECT c.id, c.run_id, c.task_id, c.attempt, c.tries_before, c.handler, r.workflow,
           r.version, c.resume_payload::text AS resume_payload,
           r.params::text AS params, r.logical_date, r.interval_end,
           CASE WHEN cardinality(c.needs) = 0 THEN NULL ELSE
               (SELECT jsonb_object_agg(u.task_id, u.output)::text FROM task_instances u
                 WHERE u.run_id = c.run_id AND u.task_id = ANY(c.needs)) END AS upstream,
           extract(epoch FROM now() - c.ready_at)::float8 AS queue_wait_s
    FROM claimed c JOIN runs r ON r.id = c.run_id
), counts AS (
    SELECT count(*) FILTER (WHERE target = 'queued') AS queued, count(*) AS moved FROM updated
)
SELECT l.waiting AS limited_waiting, n.queued, n.moved, h.*
FROM limited l CROSS JOIN counts n LEFT JOIN handed h ON true
ORDER BY h.id;
