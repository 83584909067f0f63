"""An orchestrator process with only the Kafka source, for the SIGKILL test.

``python kafka_intake_process.py --db URL --bootstrap HOST:PORT --topic T --group G``
registers the workflow ``kafka_orders`` (one run per message on T), starts an
:class:`~orchestrator.app.Orchestrator` whose only source is a
:class:`~sources.kafka.KafkaSource`, prints ``READY`` and runs until SIGTERM.
It executes no tasks (``worker_slots=0``): the test looks at events and runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from orchestrator.app import Orchestrator
from orchestrator.logs import configure
from orchestrator.settings import Settings
from orchestrator.spec import TaskSpec, WorkflowSpec
from sources.kafka import KafkaSource
from sources.models import KafkaTrigger


def workflow(topic: str) -> WorkflowSpec:
    return WorkflowSpec(
        name="kafka_orders",
        tasks=(TaskSpec(id="accept", handler="noop"),),
        triggers=(KafkaTrigger(topic=topic, params={"n": "{{ payload.n }}"}),),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", required=True, help="database URL")
    p.add_argument("--bootstrap", required=True, help="Kafka bootstrap host:port")
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True, help="consumer group")
    p.add_argument("--batch-max", type=int, default=100, help="kafka_batch_max")
    p.add_argument(
        "--consumer-options", default="{}", help="JSON object of extra aiokafka consumer options"
    )
    p.add_argument("--idempotent", action="store_true", help="the broker has idempotent producers")
    p.add_argument("--log-level", default="WARNING")
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    settings = Settings(
        kafka_bootstrap=args.bootstrap,
        kafka_group_id=args.group,
        kafka_batch_max=args.batch_max,
        kafka_idempotent_producer=args.idempotent,
        worker_slots=0,
        roles="kafka",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    source = KafkaSource(consumer_options=json.loads(args.consumer_options))
    async with Orchestrator(
        settings, args.db, workflows=[workflow(args.topic)], sources=[source], migrate=False
    ):
        print("READY", flush=True)
        await stop.wait()
    print("STOPPED", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure(args.log_level)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
