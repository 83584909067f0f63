-- Kafka partitions of topics whose broker gives no topic id: which incarnation
-- of each partition's log the intake reads, and what that log looked like when
-- it was last checked. A message's dedup key names the incarnation, so a log
-- that starts again (an in-memory broker restarted, a topic deleted and
-- created again) gives new keys instead of looking like a redelivery. Topics
-- with ids need no row: the id names the log.

CREATE TABLE kafka_partition_logs (
    cluster_id    text NOT NULL,     -- '' when the broker gives none
    topic         text NOT NULL,
    partition     integer NOT NULL,
    incarnation   integer NOT NULL CHECK (incarnation > 0),
    log_start     bigint NOT NULL,   -- earliest offset seen in this incarnation
    log_end       bigint NOT NULL,   -- highest high watermark seen
    first_offset  bigint,            -- offset of the first record read, if any
    first_record  text,              -- its fingerprint (timestamp and content hash)
    reason        text NOT NULL,     -- why this incarnation was started
    started_at    timestamptz NOT NULL DEFAULT now(),
    checked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster_id, topic, partition, incarnation)
);
