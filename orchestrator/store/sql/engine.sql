-- Named queries of the engine core. Each starts with a "-- name: NAME" line.
-- Parameters are positional ($1, ...); state arrays come from orchestrator/states.py.

-- name: upsert_version
INSERT INTO workflow_versions (version, workflow, spec)
VALUES ($1, $2, $3::jsonb)
ON CONFLICT (version) DO NOTHING;

-- name: set_current_version
INSERT INTO workflows (name, current_version, max_active_runs)
VALUES ($1, $2, $3)
ON CONFLICT (name) DO UPDATE
SET current_version = excluded.current_version,
    max_active_runs = excluded.max_active_runs,
    updated_at = now()
WHERE workflows.current_version IS DISTINCT FROM excluded.current_version
   OR workflows.max_active_runs IS DISTINCT FROM excluded.max_active_runs;

-- name: ensure_pools
INSERT INTO pools (name, slots)
SELECT name, $2 FROM unnest($1::text[]) AS name
ON CONFLICT (name) DO NOTHING;

-- name: set_pool
-- Returns a row only when the pool is new or its slots changed.
INSERT INTO pools (name, slots) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET slots = excluded.slots WHERE pools.slots <> excluded.slots
RETURNING name;

-- name: list_pools
SELECT p.name, p.slots,
       (SELECT count(*) FROM task_instances t
         WHERE t.state = 'running' AND t.limited AND t.pool = p.name) AS running
FROM pools p ORDER BY p.name;

-- name: get_version
SELECT workflow, spec::text AS spec FROM workflow_versions WHERE version = $1;

-- name: current_versions
SELECT name, current_version, max_active_runs FROM workflows WHERE name = ANY($1::text[]);

-- name: list_workflows
SELECT w.name, w.current_version, w.max_active_runs, w.updated_at,
       (SELECT count(*) FROM runs r WHERE r.workflow = w.name AND r.state IN ('queued', 'running'))
           AS live_runs
FROM workflows w ORDER BY w.name;

-- name: lock_workflow
SELECT name FROM workflows WHERE name = $1 FOR UPDATE;

-- name: count_running_runs
SELECT count(*) FROM runs WHERE workflow = $1 AND state = 'running';

-- name: allocate_run_ids
-- The sequence is looked up once, not once per id.
WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence('runs', 'id')::regclass AS seq)
SELECT nextval(s.seq) AS id FROM s, generate_series(1, $1);

-- name: versions_with_run_ids
-- current_versions and allocate_run_ids in one round trip, a trigger's first
-- statement: a row per named workflow that exists (a row with a NULL name when
-- none does), each carrying the same $2 new run ids. $1 names.
WITH s AS MATERIALIZED (SELECT pg_get_serial_sequence('runs', 'id')::regclass AS seq),
ids AS MATERIALIZED (SELECT array_agg(nextval(s.seq)) AS ids FROM s, generate_series(1, $2))
SELECT w.name, w.current_version, w.max_active_runs, ids.ids
FROM ids LEFT JOIN workflows w ON w.name = ANY($1::text[]);

-- name: insert_runs
-- Runs, the task instances of those that start, and both "created" transitions,
-- set-based in one statement. $1 the runs, one JSON array each:
-- [id, workflow, version, state, params, logical_date, interval_end, event_id,
-- actor]; $2 the task rows of their versions, one JSON array each: [version,
-- task_id, state, handler, pool, priority, limited, concurrency_key,
-- max_concurrency, needs] (roots queued, the rest scheduled); $3 the actor of
-- the task transitions. One document per table: one parameter to send and to
-- parse, whatever the batch size.
-- The hand-over claim, in the same statement: with lease owner $4 (the
-- worker of the committing process; NULL: none), up to $5 of the roots it
-- queues start running for that worker ($6 lease seconds from $7, the lease
-- clock's time, or the database's when NULL), logged queued, then claimed:
-- but only when nothing was claimable before and no root is limited, so the
-- claim statement's order (priority, then age) and its answer about limited
-- work hold unchanged. Otherwise (others_claimable) the caller claims with the
-- claim statement. Rows: one per root claimed here, with the columns of
-- claim (none: one row with a NULL id); every row carries others_claimable.
WITH input AS (
    SELECT (r->>0)::bigint AS id, r->>1 AS workflow, r->>2 AS version,
           (r->>3)::run_state AS state, r->4 AS params,
           (r->>5)::timestamptz AS logical_date, (r->>6)::timestamptz AS interval_end,
           (r->>7)::bigint AS event_id, r->>8 AS actor
    FROM jsonb_array_elements($1::jsonb) AS r
), runs_in AS (
    INSERT INTO runs (id, workflow, version, state, params, logical_date, interval_end,
                      event_id, actor, started_at)
    SELECT id, workflow, version, state, params, logical_date, interval_end, event_id,
           actor, CASE WHEN state = 'running' THEN now() END
    FROM input
    RETURNING id, workflow, version, state, actor
), template AS MATERIALIZED (
    -- A few rows, each decoded once (not once per run).
    SELECT t->>0 AS version, t->>1 AS task_id, (t->>2)::task_state AS state,
           t->>3 AS handler, t->>4 AS pool, (t->>5)::integer AS priority,
           (t->>6)::boolean AS limited, t->>7 AS concurrency_key,
           (t->>8)::integer AS max_concurrency,
           ARRAY(SELECT jsonb_array_elements_text(t->9)) AS needs, n
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS x(t, n)
), holds AS MATERIALIZED (
    -- Tasks an operator holds (a handful): read once, not once per row.
    SELECT workflow, task FROM task_holds
), rows_in AS MATERIALIZED (
    SELECT r.id AS run_id, t.task_id, t.handler, t.pool, t.priority, t.limited,
           t.concurrency_key, t.max_concurrency, t.needs, t.n,
           -- A root of a task an operator holds waits held (no slot) instead.
           CASE WHEN t.state = 'queued' AND EXISTS (
                    SELECT 1 FROM holds h
                    WHERE h.workflow = r.workflow AND h.task IN (t.task_id, '*'))
                THEN 'held'::task_state ELSE t.state END AS state
    FROM runs_in r JOIN template t ON t.version = r.version
    WHERE r.state = 'running'
), others AS (
    SELECT $4::text IS NULL OR EXISTS (
        SELECT 1 FROM task_instances
        WHERE state IN ('queued', 'up_for_retry') AND NOT limited
          AND (not_before IS NULL OR not_before <= now())
    ) OR EXISTS (
        SELECT 1 FROM task_instances
        WHERE state IN ('queued', 'up_for_retry') AND limited
          AND (not_before IS NULL OR not_before <= now())
    ) OR EXISTS (SELECT 1 FROM rows_in WHERE state = 'queued' AND limited) AS claimable
), taking AS (
    SELECT run_id, task_id FROM rows_in
    WHERE state = 'queued' AND NOT (SELECT claimable FROM others)
    ORDER BY priority DESC, run_id, n
    LIMIT $5
), tasks_in AS (
    INSERT INTO task_instances (run_id, task_id, state, handler, pool, priority, limited,
                                concurrency_key, max_concurrency, needs, queued_at, attempt,
                                lease_owner, lease_until, started_at)
    SELECT i.run_id, i.task_id,
           CASE WHEN k.task_id IS NULL THEN i.state ELSE 'running'::task_state END,
           i.handler, i.pool, i.priority, i.limited, i.concurrency_key, i.max_concurrency,
           i.needs, CASE WHEN i.state = 'queued' THEN now() END,
           (k.task_id IS NOT NULL)::integer,
           CASE WHEN k.task_id IS NOT NULL THEN $4 END,
           CASE WHEN k.task_id IS NOT NULL THEN
               coalesce($7::timestamptz, clock_timestamp()) + make_interval(secs => $6) END,
           CASE WHEN k.task_id IS NOT NULL THEN now() END
    FROM rows_in i LEFT JOIN taking k ON k.run_id = i.run_id AND k.task_id = i.task_id
    -- Claims take equal priorities oldest first: ids in run order, then DAG order.
    ORDER BY i.run_id, i.n
    RETURNING id, run_id, task_id, state, attempt, handler
), logged AS (
    -- The runs' transitions first, then their tasks', then the claims
    -- (UNION ALL reads in order).
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT id, NULL, NULL, state::text, NULL, actor, 'created' FROM runs_in
    UNION ALL
    SELECT run_id, task_id, NULL,
           CASE WHEN state = 'running' THEN 'queued' ELSE state::text END, 0, $3, 'created'
    FROM tasks_in
    UNION ALL
    SELECT run_id, task_id, 'queued', 'running', 1, $4, 'claimed' FROM tasks_in
    WHERE state = 'running'
), handed AS (
    -- The columns of hand_over, from the input: this statement's runs are not
    -- in its snapshot, and a root has no upstream outputs.
    SELECT c.id, c.run_id, c.task_id, c.attempt, 0 AS tries_before, c.handler,
           NULL::text AS resume_payload, r.workflow, r.version, r.params::text AS params,
           r.logical_date, r.interval_end, NULL::text AS upstream, 0::float8 AS queue_wait_s
    FROM tasks_in c JOIN input r ON r.id = c.run_id
    WHERE c.state = 'running'
)
SELECT o.claimable AS others_claimable, h.*
FROM others o LEFT JOIN handed h ON true
ORDER BY h.id;

-- name: insert_task_instances
-- One row per (run, task) of queued runs that start; roots start queued, the
-- rest scheduled (new runs get theirs from insert_runs).
WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::task_state[], $4::text[], $5::text[],
                         $6::integer[], $7::boolean[], $8::text[], $9::integer[], $10::text[])
        AS i(run_id, task_id, state, handler, pool, priority, limited, concurrency_key,
             max_concurrency, needs)
), inserted AS (
    INSERT INTO task_instances (run_id, task_id, state, handler, pool, priority, limited,
                                concurrency_key, max_concurrency, needs, queued_at)
    SELECT run_id, task_id,
           -- A root of a task an operator holds waits held (no slot) instead.
           CASE WHEN state = 'queued' AND EXISTS (SELECT 1 FROM task_holds h JOIN runs hr ON hr.workflow = h.workflow
                    WHERE hr.id = input.run_id AND h.task IN (input.task_id, '*'))
                THEN 'held'::task_state ELSE state END,
           handler, pool, priority, limited, concurrency_key,
           max_concurrency, needs::text[],
           CASE WHEN state = 'queued' THEN now() END
    FROM input
    RETURNING run_id, task_id, state
)
INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
SELECT run_id, task_id, NULL, state::text, 0, $11, 'created' FROM inserted;

-- name: claim
-- Claim up to $2 runnable unlimited task instances for lease owner $1 in one
-- statement: pick (SKIP LOCKED), lease, log, and return what the handler needs.
-- Every row also says whether limited work (named pools, per-task caps) waits
-- to run; while it does nothing is claimed here (claim_mixed orders both kinds
-- by priority) and the one row returned has a NULL id. One round trip answers
-- both questions of a claim.
WITH limited AS (
    SELECT EXISTS (
        SELECT 1 FROM task_instances
        WHERE state IN ('queued', 'up_for_retry') AND limited
          AND (not_before IS NULL OR not_before <= now())
    ) AS waiting
), picked AS (
    -- ready_at: when it became runnable (queued, or its retry came due): the
    -- queue-wait metric.
    SELECT id, state, greatest(queued_at, not_before) AS ready_at FROM task_instances
    WHERE state IN ('queued', 'up_for_retry') AND NOT limited
      AND (not_before IS NULL OR not_before <= now())
      AND NOT (SELECT waiting FROM limited)
    ORDER BY priority DESC, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE task_instances t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = $1,
        lease_until = coalesce($4::timestamptz, clock_timestamp()) + make_interval(secs => $3),
        started_at = now(), not_before = NULL
    FROM picked p WHERE t.id = p.id
    -- What was picked rides along: no join back to picked (a CTE has no index).
    RETURNING t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.handler, t.needs,
              t.resume_payload, p.state AS picked_state, p.ready_at
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT c.run_id, c.task_id, c.picked_state::text, 'running', c.attempt, $1, 'claimed'
    FROM claimed c
), handed AS (
    SELECT c.id, c.run_id, c.task_id, c.attempt, c.tries_before, c.handler,
           c.resume_payload::text AS resume_payload, h.*,
           extract(epoch FROM now() - c.ready_at)::float8 AS queue_wait_s
    FROM claimed c CROSS JOIN LATERAL hand_over(c.run_id, c.needs) h
)
SELECT l.waiting AS limited_waiting, h.*
FROM limited l LEFT JOIN handed h ON true
ORDER BY h.id;

-- name: lock_limited_claims
SELECT pg_advisory_xact_lock(8675309);

-- name: claim_mixed
-- Used while limited work waits, under lock_limited_claims so the running
-- counts cannot be overtaken: limited candidates within their pool and task
-- caps, merged with unlimited ones, taken strictly by priority.
WITH running_pools AS (
    SELECT pool, count(*) AS n FROM task_instances
    WHERE state = 'running' AND limited GROUP BY pool
), running_keys AS (
    SELECT concurrency_key, count(*) AS n FROM task_instances
    WHERE state = 'running' AND concurrency_key IS NOT NULL GROUP BY concurrency_key
), candidates AS (
    SELECT t.id, t.priority, t.pool, t.max_concurrency, t.concurrency_key,
           row_number() OVER (PARTITION BY t.pool ORDER BY t.priority DESC, t.id) AS pool_rank,
           row_number() OVER (PARTITION BY t.concurrency_key ORDER BY t.priority DESC, t.id)
               AS key_rank
    FROM task_instances t
    WHERE t.state IN ('queued', 'up_for_retry') AND t.limited
      AND (t.not_before IS NULL OR t.not_before <= now())
), allowed AS (
    SELECT c.id, c.priority FROM candidates c
    LEFT JOIN pools p ON p.name = c.pool
    LEFT JOIN running_pools rp ON rp.pool = c.pool
    LEFT JOIN running_keys rk ON rk.concurrency_key = c.concurrency_key
    WHERE (c.pool = 'default' OR c.pool_rank <= coalesce(p.slots, $4) - coalesce(rp.n, 0))
      AND (c.max_concurrency IS NULL OR c.key_rank <= c.max_concurrency - coalesce(rk.n, 0))
    UNION ALL
    (SELECT id, priority FROM task_instances
     WHERE state IN ('queued', 'up_for_retry') AND NOT limited
       AND (not_before IS NULL OR not_before <= now())
     ORDER BY priority DESC, id
     LIMIT $2)
), best AS (
    SELECT id FROM allowed ORDER BY priority DESC, id LIMIT $2
), picked AS (
    SELECT t.id, t.state, greatest(t.queued_at, t.not_before) AS ready_at
    FROM task_instances t JOIN best b ON b.id = t.id
    FOR UPDATE OF t SKIP LOCKED
), claimed AS (
    UPDATE task_instances t
    SET state = 'running', attempt = t.attempt + 1, lease_owner = $1,
        lease_until = coalesce($5::timestamptz, clock_timestamp()) + make_interval(secs => $3),
        started_at = now(), not_before = NULL
    FROM picked p WHERE t.id = p.id
    RETURNING t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.handler, t.needs,
              t.resume_payload, p.state AS picked_state, p.ready_at
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, attempt, actor, reason)
    SELECT c.run_id, c.task_id, c.picked_state::text, 'running', c.attempt, $1, 'claimed'
    FROM claimed c
)
SELECT c.id, c.run_id, c.task_id, c.attempt, c.tries_before, c.handler,
       c.resume_payload::text AS resume_payload, h.*,
       extract(epoch FROM now() - c.ready_at)::float8 AS queue_wait_s
FROM claimed c CROSS JOIN LATERAL hand_over(c.run_id, c.needs) h
ORDER BY c.id;

-- name: lock_runs
-- Serialises decisions per run: whoever completes tasks of a run holds its row.
-- Locked in id order, each found by its key: a = ANY of a thousand ids, planned
-- while the table was small (a prepared statement keeps that plan), scans
-- every run and compares each with every id.
SELECT r.id, r.workflow, r.version, r.state::text AS state
FROM (SELECT DISTINCT id FROM unnest($1::bigint[]) AS u(id) ORDER BY id) i
CROSS JOIN LATERAL (
    SELECT id, workflow, version, state FROM runs WHERE id = i.id FOR UPDATE
) r;

-- name: record_attempts
-- A completion's first statement: lock its runs ($1), record its finished
-- attempts and read the task states of the runs it decides, in one round
-- trip (migration 0024 says how). $2 id[], $3 attempt[], $4 target[],
-- $5 output json text[], $6 error[], $7 retry delay s[], $8 lease owner[],
-- $9 expired_only[] (reaper: the lease must have run out), $10 reason[],
-- $11 expected source state, $12 actor, $13 the runs whose task states to
-- return while they run, $14 the lease clock's time (NULL: the database's).
SELECT * FROM lock_and_record_attempts($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                                       $13, $14);

-- name: apply_decisions
-- Decided task moves (queued, skipped, upstream_failed), each guarded by its
-- source, and in the same statement a claim of up to $8 tasks for lease owner
-- $7: pick (SKIP LOCKED), lease ($9 seconds from $10, the lease clock's time,
-- or the database's when NULL), log, and return what the handler needs.
-- $1..$5 the moves, $6 their actor; a caller that claims nothing (an
-- operator action, a wait that ends) passes no owner. (A claim without moves
-- is the claim statement: this one, with its moves empty, takes twice as
-- long to claim a batch.)
-- A task an operator holds is made held instead of queued: checked here,
-- under the run's lock, so a hold added or removed meanwhile is seen.
-- The claim takes the successors this statement queues, which the claim of a
-- later statement could not see any sooner, and the work that was claimable
-- before it, together by priority; at equal priority the successors come
-- first, so a worker runs the next step of what it just finished without
-- waiting for a notification or another round trip. A claimed successor is
-- logged queued, then claimed. While limited work (named pools, per-task
-- caps) waits, nothing is claimed here (claim_mixed orders both kinds by
-- priority under a lock). Every row carries limited_waiting and the counts
-- queued (the successors claimed here included) and moved; the tasks claimed
-- come one per row (none: one row with a NULL id), with the columns of claim.
-- The statement is the function of migration 0026, on a generic plan (it says why).
SELECT * FROM apply_decisions($1, $2, $3, $4, $5, $6, $7, $8, $9, $10);

-- name: finish_runs
-- $1 the runs as one JSON array of [id, target]; $2 expected sources (text);
-- $3 actor, $4 reason. Each run is found by its key: the document's rows are
-- estimated at a hundred whatever the batch (an array's are counted, and a
-- thousand of them priced a hash join over a scan of every run), and the
-- states are compared as text, which the partial index of live runs
-- (runs_live) cannot answer (planned on statistics from before a burst of
-- runs, it was taken for a few rows and read every live run).
WITH input AS (
    SELECT (e->>0)::bigint AS id, (e->>1)::run_state AS target
    FROM jsonb_array_elements($1::jsonb) AS e
), updated AS (
    UPDATE runs r SET state = i.target, ended_at = now()
    FROM input i
    WHERE r.id = i.id AND r.state::text = ANY($2::text[])
    RETURNING r.id, r.workflow, r.version, r.logical_date, i.target
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, 'running', target::text, $3, $4 FROM updated
)
SELECT id, workflow, version, logical_date, target::text AS state FROM updated;

-- name: queued_runs
-- reopened: an operator re-opened it while there was no room (it has tasks).
SELECT id, version, EXISTS (SELECT 1 FROM task_instances t WHERE t.run_id = runs.id) AS reopened
FROM runs
WHERE workflow = $1 AND state = 'queued' ORDER BY id LIMIT $2 FOR UPDATE;

-- name: start_runs
-- By key, with the state compared as text (see finish_runs).
WITH updated AS (
    UPDATE runs SET state = 'running', started_at = now()
    WHERE id = ANY($1::bigint[]) AND state::text = 'queued'
    RETURNING id
), logged AS (
    INSERT INTO transitions (run_id, task_id, from_state, to_state, actor, reason)
    SELECT id, NULL, 'queued', 'running', $2, 'a slot under max_active_runs opened' FROM updated
)
SELECT id FROM updated;

-- name: notify
-- A unit of work's notifications, sent once as its last statement (delivered
-- at commit): $1 channel[], $2 payload[], one per channel (orchestrator/notices.py).
SELECT pg_notify(n.channel, n.payload) FROM unnest($1::text[], $2::text[]) AS n(channel, payload);

-- name: heartbeat
-- Rows locked right now are being recorded by this worker's own flush: skip
-- them rather than wait (two multi-row updates in different orders deadlock).
UPDATE task_instances
SET lease_until = coalesce($3::timestamptz, now()) + make_interval(secs => $2)
WHERE id IN (
    SELECT id FROM task_instances
    WHERE state = 'running' AND lease_owner = $1
    FOR UPDATE SKIP LOCKED
);

-- name: expired_leases
SELECT t.id, t.run_id, t.task_id, t.attempt, t.tries_before, t.lease_owner, r.version
FROM task_instances t JOIN runs r ON r.id = t.run_id
WHERE t.state = 'running' AND t.lease_until < coalesce($2::timestamptz, now())
ORDER BY t.lease_until LIMIT $1;

-- name: get_run
SELECT id, workflow, version, state::text AS state, params::text AS params, logical_date,
       actor, created_at, started_at, ended_at, event_id
FROM runs WHERE id = $1;

-- name: run_states
SELECT id, state::text AS state FROM runs WHERE id = ANY($1::bigint[]);

-- name: ended_run_states
-- Of runs $1, those that ended ($2 the final states, compared as text: see
-- finish_runs): a waiter reads what ended, not every run it still waits for.
SELECT id, state::text AS state FROM runs
WHERE id = ANY($1::bigint[]) AND state::text = ANY($2::text[]);

-- name: list_runs
-- Newest first; $4: only these workflows (an owner's, a tag's); $5 (a run id)
-- continues a page after that run: keyset paging stays stable while new runs
-- are added.
SELECT id, workflow, version, state::text AS state, actor, created_at, started_at, ended_at
FROM runs
WHERE ($1::text IS NULL OR workflow = $1) AND ($2::run_state IS NULL OR state = $2)
  AND ($4::text[] IS NULL OR workflow = ANY($4::text[]))
  AND ($5::bigint IS NULL OR id < $5)
ORDER BY id DESC LIMIT $3;

-- name: task_instances_of_run
SELECT id, task_id, state::text AS state, attempt, handler, pool, priority, output::text AS output,
       error, queued_at, started_at, ended_at, lease_owner, lease_until, not_before
FROM task_instances WHERE run_id = $1 ORDER BY id;

-- name: transitions_of_run
SELECT id, task_id, from_state, to_state, attempt, at, actor, reason
FROM transitions WHERE run_id = $1 ORDER BY id;
