"""Create topics explicitly with the configured partition count.

Auto-created topics get the broker's default partition count (4 on Tansu), which breaks the
co-partitioning of tables and their source topics, so producers and workers create every
topic themselves before using it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka.admin import NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from simapp.config import Settings
from simapp.kafka import clients

log = logging.getLogger(__name__)


async def ensure_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int | None = None,
    configs: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the topics that do not exist yet (KAFKA_PARTITIONS partitions unless told
    otherwise, KAFKA_REPLICATION_FACTOR replicas, the topic `configs` given); returns the ones
    created."""
    partitions = partitions or settings.kafka_partitions
    replication = settings.kafka_replication_factor
    admin = clients.admin(settings, request_timeout_ms=30_000)
    await clients.start(admin, settings)
    try:
        existing = set(await admin.list_topics())
        wanted = [n for n in dict.fromkeys(names) if n not in existing]
        if not wanted:
            return []
        new = [
            NewTopic(
                n,
                num_partitions=partitions,
                replication_factor=replication,
                topic_configs=dict(configs or {}),
            )
            for n in wanted
        ]
        try:
            await admin.create_topics(new)
        except TopicAlreadyExistsError:
            pass
        return wanted
    finally:
        await admin.close()
