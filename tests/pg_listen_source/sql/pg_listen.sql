-- name: pg_listen_count
-- $1 channel[], $2 event id[]: one row per notification, in the ingest's transaction.
INSERT INTO pg_listen_received AS r (channel, notifications, last_event_id)
SELECT channel, count(*), max(event_id)
FROM unnest($1::text[], $2::bigint[]) AS n(channel, event_id)
GROUP BY channel
ON CONFLICT (channel) DO UPDATE
SET notifications = r.notifications + excluded.notifications,
    last_event_id = excluded.last_event_id;

-- name: pg_listen_counts
SELECT channel, notifications FROM pg_listen_received ORDER BY channel;
