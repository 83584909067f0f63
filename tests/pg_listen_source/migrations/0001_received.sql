-- How many notifications each channel delivered: the source's own table,
-- created by its own migration after the core's.
CREATE TABLE pg_listen_received (
    channel        text PRIMARY KEY,
    notifications  bigint NOT NULL,
    last_event_id  bigint REFERENCES events (id) ON DELETE SET NULL
);
