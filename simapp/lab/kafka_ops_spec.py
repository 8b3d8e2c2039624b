"""What `make bench-kafka`'s parent and its worker process agree on: the modes (one kind of
Kafka operation each), the WorkerSpec handed over in SPEC_ENV, and the control files.

Its own module so that the worker (simapp.lab.kafka_ops_app) imports it without the driver or
the report, and both sides read the same names.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

SPEC_ENV = "SIMAPP_BENCH_KAFKA_SPEC"  # the worker's WorkerSpec, as JSON
WARMUP_PREFIX = b"warmup-"  # keys of warm-up events
READY_FILE = "ready.json"  # written by the worker once the warm-up is handled and committed
DONE_FILE = "done.json"  # written by the worker once the measured events are
STREAM_BUFFER_EVENTS = 10_000  # simapp.worker.application.STREAM_BUFFER_EVENTS
BATCHED_BYTES = 16_384  # Faust's producer_max_batch_size default, what both profiles use now
APP_PATH = "simapp.lab.kafka_ops_app:app"  # what `faust -A` loads in the worker
ROOT = Path(__file__).resolve().parents[2]  # the checkout: the worker's cwd, git, results

OP_NONE = "none"  # read the event, ack it (the stream does), nothing else
OP_SEND = "send"  # await topic.send(key=..., value=...): enqueued, delivery not awaited
OP_SEND_SOON = "send_soon"  # topic.send_soon(...): Faust's producer buffer, fire and forget
OP_TABLE_SET = "table_set"  # table[key] = value: store write + changelog send_soon
OP_PUT = "put"  # TableStore.put(...), not awaited (a turn row)
OP_PUT_WAIT = "put_wait"  # await TableStore.put(...): until the changelog write is acked


@dataclass(frozen=True)
class Mode:
    """One kind of operation, done by the worker's agent once per event."""

    name: str
    op: str
    single_actor: bool  # concurrency 1 (the progress agent) or CONCURRENT_CONVERSATIONS
    batch1: bool  # producer_max_batch_size=1 instead of batching
    baseline: str | None  # the read-only mode whose gross cost is subtracted
    label: str


def _modes() -> list[Mode]:
    """The two read-only baselines, then every operation batched and with batch size 1."""
    modes = [
        Mode("read", OP_NONE, False, False, None, "event read + ack (simulate agent's actors)"),
        Mode("read_1", OP_NONE, True, False, None, "event read + ack (one actor: progress agent)"),
    ]
    sends = [
        (OP_SEND, False, "read", "`await topic.send()` (progress, result)"),
        (OP_SEND_SOON, False, "read", "`topic.send_soon()`, not awaited"),
        (OP_TABLE_SET, True, "read_1", "`table[key] = value` (progress tables)"),
        (OP_PUT, False, "read", "`TableStore.put()`, not awaited (turn row)"),
        (OP_PUT_WAIT, False, "read", "`await TableStore.put()` (done row)"),
    ]
    for batch1 in (False, True):
        for op, single, baseline, label in sends:
            name = f"{op}@b1" if batch1 else op
            modes.append(Mode(name, op, single, batch1, baseline, label))
    return modes


MODES = _modes()
MODES_BY_NAME = {m.name: m for m in MODES}


@dataclass(frozen=True)
class WorkerSpec:
    """Everything the worker process needs, handed over in SPEC_ENV."""

    mode: str
    broker: str  # host:port
    app_id: str
    count: int
    warmup: int
    concurrency: int
    partitions: int
    store: str
    datadir: str
    control_dir: str
    value_bytes: int
    commit_interval: float

    @property
    def source_topic(self) -> str:
        return f"{self.app_id}-events"

    @property
    def sink_topic(self) -> str:
        return f"{self.app_id}-sink"

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> WorkerSpec:
        return cls(**json.loads(os.environ[SPEC_ENV]))
