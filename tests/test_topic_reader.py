"""simapp.kafka.reader.TopicReader against the real (Tansu) broker: a topic from its start,
its newest records, given offsets, an unknown topic; ends at the fetch's high watermark."""

from __future__ import annotations

import asyncio
import json

import pytest

from simapp.embedded.stack import EmbeddedStack
from simapp.kafka.producer import produce
from simapp.kafka.reader import TopicReader, json_value
from tests.helpers import Namespace

pytestmark = pytest.mark.slow


async def read_all(reader: TopicReader, **kw: object) -> list[dict]:
    async with asyncio.timeout(30):
        return [json_value(r) async for r in reader.records(**kw)]


def test_reads_from_start_from_last_and_from_offsets(stack: EmbeddedStack) -> None:
    ns = Namespace()
    settings = ns.settings(stack)
    topic = settings.results_topic
    records = [(f"k{i}".encode(), json.dumps({"n": i}).encode()) for i in range(40)]
    assert asyncio.run(produce(settings, records, topic=topic)) == 40

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with TopicReader(settings) as reader:
            started = loop.time()
            got = await read_all(await reader.from_start(topic), idle=30.0)
            # ended by the high watermark, not by waiting out the 30 s idle bound
            assert loop.time() - started < 20
            assert sorted(v["n"] for v in got) == list(range(40))
        async with TopicReader(settings) as reader:
            tps = reader.partitions(topic)
            ends = await reader.end_offsets(tps)
            # Tansu's ListOffsets answers a multi-record batch's base offset + 1; the Fetch
            # answer is the real end
            assert sum(ends.values()) == 40
            got = await read_all(await reader.from_last(topic, 2))
            assert len(got) == 2 * len(tps)
        async with TopicReader(settings) as reader:
            (first, *_) = reader.partitions(topic)
            reader.from_offsets({first: 0})
            got = await read_all(reader, limit=1)
            assert len(got) == 1
            assert reader.highwater(first) is not None
        async with TopicReader(settings) as reader:
            assert await read_all(await reader.from_start(f"missing-{ns.tag}")) == []

    asyncio.run(scenario())
