"""One summary read back from the results topic, for the transcript view of a batch report.

The batch report keeps no transcript: a failing simulation's entry holds where its record is on
the results topic (partition, offset; simapp/observe/report.py), and this reads that one record
with a group-less reader (simapp/kafka/reader.py, whose client simapp/kafka/clients.py makes),
so a transcript costs nothing until someone asks for it, and it is gone when the topic's
retention removed it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import TopicPartition

from simapp.config import Settings
from simapp.kafka.reader import TopicReader

READ_TIMEOUT = 10.0  # seconds to reach the broker and fetch the record


async def read_summary(
    s: Settings, partition: int, offset: int, simulation_id: str
) -> dict[str, Any] | None:
    """The summary of `simulation_id` at results[partition]@offset, or None when the record
    is no longer there (retention) or is not that simulation's."""
    tp = TopicPartition(s.results_topic, partition)
    async with asyncio.timeout(READ_TIMEOUT), TopicReader(s, request_timeout_ms=5_000) as reader:
        reader.from_offsets({tp: offset})
        async for record in reader.records(limit=1, idle=3.0):
            if record.offset != offset:
                return None  # the offset is gone: the reader started at the log's start
            try:
                value = json.loads(record.value or b"")
            except ValueError:
                return None
            summary = value.get("summary") if isinstance(value, dict) else None
            if isinstance(summary, dict) and summary.get("simulation_id") == simulation_id:
                return {"summary": summary, "facts": value.get("facts") or {}}
            return None
    return None
