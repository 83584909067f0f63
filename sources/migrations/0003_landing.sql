-- Landing zone: files taken by a trigger with `on_done: move`. One row per
-- event, written in the same transaction as the event, so a file is never
-- recorded without its pending move (and a restart neither forgets a move nor
-- repeats one). `target` is chosen and stored before the file is moved, so a
-- crash between the two is finished on restart instead of moving again.

CREATE TABLE landing_moves (
    event_id    bigint PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    path        text NOT NULL,   -- relative to the landing zone, as recorded
    sha256      text NOT NULL,   -- the content the event was about
    state       text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'processed', 'failed', 'skipped')),
    target      text,            -- relative destination, set before moving
    created_at  timestamptz NOT NULL DEFAULT now(),
    moved_at    timestamptz
);
-- The mover polls only pending rows, however long the history grows.
CREATE INDEX landing_moves_pending ON landing_moves (event_id) WHERE state = 'pending';
