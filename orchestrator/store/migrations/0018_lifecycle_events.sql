-- Lifecycle events out: transitions, dataset updates and alerts are the outbox
-- (each row is already written in the transaction of its change); relays
-- publish them to Kafka in commit order per partition of run ids.
--
-- Ids from a sequence commit out of order, so a relay cannot read "past the
-- last id". Each row instead records the transaction that wrote it (txid), and
-- a relay publishes snapshot windows: the rows visible in a new snapshot and
-- not in the last one it finished (pgq's technique). A transaction still in
-- progress is in neither, so its rows wait for the next window, never skipped.
--
-- Old rows keep txid NULL (no table rewrite): a relay group starts at the
-- snapshot of its creation, so history before it is never published.
-- BRIN indexes: txid grows with the heap, so a block range summary finds the
-- recent rows, and keeping it costs next to nothing per insert (a range is
-- summarized once full, by the relays and by autovacuum). Ranges not yet
-- summarized are always read, so they are kept small: 32 pages.

ALTER TABLE transitions ADD COLUMN txid bigint;
ALTER TABLE transitions ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX transitions_by_txid ON transitions USING brin (txid)
    WITH (pages_per_range = 32, autosummarize = on);

ALTER TABLE dataset_events ADD COLUMN txid bigint;
ALTER TABLE dataset_events ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX dataset_events_by_txid ON dataset_events USING brin (txid)
    WITH (pages_per_range = 32, autosummarize = on);

ALTER TABLE alerts ADD COLUMN txid bigint;
ALTER TABLE alerts ALTER COLUMN txid SET DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX alerts_by_txid ON alerts USING brin (txid)
    WITH (pages_per_range = 32, autosummarize = on);

-- One cursor per partition of run ids (run_id % parts): relays lease a
-- partition for one window at a time, so two relays never publish the same
-- partition at once, and each partition's events leave in order.
CREATE TABLE lifecycle_cursors (
    part          integer PRIMARY KEY,
    parts         integer NOT NULL CHECK (parts >= 1),
    -- Everything visible in this snapshot is published.
    done          pg_snapshot NOT NULL,
    done_at       timestamptz NOT NULL,
    -- The window being published (visible here, not in done), and how far:
    -- rows are published in (stage, id) order; stage 0 transitions, 1 dataset
    -- updates, 2 alerts.
    window_to     pg_snapshot,
    window_at     timestamptz,
    after_stage   integer NOT NULL DEFAULT 0,
    after_id      bigint NOT NULL DEFAULT 0,
    lease_owner   text,
    lease_until   timestamptz,
    next_at       timestamptz NOT NULL DEFAULT now(),
    published     bigint NOT NULL DEFAULT 0,
    CHECK (part >= 0 AND part < parts)
);
