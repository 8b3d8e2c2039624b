"""The Faust app that `make bench-kafka`'s worker process runs: `python -m faust -A
simapp.lab.kafka_ops_app:app worker`, built on first access of `app` from the WorkerSpec in
SPEC_ENV.

One agent does its mode's Kafka operation for every event it reads, on an app configured like
simapp's embedded profile (`simapp.worker.application.faust_config`: short session, heartbeat
and rebalance timeouts, 1 MB fetches, acks=-1, the 10,000-event stream buffer, commit every
COMMIT_INTERVAL, simapp's text logging at INFO, SafeCommitConsumer, LedgerFlowControl and
FailLoudTableManager; no web server), so that Faust's machinery is in what is measured. A
Tracker counts the events and tells the parent, through files, when the warm-up and the
measured events are handled, drained and committed. Its own module so that the worker imports
neither the driver nor the report.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from simapp.lab.kafka_ops_spec import (
    BATCHED_BYTES,
    DONE_FILE,
    MODES_BY_NAME,
    OP_NONE,
    OP_PUT,
    OP_PUT_WAIT,
    OP_SEND,
    OP_SEND_SOON,
    OP_TABLE_SET,
    READY_FILE,
    STREAM_BUFFER_EVENTS,
    WARMUP_PREFIX,
    WorkerSpec,
)

Operation = Callable[[bytes, int], Awaitable[None]]  # (event key, partition)


def worker_conf(spec: WorkerSpec) -> dict[str, Any]:
    """simapp.worker.application.faust_config for the embedded profile, minus web and discovery."""
    from simapp.observe.logs import logging_config

    mode = MODES_BY_NAME[spec.mode]
    return {
        "broker": f"kafka://{spec.broker}",
        "autodiscover": False,
        "origin": "simapp.lab.kafka_ops_app",
        "store": spec.store,
        "datadir": spec.datadir,
        "topic_partitions": spec.partitions,
        "topic_replication_factor": 1,
        "topic_allow_declare": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_commit_interval": spec.commit_interval,
        "web_enabled": False,
        "stream_wait_empty": True,
        "stream_buffer_maxsize": max(spec.concurrency * 2, STREAM_BUFFER_EVENTS),
        "producer_acks": -1,
        "producer_max_batch_size": 1 if mode.batch1 else BATCHED_BYTES,
        "table_cleanup_interval": 30.0,
        "TableManager": "simapp.kafka.recovery:FailLoudTableManager",
        # simapp's text logging at INFO (aiokafka at WARNING). Not `-l warn`: at WARN and
        # above Faust's worker adds its terminal spinner and sets the root logger to DEBUG,
        # so every debug call of Faust and aiokafka builds a log record (~8 % of a send).
        "logging_config": logging_config("text", "INFO"),
        # the embedded profile
        "broker_session_timeout": 3.0,
        "broker_heartbeat_interval": 0.5,
        "broker_rebalance_timeout": 4.0,
        "broker_request_timeout": 30.0,
        "consumer_max_fetch_size": 1024 * 1024,
    }


def row_value(size: int) -> dict[str, Any]:
    """A simulations-table row (simapp.simulation.checkpoints.running_row), about `size` bytes."""
    from simapp.simulation.checkpoints import running_row

    message = {"role": "user", "content": ""}
    state = {"history": [message], "iterations": 1, "usage": {"llm_calls": 2}, "elapsed_ms": 900}
    row = running_row(3, 12_345, state)
    message["content"] = "x" * max(0, size - len(json.dumps(row)))
    return row


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: the parent polls for the file and must not read half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def count_produce_requests() -> dict[str, int]:
    """Count aiokafka's produce requests and the batches and records they carry (one extra
    call per request), to tell how much the producer batched."""
    from aiokafka.producer.sender import Sender

    stats = {"requests": 0, "batches": 0, "records": 0}
    original = Sender._send_produce_req

    async def counted(self: Any, node_id: int, batches: dict[Any, Any]) -> None:
        stats["requests"] += 1
        stats["batches"] += len(batches)
        stats["records"] += sum(batch.record_count for batch in batches.values())
        await original(self, node_id, batches)

    Sender._send_produce_req = counted  # type: ignore[method-assign]
    return stats


def time_gc() -> dict[str, float]:
    """Seconds spent in the garbage collector, and collections per generation."""
    import gc

    stats = {"seconds": 0.0, "gen0": 0, "gen1": 0, "gen2": 0}
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            stats["seconds"] += time.perf_counter() - started[0]
            stats[f"gen{info['generation']}"] += 1

    gc.callbacks.append(callback)
    return stats


class Tracker:
    """Counts handled events; says when the warm-up and when the measured events are done."""

    def __init__(self, app: Any, spec: WorkerSpec) -> None:
        self.app = app
        self.spec = spec
        self.control = Path(spec.control_dir)
        self.warm = 0
        self.measured = 0
        self.first: tuple[float, float] | None = None  # (monotonic, process_time)
        self.produced = count_produce_requests()
        self.gc = time_gc()
        self._tasks: set[asyncio.Task[None]] = set()

    def handled(self, key: bytes | None) -> None:
        """Count one event; the last warm-up or measured one starts the quiesce."""
        if key is not None and key.startswith(WARMUP_PREFIX):
            self.warm += 1
            if self.warm == self.spec.warmup:
                self._spawn(self._quiesce(READY_FILE))
            return
        self.measured += 1
        if self.measured == 1:
            self.first = (time.monotonic(), time.process_time())
        if self.measured == self.spec.count:
            self._spawn(self._quiesce(DONE_FILE))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _quiesce(self, name: str) -> None:
        """Everything the events caused is delivered and committed; then tell the parent."""
        producer = self.app.producer
        # Faust's send_soon buffer (changelog writes). Polled: its flush() wakes per message.
        while producer.buffer.size:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        await producer.flush()
        await self.app.consumer.commit()
        now = (time.monotonic(), time.process_time())
        first = self.first or now
        _write_json(
            self.control / name,
            {
                "warm": self.warm,
                "measured": self.measured,
                "first_monotonic": first[0],
                "first_cpu_s": first[1],
                "monotonic": now[0],
                "cpu_s": now[1],
                "produced": dict(self.produced),
                "gc": dict(self.gc),
                "root_log_level": logging.getLevelName(logging.root.getEffectiveLevel()),
            },
        )


def app_class(broker: str) -> type:
    """faust.App with simapp's consumer (ledger commits) and flow control, as SimApp has them."""
    import faust
    from mode.utils.objects import cached_property

    from simapp.kafka.committer import SafeCommitTransport
    from simapp.kafka.recovery import LedgerFlowControl

    class BenchApp(faust.App):
        """simapp's consumer (ledger commits) and flow control, as SimApp has them."""

        # SafeCommitConsumer.highwaters verifies end offsets against this broker.
        simapp_settings = SimpleNamespace(kafka_bootstrap_servers=broker)

        @cached_property
        def flow_control(self) -> LedgerFlowControl:
            return LedgerFlowControl(self, loop=self.loop)

        def _new_transport(self) -> Any:
            return SafeCommitTransport(self.conf.broker_consumer, self)

    return BenchApp


def operation(app: Any, spec: WorkerSpec, op: str) -> Operation:
    """The operation `op` on the sink topic or the table `rows`. Both exist in every mode, so
    that every worker declares the same topics and recovers the same table."""
    from simapp.simulation.checkpoints import TableStore

    sink = app.topic(
        spec.sink_topic,
        partitions=spec.partitions,
        key_serializer="raw",
        value_serializer="json",
    )
    table = app.Table("rows", default=None, partitions=spec.partitions, value_type=bytes)
    store = TableStore(table)
    value = row_value(spec.value_bytes)

    async def op_none(key: bytes, partition: int) -> None:
        return None

    async def op_send(key: bytes, partition: int) -> None:
        await sink.send(key=key, value=value)

    async def op_send_soon(key: bytes, partition: int) -> None:
        sink.send_soon(key=key, value=value)

    async def op_table_set(key: bytes, partition: int) -> None:
        table[key.decode()] = value

    async def op_put(key: bytes, partition: int) -> None:
        store.put(key.decode(), value, partition)

    async def op_put_wait(key: bytes, partition: int) -> None:
        await store.put(key.decode(), value, partition)

    ops: dict[str, Operation] = {
        OP_NONE: op_none,
        OP_SEND: op_send,
        OP_SEND_SOON: op_send_soon,
        OP_TABLE_SET: op_table_set,
        OP_PUT: op_put,
        OP_PUT_WAIT: op_put_wait,
    }
    return ops[op]


def build_app(spec: WorkerSpec) -> Any:
    """The bench's Faust app: one agent doing `spec.mode`'s operation for every event."""
    mode = MODES_BY_NAME[spec.mode]
    app = app_class(spec.broker)(spec.app_id, **worker_conf(spec))
    source = app.topic(
        spec.source_topic,
        partitions=spec.partitions,
        key_serializer="raw",
        value_serializer="raw",
    )
    do = operation(app, spec, mode.op)
    tracker = Tracker(app, spec)

    @app.agent(source, concurrency=1 if mode.single_actor else spec.concurrency)
    async def handle(stream: Any) -> None:
        async for event in stream.events():
            await do(event.key, event.message.partition)
            tracker.handled(event.key)

    return app


def __getattr__(name: str) -> Any:
    """`faust -A simapp.lab.kafka_ops_app:app` builds the app from SPEC_ENV on first access."""
    if name == "app":
        app = build_app(WorkerSpec.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)
