-- Listing intake events (`orchestrator events`, GET /api/v1/events), newest
-- first in pages keyed by id.

-- A redelivered event (the same dedup key offered again) starts nothing; it
-- is counted on the stored event, so a listing can tell which were repeated.
ALTER TABLE events
    ADD COLUMN redeliveries         integer NOT NULL DEFAULT 0,
    ADD COLUMN last_redelivered_at  timestamptz;
-- Pages of one source's events (events_by_channel orders by channel first).
CREATE INDEX events_by_source ON events (source, id);
-- An event's dead letters, for its status.
CREATE INDEX dead_letter_events_by_event ON dead_letter_events (event_id)
    WHERE event_id IS NOT NULL;
