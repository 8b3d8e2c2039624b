"""The Faust application `simapp` and its topics, built once from the settings.

`faust -A simapp worker -l info` finds `app` here (through simapp/__init__). The app imports
none of the modules that use it: Faust's autodiscovery imports the agents, tables, web views
and commands listed in DISCOVERED (agents import the app, never the other way round).

Two broker profiles: `kafka` keeps Faust's production defaults; `embedded` tunes for the Tansu
broker (docs/architecture.md, "Tansu facts"): short session and rebalance timeouts (its JoinGroup
waits session_timeout/2). Both create every topic up front with the configured partition
count, and both batch produces: table recovery checks end offsets against a Fetch
(simapp/kafka/recovery.py), so Tansu's wrong ListOffsets for multi-record batches does no harm.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from mode.utils.objects import cached_property

from simapp.config import Settings, get_settings
from simapp.kafka import clients
from simapp.kafka.admin import ensure_topics
from simapp.kafka.committer import SafeCommitConsumer, SafeCommitTransport
from simapp.kafka.producer import all_topic_names
from simapp.kafka.recovery import LedgerFlowControl
from simapp.observe.logs import logging_config
from simapp.worker.webserver import SimappWeb

log = logging.getLogger(__name__)

# What Faust's autodiscovery imports; not the whole package (bench, the mocks).
DISCOVERED = ["simapp.agents", "simapp.tables", "simapp.web", "simapp.commands"]
# A burst of 10K does not fill it: Faust's conductor waits on a full stream queue, which
# starved the progress agent during a burst (docs/architecture.md, "Faust defects").
STREAM_BUFFER_EVENTS = 10_000


@dataclass(frozen=True)
class Topics:
    """Every topic simapp reads or writes."""

    events: Any
    results: Any
    dlq: Any
    progress: Any


class SimApp(faust.App):
    """faust.App whose consumer never commits past an unfinished event (committer.py)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings.kafka_consumer_group, **faust_config(settings))
        self.simapp_settings = settings
        # told when Faust stops (False) and resumes (True) the flow of events
        self.flow_listeners: list[Callable[[bool], None]] = []
        if settings.log_format == "json":
            from simapp.worker.console import use_json_console

            use_json_console()
        if os.environ.get("SIMAPP_TEST_HOOKS"):
            from simapp.worker import testhooks

            testhooks.install(self)
        SafeCommitConsumer.shutdown_grace = settings.shutdown_grace_seconds
        SafeCommitConsumer.revoke_grace = min(
            settings.shutdown_grace_seconds, float(self.conf.broker_rebalance_timeout) * 0.6
        )

    def resolve_datadir(self) -> Path:
        """WORKER_DATADIR, else `faust --datadir` (Faust's CLI sets F_DATADIR only after it
        imported the app, so the app's default missed it), else Faust's default; created with
        its parents (Faust creates only the last component)."""
        wanted = os.environ.get("F_DATADIR")
        if self.simapp_settings.worker_datadir is None and wanted:
            wanted_path = Path(wanted.format(conf=self.conf))
            if wanted_path != Path(self.conf.datadir):
                self.conf.datadir = wanted_path
        path = Path(self.conf.datadir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def on_first_start(self) -> None:
        s = self.simapp_settings
        self.resolve_datadir()
        try:  # before Faust makes its clients: a refused certificate or password says so
            await clients.check_access(s)
        except clients.KafkaAccessError as exc:
            log.error("cannot use the Kafka brokers: %s. The worker exits.", exc)
            raise
        await super().on_first_start()
        if not s.direct_llm_route:
            # ~2.5 s of blocking work: pay it before partitions arrive, not on the first
            # event (it froze the loop, web server included).
            from simapp.llm.litellm_route import import_litellm

            import_litellm(s.llm_pool_size)
        # An auto-created topic gets the broker's default partition count (4 on Tansu) and
        # breaks co-partitioning of the tables with their source topics.
        await ensure_topics(s, all_topic_names(s))
        # What start-up built lives as long as the worker: out of the cyclic GC's sight, a
        # full collection no longer scans it (with LiteLLM imported: ~200 ms loop stalls).
        gc.collect()
        gc.freeze()

    @cached_property
    def flow_control(self) -> LedgerFlowControl:
        """Faust's flow control, telling our consumer when the stream queues are emptied."""
        return LedgerFlowControl(self, loop=self.loop)

    def _new_web(self) -> Any:
        """Faust's web server with simapp's views only, the token checked when set
        (simapp/worker/webserver.py)."""
        return SimappWeb(self, token=self.simapp_settings.web_auth_token)

    def _new_transport(self) -> Any:
        if not self.simapp_settings.safe_commit:  # stock Faust's rule, for comparisons
            return super()._new_transport()
        return SafeCommitTransport(self.conf.broker_consumer, self)


def table_options(settings: Settings) -> dict[str, Any]:
    """A table's store options (`app.Table(options=...)`): the RocksDB store's memory per
    partition database, bounded (the memory store ignores them). A fresh dict per table:
    Faust's RocksDB store pops keys off the dict it is given."""
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_bytes,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_bytes,
    }


def faust_config(settings: Settings) -> dict[str, Any]:
    """Faust settings derived from ours."""
    # the URL's scheme picks Faust's aiokafka driver; TLS and SASL come from broker_credentials
    brokers = ";".join(f"kafka://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(","))
    conf: dict[str, Any] = {
        "broker": brokers,
        "broker_credentials": clients.faust_credentials(settings),
        "autodiscover": DISCOVERED,
        "origin": __name__,  # scanned too: this module, not the whole package
        "store": settings.table_store,
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
        "stream_buffer_maxsize": max(settings.concurrent_conversations * 2, STREAM_BUFFER_EVENTS),
        "producer_acks": -1,
        "table_cleanup_interval": 30.0,
        "logging_config": logging_config(settings.log_format, settings.log_level),
        "TableManager": "simapp.kafka.recovery:FailLoudTableManager",
    }
    if settings.log_format == "json":
        conf["Worker"] = "simapp.worker.console:JsonConsoleWorker"
    if settings.worker_datadir is not None:
        conf["datadir"] = settings.worker_datadir
    if settings.embedded:
        conf.update(
            broker_session_timeout=3.0,
            broker_heartbeat_interval=0.5,
            broker_rebalance_timeout=4.0,
            broker_request_timeout=30.0,
            consumer_max_fetch_size=1024 * 1024,
        )
    return conf


def declare_topics(app: faust.App, settings: Settings) -> Topics:
    parts = settings.kafka_partitions
    # raw: every value is compact JSON made by simapp (simapp/kafka/records.py), decoded by
    # its reader, which skips (progress) or dead-letters (results) what it cannot read
    raw = {"key_serializer": "raw", "value_serializer": "raw"}
    return Topics(
        events=app.topic(settings.kafka_topic, partitions=parts, **raw),
        results=app.topic(settings.results_topic, partitions=parts, **raw),
        dlq=app.topic(settings.dlq_topic, partitions=parts, **raw),
        progress=app.topic(settings.progress_topic, partitions=parts, **raw),
    )


settings = get_settings()
app = SimApp(settings)
topics = declare_topics(app, settings)
