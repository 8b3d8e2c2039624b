"""Helpers for end-to-end tests: topic namespaces, producing events, reading topics."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from simapp.config import load_settings
from simapp.embedded.catalogue import make_events
from simapp.embedded.stack import EmbeddedStack
from simapp.kafka.producer import encode_event, produce


@dataclass
class Namespace:
    """Unique topic and group names, so tests sharing one broker never see each other's data."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def overrides(self) -> dict[str, str]:
        t = self.tag
        return {
            "kafka_topic": f"events-{t}",
            "results_topic": f"results-{t}",
            "dlq_topic": f"dlq-{t}",
            "progress_topic": f"progress-{t}",
            "kafka_consumer_group": f"group-{t}",
        }

    def settings(self, stack: EmbeddedStack, **extra: Any) -> Any:
        return load_settings(
            kafka_bootstrap_servers=stack.bootstrap,
            kafka_partitions=stack.partitions,
            **self.overrides(),
            **extra,
        )


def events_for(
    stack: EmbeddedStack, count: int, *, batch_id: str | None = None, **kw: Any
) -> list[dict]:
    return make_events(
        count,
        callback_url=f"{stack.sink_url}/callback",
        batch_id=batch_id or f"b{uuid.uuid4().hex[:8]}",
        **kw,
    )


def send_events(stack: EmbeddedStack, ns: Namespace, events: Iterable[dict]) -> int:
    return send_raw(stack, ns, (encode_event(e) for e in events))


def send_raw(
    stack: EmbeddedStack, ns: Namespace, records: Iterable[tuple[bytes | None, bytes]]
) -> int:
    return asyncio.run(produce(ns.settings(stack), list(records)))


def read_topic(
    bootstrap: str, topic: str, expect: int | None, timeout: float = 30.0
) -> list[dict]:
    """Read JSON values from the start of `topic` until `expect` records or the timeout
    (`expect=None`: on to the topic's end, as far as it is now)."""
    from simapp.config import load_settings
    from simapp.kafka.reader import TopicReader, json_value

    async def _read() -> list[dict]:
        settings = load_settings(kafka_bootstrap_servers=bootstrap)
        out: list[dict] = []
        async with TopicReader(settings) as reader:
            await reader.from_start(topic)
            try:
                async with asyncio.timeout(timeout):
                    async for record in reader.records(to_end=expect is None, limit=expect):
                        out.append(json_value(record))
            except TimeoutError:
                pass
        return out

    return asyncio.run(_read())


def read_topic_to_end(
    bootstrap: str, topic: str, at_least: int, timeout: float = 30.0
) -> list[dict]:
    """Every record of `topic`, not a guessed count of them: wait for `at_least` (or the
    timeout), then read again to the end (a fetch past `limit` drops the rest of its batch)."""
    if at_least > 0:
        read_topic(bootstrap, topic, at_least, timeout)
    return read_topic(bootstrap, topic, None, timeout)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def delivered_for(stack: EmbeddedStack, ids: set[str]) -> list[dict]:
    """Deliveries at the sink whose simulation id is in `ids` (all attempts that succeeded)."""
    return [item for item in stack.sink_items() if item.get("simulation_id") in ids]


def send_to_partition(
    stack: EmbeddedStack, ns: Namespace, events: list[dict], partition: int
) -> None:
    """Produce events keyed by id but to one explicit partition (to control offsets)."""
    from aiokafka import AIOKafkaProducer

    from simapp.kafka.admin import ensure_topics
    from simapp.kafka.producer import all_topic_names

    settings = ns.settings(stack)

    async def _send() -> None:
        await ensure_topics(settings, all_topic_names(settings), stack.partitions)
        producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        await producer.start()
        try:
            for event in events:
                key, value = encode_event(event)
                await producer.send_and_wait(
                    settings.kafka_topic, value=value, key=key, partition=partition
                )
        finally:
            await producer.stop()

    asyncio.run(_send())


class HoldingReceiver:
    """A callback receiver in a background thread that can hold requests open.

    While `hold` is True every POST is recorded and then left hanging (an in-flight callback);
    afterwards POSTs are answered 200 and recorded as successes.
    """

    def __init__(self) -> None:
        import threading

        self.hold = True
        self.attempts: list[str] = []
        self.successes: list[str] = []
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> HoldingReceiver:
        self._thread.start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hold"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            sim_id = body.get("simulation_id")
            self.attempts.append(sim_id)
            while self.hold:  # noqa: ASYNC110 - flipped from another thread
                await asyncio.sleep(0.1)
            transport = request.transport
            if transport is None or transport.is_closing():
                # the caller died while we held it (aiohttp does not cancel the handler)
                raise ConnectionResetError("client went away")
            self.successes.append(sim_id)
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/hold", handle)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def stop(self) -> None:
        self.hold = False
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


def committed_offset(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    """The group's committed offset for one partition (None when nothing committed).

    Asked with confluent-kafka (librdkafka), an independent client: aiokafka's admin
    OffsetFetch does not parse Tansu's answer. No subscribe, so the group is not disturbed.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        (tp,) = consumer.committed([TopicPartition(topic, partition)], timeout=10)
    finally:
        consumer.close()
    return None if tp.offset < 0 else tp.offset
