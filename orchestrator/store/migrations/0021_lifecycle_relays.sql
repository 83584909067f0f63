-- The lifecycle relays of a database (sources/lifecycle_relay.py), each as
-- last seen: a relay leases its share of the partitions at a time (the
-- partitions over the relays seen within a lease, rounded up), so that one
-- relay alone publishes every partition's window with one read, and several
-- relays still split the partitions between them.
CREATE TABLE lifecycle_relays (
    owner    text PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);
