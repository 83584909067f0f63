-- Named queries of event intake.

-- name: insert_events
-- $1 source[], $2 channel[], $3 dedup_key[], $4 payload json[], $5 headers json[],
-- $6 meta json[], $7 actor[], $8 run_ids[] (as array literals)
INSERT INTO events (source, channel, dedup_key, payload, headers, meta, actor, run_ids)
SELECT source, channel, dedup_key, payload::jsonb, headers::jsonb, meta::jsonb, actor,
       run_ids::bigint[]
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::text[])
    AS i(source, channel, dedup_key, payload, headers, meta, actor, run_ids)
ON CONFLICT (dedup_key) DO NOTHING
RETURNING id, dedup_key;

-- name: events_by_key
SELECT id, dedup_key, run_ids FROM events WHERE dedup_key = ANY($1::text[]);

-- name: insert_dead_letters
INSERT INTO dead_letter_events (source, channel, dedup_key, event_id, workflow, reason, raw,
                                headers, meta)
SELECT source, channel, dedup_key, event_id, workflow, reason, raw, headers::jsonb,
       meta::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[],
            $7::text[], $8::text[], $9::text[])
    AS i(source, channel, dedup_key, event_id, workflow, reason, raw, headers, meta)
ON CONFLICT (dedup_key, coalesce(workflow, '')) DO NOTHING;

-- name: count_redeliveries
-- $1 ids of stored events offered again (sorted: rows are locked in one order).
-- Intake's last statement, so a transaction holding these row locks waits for
-- no other intake transaction (the dedup-key waits of the insert came first).
UPDATE events SET redeliveries = redeliveries + 1, last_redelivered_at = now()
WHERE id = ANY($1::bigint[]);
