-- Named queries of listing intake events (orchestrator/event_list.py).

-- name: list_events
-- Newest first. $1 source, $2 workflow, $3 status, $4 received since, $5 ids
-- below (the cursor), $6 limit, $7 only redelivered ones (NULL: any filter off).
-- An event's status: dead_lettered (a workflow refused it and it was not
-- redriven) before dropped, buffered (held by a paused workflow), started
-- (it started runs), recorded (stored; it started nothing, e.g. it matched no
-- trigger or ended a wait).
SELECT x.* FROM (
    SELECT e.id, e.source, e.channel, e.dedup_key, e.actor, e.received_at,
           e.redeliveries, e.last_redelivered_at,
           ARRAY(SELECT r FROM unnest(e.run_ids) r
                 UNION
                 SELECT h.run_id FROM held_events h
                 WHERE h.event_id = e.id AND h.state = 'started'
                 ORDER BY 1) AS run_ids,
           CASE
               WHEN EXISTS (SELECT 1 FROM dead_letter_events d
                            WHERE d.event_id = e.id AND d.redriven_at IS NULL)
                   THEN 'dead_lettered'
               WHEN EXISTS (SELECT 1 FROM held_events h
                            WHERE h.event_id = e.id AND h.state = 'dropped') THEN 'dropped'
               WHEN EXISTS (SELECT 1 FROM held_events h
                            WHERE h.event_id = e.id AND h.state = 'buffered') THEN 'buffered'
               WHEN cardinality(e.run_ids) > 0
                    OR EXISTS (SELECT 1 FROM held_events h
                               WHERE h.event_id = e.id AND h.state = 'started') THEN 'started'
               ELSE 'recorded'
           END AS status
    FROM events e
    WHERE ($1::text IS NULL OR e.source = $1)
      AND ($4::timestamptz IS NULL OR e.received_at >= $4)
      AND ($5::bigint IS NULL OR e.id < $5)
      AND ($7::boolean IS NULL OR (e.redeliveries > 0) = $7)
      AND ($2::text IS NULL
           OR EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.id AND r.workflow = $2)
           OR EXISTS (SELECT 1 FROM held_events h WHERE h.event_id = e.id AND h.workflow = $2)
           OR EXISTS (SELECT 1 FROM dead_letter_events d
                      WHERE d.event_id = e.id AND d.workflow = $2))
    ORDER BY e.id DESC
) x
WHERE $3::text IS NULL OR x.status = $3
LIMIT $6;

-- name: event_content
-- $1 id: what the event carried.
SELECT payload::text AS payload, headers::text AS headers, meta::text AS meta
FROM events WHERE id = $1;

-- name: held_of_events
-- $1 event ids: what paused workflows did with them.
SELECT event_id, workflow, policy, state, reason, run_id
FROM held_events WHERE event_id = ANY($1::bigint[])
ORDER BY event_id, id;

-- name: dead_letters_of_events
-- $1 event ids: the workflows that could not use them.
SELECT event_id, id, workflow, reason, redriven_at
FROM dead_letter_events WHERE event_id = ANY($1::bigint[])
ORDER BY event_id, id;
