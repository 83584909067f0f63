-- What a claimed task's handler receives of its run: the run's workflow,
-- version, params and interval, and the outputs of the task's upstream tasks
-- keyed by task id (JSON text; NULL for a task with none). One definition for
-- every statement that hands a task to a worker (claim, claim_mixed,
-- apply_decisions), each joining it LATERAL. Written so the planner inlines
-- it into the calling statement (a set-returning SQL function, STABLE, not
-- STRICT): a function it calls instead is planned again in every statement
-- that calls it, which cost the fanout benchmark a sixth of its runs/s.
-- Every name is qualified: in a SQL function a column's name wins over a
-- parameter's.
CREATE FUNCTION hand_over(claimed_run bigint, claimed_needs text[])
RETURNS TABLE (workflow text, version text, params text, logical_date timestamptz,
               interval_end timestamptz, upstream text)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT r.workflow, r.version, r.params::text, r.logical_date, r.interval_end,
           (SELECT jsonb_object_agg(u.task_id, u.output)::text FROM task_instances u
             -- A root: a one-time filter, no scan.
             WHERE cardinality(hand_over.claimed_needs) > 0
               AND u.run_id = hand_over.claimed_run
               AND u.task_id = ANY(hand_over.claimed_needs))
    FROM runs r WHERE r.id = hand_over.claimed_run
$$;
