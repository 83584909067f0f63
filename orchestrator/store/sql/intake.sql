-- Named queries of event intake.

-- name: insert_events
-- $1 the batch's events as one JSON document: an array of [source, channel,
-- dedup_key, payload, headers, meta, actor, run_ids] (run_ids as an array
-- literal). One parameter, whatever the batch size: nothing to encode per
-- element, and each payload is parsed once, as part of the document.
INSERT INTO events (source, channel, dedup_key, payload, headers, meta, actor, run_ids)
SELECT e->>0, e->>1, e->>2, nullif(e->3, 'null'::jsonb), e->4, e->5, e->>6,
       (e->>7)::bigint[]
FROM jsonb_array_elements($1::jsonb) AS e
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
