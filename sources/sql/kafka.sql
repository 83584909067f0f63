-- Named queries of the Kafka intake's log incarnations (sources/kafka_logs.py).

-- name: kafka_logs_current
-- The latest incarnation of each partition. $1 cluster id, $2 topic[], $3 partition[]
SELECT DISTINCT ON (l.topic, l.partition)
       l.topic, l.partition, l.incarnation, l.log_start, l.log_end, l.first_offset, l.first_record
FROM kafka_partition_logs l
JOIN unnest($2::text[], $3::int[]) AS p (topic, partition)
  ON p.topic = l.topic AND p.partition = l.partition
WHERE l.cluster_id = $1
ORDER BY l.topic, l.partition, l.incarnation DESC;

-- name: kafka_logs_start
-- New incarnations. Two members deciding the same one at once both use it.
-- $1 cluster id, $2 topic[], $3 partition[], $4 incarnation[], $5 log_start[],
-- $6 log_end[], $7 first_offset[], $8 first_record[], $9 reason[]
INSERT INTO kafka_partition_logs
    (cluster_id, topic, partition, incarnation, log_start, log_end,
     first_offset, first_record, reason)
SELECT $1, * FROM unnest($2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::text[], $9::text[])
ON CONFLICT (cluster_id, topic, partition, incarnation) DO NOTHING;

-- name: kafka_logs_checked
-- What the current incarnations look like now (offsets only move forward).
-- $1 cluster id, $2 topic[], $3 partition[], $4 incarnation[], $5 log_start[],
-- $6 log_end[], $7 first_offset[], $8 first_record[]
UPDATE kafka_partition_logs l
SET log_start = greatest(l.log_start, c.log_start),
    log_end = greatest(l.log_end, c.log_end),
    first_offset = coalesce(c.first_offset, l.first_offset),
    first_record = CASE WHEN c.first_offset IS NULL THEN l.first_record ELSE c.first_record END,
    checked_at = now()
FROM unnest($2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[], $7::bigint[],
            $8::text[]) AS c (topic, partition, incarnation, log_start, log_end, first_offset,
                              first_record)
WHERE l.cluster_id = $1 AND l.topic = c.topic AND l.partition = c.partition
  AND l.incarnation = c.incarnation;

-- name: kafka_logs_read
-- How far a batch read each log, in the transaction that records the batch;
-- the first record is kept when the batch began at the log's start.
-- $1 cluster id, $2 topic[], $3 partition[], $4 incarnation[], $5 end[],
-- $6 first_offset[], $7 first_record[]
UPDATE kafka_partition_logs l
SET log_end = greatest(l.log_end, r.read_end),
    first_offset = CASE WHEN l.first_offset IS NULL AND r.first_offset = l.log_start
                        THEN r.first_offset ELSE l.first_offset END,
    first_record = CASE WHEN l.first_offset IS NULL AND r.first_offset = l.log_start
                        THEN r.first_record ELSE l.first_record END
FROM unnest($2::text[], $3::int[], $4::int[], $5::bigint[], $6::bigint[], $7::text[])
     AS r (topic, partition, incarnation, read_end, first_offset, first_record)
WHERE l.cluster_id = $1 AND l.topic = r.topic AND l.partition = r.partition
  AND l.incarnation = r.incarnation;
