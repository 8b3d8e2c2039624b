"""Every Kafka client simapp makes outside Faust's own: consumers, producers, admin clients.

One place builds them from the settings, so connection settings (bootstrap servers, and
whatever else a deployment needs to reach its brokers) reach every client the same way.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from simapp.config import Settings


def connection(settings: Settings) -> dict[str, Any]:
    """The options every client needs to reach the brokers."""
    return {"bootstrap_servers": settings.kafka_bootstrap_servers}


def consumer(settings: Settings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer (group-less unless `group_id` is given; nothing committed by default)."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topics, **connection(settings), **options)


def producer(settings: Settings, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**connection(settings), **options)


def admin(settings: Settings, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings), **options)
