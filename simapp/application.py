"""The Faust application `simapp`: settings -> Faust config, topics, and the agents/tables.

`faust -A simapp worker -l info` finds `app` here (through simapp/__init__).
Two broker profiles: `kafka` keeps Faust's production defaults; `embedded` tunes for the Tansu
broker (ARCHITECTURE.md, "Tansu facts"): one record per produce batch (its ListOffsets is wrong
for multi-record batches), short session/rebalance timeouts (its JoinGroup waits
session_timeout/2), and every topic pre-created with the configured partition count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from simapp.committer import SafeCommitConsumer, SafeCommitTransport
from simapp.config import Settings, get_settings


class SimApp(faust.App):
    """faust.App whose consumer never commits past an in-flight event (see committer.py)."""

    safe_commit = True
    simapp_settings: Settings | None = None

    async def on_first_start(self) -> None:
        """Create our topics with the configured partition count before anything subscribes:
        an auto-created topic gets the broker's default (4 on Tansu) and breaks co-partitioning
        of the tables with their source topics (Faust then crash-loops on PartitionsMismatch)."""
        await super().on_first_start()
        s = self.simapp_settings
        if s is not None:
            # LiteLLM's import takes ~2.5 s of blocking work: pay it before partitions arrive,
            # not on the first event (it froze the loop, web server included).
            from simapp.llm_client import import_litellm

            import_litellm(s.llm_connection_pool_size)
            from simapp.kafka_admin import ensure_topics
            from simapp.producer import all_topic_names

            await ensure_topics(
                s.kafka_bootstrap_servers,
                all_topic_names(s),
                s.kafka_partitions,
                s.kafka_replication_factor,
            )

    def _new_transport(self) -> Any:
        if not self.safe_commit:  # stock Faust commit rule, kept for before/after measurements
            return super()._new_transport()
        return SafeCommitTransport(self.conf.broker_consumer, self)


@dataclass(frozen=True)
class Topics:
    """Every topic simapp reads or writes."""

    events: Any
    results: Any
    dlq: Any
    progress: Any
    checkpoints: Any

    def all(self) -> list[Any]:
        return [self.events, self.results, self.dlq, self.progress, self.checkpoints]


STREAM_BUFFER_EVENTS = 10_000


def stream_buffer_size(settings: Settings) -> int:
    """A stream buffer that a burst does not fill, so the conductor does not wait on it.

    Faust's conductor delivers every record of a fetch before it fetches again, and when a
    stream's queue is full it waits for room: with the old size (2 x concurrency) a full
    simulate queue starved the progress and checkpoint agents until the burst was nearly all
    queued (a 240-event burst showed no progress row at half delivered). A fetch returns at
    most `consumer_max_fetch_size` (1 MB) per partition, i.e. ~1,000 catalogue events, so
    10,000 holds the first fetch of a 10K burst over 8 partitions; Faust pauses a partition
    once its queue passes 80 %. Queued events are not acked (the committer holds the commit
    at the oldest), and a revoke or shutdown drops the queue for the next owner.
    Bounding the fetch instead (`broker_max_poll_records=10`) made a restarted worker never
    see the first 10 records of its partition in one full-suite run (tests/test_commit_safety.py,
    1 of 7 runs; cause not found), so fetches are left as Faust has them.
    """
    return max(settings.concurrent_conversations * 2, STREAM_BUFFER_EVENTS)


def faust_config(settings: Settings) -> dict[str, Any]:
    """Faust settings derived from ours."""
    brokers = ";".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(","))
    datadir = settings.worker_datadir
    conf: dict[str, Any] = {
        "broker": brokers,
        "store": settings.table_store,
        "datadir": datadir,
        "topic_partitions": settings.kafka_partitions,
        "topic_replication_factor": settings.kafka_replication_factor,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": settings.commit_interval,
        "web_enabled": True,
        "web_port": settings.metrics_port,
        "web_bind": settings.web_bind,
        "web_host": settings.web_host,
        "web_in_thread": False,
        "stream_wait_empty": True,
        "stream_buffer_maxsize": stream_buffer_size(settings),
        "producer_acks": -1,
        "table_cleanup_interval": 30.0,
    }
    if settings.embedded:
        conf.update(
            producer_max_batch_size=1,
            broker_session_timeout=3.0,
            broker_heartbeat_interval=0.5,
            broker_rebalance_timeout=4.0,
            broker_request_timeout=30.0,
            consumer_max_fetch_size=1024 * 1024,
        )
    return conf


def create_app(settings: Settings) -> tuple[SimApp, Topics]:
    app = SimApp(settings.kafka_consumer_group, **faust_config(settings))
    app.safe_commit = settings.safe_commit
    app.simapp_settings = settings
    SafeCommitConsumer.shutdown_grace = settings.shutdown_grace_seconds
    SafeCommitConsumer.revoke_grace = min(
        settings.shutdown_grace_seconds, float(app.conf.broker_rebalance_timeout) * 0.6
    )
    parts = settings.kafka_partitions
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    json_ = {"key_serializer": "raw", "value_serializer": "json"}
    topics = Topics(
        events=app.topic(settings.kafka_topic, partitions=parts, **raw),
        results=app.topic(settings.results_topic, partitions=parts, **json_),
        dlq=app.topic(settings.dlq_topic, partitions=parts, **json_),
        # raw: the progress agent decodes (and skips malformed) messages itself
        progress=app.topic(settings.progress_topic, partitions=parts, **raw),
        checkpoints=app.topic(settings.checkpoint_topic, partitions=parts, **json_),
    )
    return app, topics


settings = get_settings()
app, topics = create_app(settings)


@app.task
async def _configure_logging() -> None:
    """Runs at worker start, after Faust set up its log handlers: apply LOG_FORMAT/LOG_LEVEL."""
    import logging

    from simapp import logs
    from simapp.config import route_warnings, sizing_warnings

    logs.configure(settings.log_format, settings.log_level)
    for warning in sizing_warnings(settings):
        logging.getLogger("simapp.sizing").warning(warning)
    for warning in route_warnings(settings):
        logging.getLogger("simapp.llm").warning(warning)


# Agents, tables, views and commands register themselves on import.
from simapp.runtime import Runtime  # noqa: E402

runtime = Runtime(settings, app, topics)

import agents  # noqa: E402,F401
import tables  # noqa: E402,F401
from simapp import cli, dlq_cli, web  # noqa: E402,F401
