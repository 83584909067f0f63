"""Making a million waiting runs for ``waiting`` (bench/wait_scenarios.py), and
the messages that release them.

Deferring a million sensors through the worker takes many minutes on two
cores, so the first ``TEMPLATE_RUNS`` go the product path and the rest are
copies of what it wrote:

1. The engine creates ``TEMPLATE_RUNS`` runs and the worker runs each sensor,
   which defers: every row is the engine's own.
2. The tables those runs wrote to (rows counted in every table before and
   after) must be exactly :data:`COPIED`: a table a deferral writes in
   future fails the bench here instead of going uncopied.
3. The rest are copies of the first run's rows: one set-based ``INSERT`` per
   table and chunk, every column (read from the catalog) copied from the
   template row, the order id replaced in each text and JSON column (it is in
   the params, the match key, the wait's config and description, the
   transitions' reasons) and new ids set: runs, task instances and deferrals
   get ids past the engine's, their children point at their copied parents,
   transitions take ids from their sequence and the copying transaction's
   ``txid`` (the column's default, as for the engine's rows). The sequences
   are then moved past the copies.
4. An engine-made run and a copy are compared, row by row and column by
   column (ids, times and ``txid`` aside, the order id masked): any
   difference fails the bench.

Release messages go out through aiokafka's batch API (one future per batch,
not per message), round robin over the partitions: the bench's producer runs
in the measured process and must cost it little.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson

from sources.kafka_config import AIOKafkaProducer

#: Runs deferred through the engine and the worker before the rest are copied.
TEMPLATE_RUNS = 1000
#: Runs copied per transaction.
COPY_CHUNK = 100_000
#: The tables the deferral of a one-sensor run writes to, parents first.
COPIED = ("runs", "task_instances", "deferrals", "transitions")
#: Columns whose values differ between two runs made the same way.
VOLATILE = (
    "id",
    "run_id",
    "task_instance_id",
    "txid",
    "at",
    "since",
    "created_at",
    "started_at",
    "queued_at",
    "ended_at",
    "resolved_at",
)


def order_id(i: int) -> str:
    return f"ord-{i:08d}"


def order_ids(first: int, count: int) -> list[str]:
    return [order_id(i) for i in range(first, first + count)]


async def rows_per_table(conn: asyncpg.Connection) -> dict[str, int]:
    """Rows in each table of this database (a young one: counting is cheap)."""
    tables = await conn.fetch(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(relname) AS name, relname"
        " FROM pg_stat_user_tables"
    )
    return {t["relname"]: await conn.fetchval(f"SELECT count(*) FROM {t['name']}") for t in tables}


def grown_tables(before: dict[str, int], after: dict[str, int]) -> set[str]:
    return {t for t, n in after.items() if n > before.get(t, 0)}


#: Per table: the columns a copy gets new ids in (SQL over ``g.n``, the order
#: number, and ``b``, the id bases), and whether its own id is set (else its
#: sequence gives one).
_NEW_IDS: dict[str, tuple[dict[str, str], bool]] = {
    "runs": ({"id": "b.run + g.n"}, True),
    "task_instances": ({"id": "b.task + g.n", "run_id": "b.run + g.n"}, True),
    "deferrals": (
        {"id": "b.wait + g.n", "task_instance_id": "b.task + g.n", "run_id": "b.run + g.n"},
        True,
    ),
    "transitions": ({"run_id": "b.run + g.n"}, False),
}


async def _copy_statements(conn: asyncpg.Connection) -> list[str]:
    """One INSERT per table, every column copied from the template row but
    the ids and ``txid`` (see :data:`_NEW_IDS`), the order id replaced in
    every text and JSON column. $1 the template's order id, $2 its run id,
    $3 and $4 the first and last order numbers to make, $5..$7 the run, task
    instance and deferral id bases (a copy's id is base + order number)."""
    statements = []
    for table in COPIED:
        new_ids, keeps_id = _NEW_IDS[table]
        columns = await conn.fetch(
            "SELECT quote_ident(attname) AS name, format_type(atttypid, atttypmod) AS type"
            " FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
            " AND NOT attisdropped AND attname <> 'txid' ORDER BY attnum",
            table,
        )
        names, values = [], []
        for c in columns:
            if c["name"] == "id" and not keeps_id:
                continue
            names.append(c["name"])
            if c["name"] in new_ids:
                values.append(new_ids[c["name"]])
            elif c["type"] in ("text", "json", "jsonb"):
                values.append(f"replace(t.{c['name']}::text, $1::text, g.ord)::{c['type']}")
            else:
                values.append(f"t.{c['name']}")
        key = "id" if table == "runs" else "run_id"
        statements.append(
            f"INSERT INTO {table} ({', '.join(names)})"
            f" {'OVERRIDING SYSTEM VALUE' if keeps_id else ''}"
            f" SELECT {', '.join(values)}"
            " FROM (SELECT $5::bigint AS run, $6::bigint AS task, $7::bigint AS wait) b,"
            " (SELECT n, 'ord-' || lpad(n::text, 8, '0') AS ord"
            "  FROM generate_series($3::bigint, $4::bigint) AS n) g,"
            f" {table} t WHERE t.{key} = $2::bigint ORDER BY g.n, t.id"
        )
    return statements


async def copy_waits(conn: asyncpg.Connection, template_run: int, first: int, count: int) -> None:
    """Copies of ``template_run`` (order ``order_id(0)``) for the orders
    ``first`` .. ``first + count - 1``, in chunks of :data:`COPY_CHUNK`."""
    statements = await _copy_statements(conn)
    bases = []
    for table in ("runs", "task_instances", "deferrals"):
        top: int = await conn.fetchval(f"SELECT max(id) FROM {table}")
        bases.append(top + 1 - first)  # order ``first`` gets top + 1
    last = first + count - 1
    for start in range(first, last + 1, COPY_CHUNK):
        end = min(start + COPY_CHUNK - 1, last)
        async with conn.transaction():
            for sql in statements:
                await conn.execute(sql, order_id(0), template_run, start, end, *bases)
    for table, base in zip(("runs", "task_instances", "deferrals"), bases, strict=True):
        await conn.execute(
            "SELECT setval(pg_get_serial_sequence($1, 'id'), $2)", table, base + last
        )


async def _shape(conn: asyncpg.Connection, run_id: int, order: str) -> list[tuple[str, Any]]:
    """The rows of ``run_id`` in every copied table, volatile columns left
    out and the order id masked."""
    shape: list[tuple[str, Any]] = []
    for table in COPIED:
        key = "id" if table == "runs" else "run_id"
        rows = await conn.fetchval(
            f"SELECT coalesce(jsonb_agg(x ORDER BY x::text), '[]') FROM ("
            f" SELECT replace((to_jsonb(t) - $2::text[])::text, $3, 'ORDER')::jsonb AS x"
            f" FROM {table} t WHERE t.{key} = $1) s",
            run_id,
            list(VOLATILE),
            order,
        )
        shape.append((table, orjson.loads(rows)))
    return shape


async def check_copies(conn: asyncpg.Connection, made: int, copied: int) -> None:
    """The engine-made order ``made`` and the copied order ``copied`` have
    the same rows: raise naming the first difference otherwise."""
    run_of = "SELECT id FROM runs WHERE params->>'order_id' = $1"
    engine_made = await _shape(conn, await conn.fetchval(run_of, order_id(made)), order_id(made))
    copy = await _shape(conn, await conn.fetchval(run_of, order_id(copied)), order_id(copied))
    for (table, want), (_, got) in zip(engine_made, copy, strict=True):
        if want != got:
            raise AssertionError(
                f"the copied waits differ from the engine's in {table}: {got!r} != {want!r}"
            )


async def publish_orders(
    producer: AIOKafkaProducer, topic: str, partitions: int, count: int
) -> None:
    """One message per order, ``{"order_id": ..., "carrier": "dhl"}``, keyed
    by its number, sent in full batches round robin over the partitions."""
    builders = [producer.create_batch() for _ in range(partitions)]
    futures: list[asyncio.Future[object]] = []
    for i in range(count):
        p = i % partitions
        key, value = str(i).encode(), orjson.dumps({"order_id": order_id(i), "carrier": "dhl"})
        if builders[p].append(key=key, value=value, timestamp=None) is None:
            futures.append(await producer.send_batch(builders[p], topic, partition=p))
            builders[p] = producer.create_batch()
            builders[p].append(key=key, value=value, timestamp=None)
    for p, builder in enumerate(builders):
        if builder.record_count():
            futures.append(await producer.send_batch(builder, topic, partition=p))
    await asyncio.gather(*futures)
