"""Which cluster and which topic a Kafka client is talking to: the cluster id
(Metadata v2+) and each topic's id (Metadata v10+, a UUID a broker gives a
topic when it creates it, so a topic deleted and created again, or the
in-memory log of a restarted embedded broker, has a new one).

aiokafka speaks Metadata only up to v5, which has the cluster id but no topic
ids, so v10 and v11 are declared here with aiokafka's own protocol types and
sent through the connection of a started client. The connection picks the
highest version both sides know; against a broker without v10 the answer is
v2-v5 and carries no topic ids.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from aiokafka.errors import KafkaError, for_code  # type: ignore[import-untyped]
from aiokafka.protocol.abstract import AbstractType  # type: ignore[import-untyped]
from aiokafka.protocol.api import (  # type: ignore[import-untyped]
    Request,
    RequestStruct,
    Response,
)
from aiokafka.protocol.metadata import (  # type: ignore[import-untyped]
    MetadataRequest_v2,
    MetadataRequest_v3,
    MetadataRequest_v4,
    MetadataRequest_v5,
)
from aiokafka.protocol.types import (  # type: ignore[import-untyped]
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Schema,
    TaggedFields,
)

#: Brokers without topic ids answer v10+ with this one.
NO_TOPIC_ID = uuid.UUID(int=0)


@dataclass(frozen=True, slots=True)
class TopicIds:
    """What the broker says about the cluster and some topics."""

    cluster_id: str | None
    """None from brokers older than Metadata v2."""
    topic_ids: dict[str, uuid.UUID | None]
    """Per topic asked about; None when the broker gives no id."""


class _Uuid(AbstractType):  # type: ignore[misc]
    @classmethod
    def encode(cls, value: uuid.UUID) -> bytes:
        return value.bytes

    @classmethod
    def decode(cls, data: BytesIO) -> uuid.UUID:
        raw = data.read(16)
        if len(raw) != 16:
            raise ValueError("Buffer underrun decoding a UUID")
        return uuid.UUID(bytes=raw)


_BROKERS = CompactArray(
    ("node_id", Int32),
    ("host", CompactString("utf-8")),
    ("port", Int32),
    ("rack", CompactString("utf-8")),
    ("tags", TaggedFields),
)
_PARTITIONS = CompactArray(
    ("error_code", Int16),
    ("partition_index", Int32),
    ("leader_id", Int32),
    ("leader_epoch", Int32),
    ("replica_nodes", CompactArray(Int32)),
    ("isr_nodes", CompactArray(Int32)),
    ("offline_replicas", CompactArray(Int32)),
    ("tags", TaggedFields),
)
_TOPICS = CompactArray(
    ("error_code", Int16),
    ("name", CompactString("utf-8")),
    ("topic_id", _Uuid),
    ("is_internal", Boolean),
    ("partitions", _PARTITIONS),
    ("topic_authorized_operations", Int32),
    ("tags", TaggedFields),
)
_REQUESTED_TOPICS = CompactArray(
    ("topic_id", _Uuid), ("name", CompactString("utf-8")), ("tags", TaggedFields)
)


class MetadataResponse_v10(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 10
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", _BROKERS),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", _TOPICS),
        ("cluster_authorized_operations", Int32),
        ("tags", TaggedFields),
    )


class MetadataResponse_v11(Response):  # type: ignore[misc]
    API_KEY = 3
    API_VERSION = 11
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", _BROKERS),
        ("cluster_id", CompactString("utf-8")),
        ("controller_id", Int32),
        ("topics", _TOPICS),
        ("tags", TaggedFields),
    )


class MetadataRequest_v10(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 10
    RESPONSE_TYPE = MetadataResponse_v10
    SCHEMA = Schema(
        ("topics", _REQUESTED_TOPICS),
        ("allow_auto_topic_creation", Boolean),
        ("include_cluster_authorized_operations", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class MetadataRequest_v11(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 3
    API_VERSION = 11
    RESPONSE_TYPE = MetadataResponse_v11
    SCHEMA = Schema(
        ("topics", _REQUESTED_TOPICS),
        ("allow_auto_topic_creation", Boolean),
        ("include_topic_authorized_operations", Boolean),
        ("tags", TaggedFields),
    )


class TopicIdsRequest(
    Request[  # type: ignore[misc]
        MetadataRequest_v2
        | MetadataRequest_v3
        | MetadataRequest_v4
        | MetadataRequest_v5
        | MetadataRequest_v10
        | MetadataRequest_v11
    ]
):
    """Metadata for some topics, never creating them."""

    API_KEY = 3

    def __init__(self, topics: list[str]) -> None:
        self.topics = topics

    def build(self, struct: type[Any]) -> Any:
        version = struct.API_VERSION
        if version >= 10:
            named: list[tuple[uuid.UUID, str, dict[int, bytes]]] = [
                (NO_TOPIC_ID, topic, {}) for topic in self.topics
            ]
            flags = (False, False) if version >= 11 else (False, False, False)
            return struct(named, *flags, {})
        if version >= 4:
            return struct(self.topics, False)
        return struct(self.topics)


async def topic_ids(client: Any, topics: list[str]) -> TopicIds:
    """Ask one broker, through the started aiokafka ``client`` (a consumer's or an
    admin's ``_client``), for the cluster id and the ids of ``topics``.

    Raises :class:`KafkaError` when no broker answers or one of the topics has
    an error (unknown, not authorized, leader moving): the caller tries again."""
    node = client.get_random_node()
    if node is None:
        raise KafkaError("no Kafka broker is known to ask for topic ids")
    response = await client.send(node, TopicIdsRequest(topics))
    version = response.API_VERSION
    found: dict[str, uuid.UUID | None] = {}
    for topic in response.topics:
        error_code, name = topic[0], topic[1]
        if error_code:
            raise for_code(error_code)(f"metadata of topic {name!r}")
        topic_id = topic[2] if version >= 10 else None
        found[name] = None if topic_id == NO_TOPIC_ID else topic_id
    missing = set(topics) - set(found)
    if missing:
        raise KafkaError(f"the broker gave no metadata for {sorted(missing)}")
    return TopicIds(response.cluster_id or None, found)


__all__ = ["NO_TOPIC_ID", "TopicIds", "TopicIdsRequest", "topic_ids"]
