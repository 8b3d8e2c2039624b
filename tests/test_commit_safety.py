"""Never commit past an in-flight record (faust-streaming #606): proven with SIGKILL.

Eleven events on one partition; the first one's callback receiver holds the POST open, so
its summary's record on the results topic (the outbox, simapp/delivery/outbox.py) stays in
flight while the ten later summaries are delivered and committed around it. (The events
themselves are committed once their summaries are durable on the results topic: that is the
outbox's point.) The worker is SIGKILLed after several commit intervals and a new one
starts: the held summary must be delivered again. The same scenario on stock Faust's commit
rule (SAFE_COMMIT=false) commits past it and loses it, which shows the test can fail.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers import (
    HoldingReceiver,
    committed_offset,
    events_for,
    send_to_partition,
    wait_until,
)

pytestmark = pytest.mark.slow


def on_partition(events: list[dict], partitions: int, partition: int) -> list[dict]:
    """The events whose id (the message key) the default partitioner puts on `partition`."""
    from aiokafka.partitioner import DefaultPartitioner

    choose = DefaultPartitioner()
    every = list(range(partitions))
    return [e for e in events if choose(e["id"].encode(), every, every) == partition]


def llm_calls(stack) -> int:
    return int(stack.mock_stats()["responses_by_status"].get("200", 0))


def result_offsets(bootstrap: str, topic: str, expect: int) -> dict[str, tuple[int, int]]:
    """simulation id -> (partition, offset) of its summary's record on the results topic."""
    import asyncio

    from simapp.config import load_settings
    from simapp.kafka.reader import TopicReader, json_value

    async def read() -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        async with TopicReader(load_settings(kafka_bootstrap_servers=bootstrap)) as reader:
            await reader.from_start(topic)
            async with asyncio.timeout(30):
                async for record in reader.records(to_end=False, limit=expect):
                    summary = json_value(record).get("summary", {})
                    out[summary.get("simulation_id", "")] = (record.partition, record.offset)
        return out

    return asyncio.run(read())


def run_scenario(stack, ns, workers, safe_commit: bool) -> tuple[HoldingReceiver, list[str], dict]:
    receiver = HoldingReceiver().start()
    params = {
        "commit_interval": 0.5,
        "callback_timeout": 300,
        "safe_commit": str(safe_commit).lower(),
    }
    try:
        first = workers.start(**params)
        # all on partition 0 by their own key, as a keyed producer would place them
        head, *rest = on_partition(events_for(stack, 200), stack.partitions, 0)[:11]
        head["callback_url"] = receiver.url
        # the head's summary first on the results topic, the ten others after it
        head["max_iterations"] = 1
        for event in rest:
            event["max_iterations"] = 4
        send_to_partition(stack, ns, [head, *rest], partition=0)
        rest_ids = {e["id"] for e in rest}
        assert wait_until(lambda: head["id"] in receiver.attempts, 60), (
            f"head {head} not called back"
        )
        assert wait_until(
            lambda: rest_ids <= {i["simulation_id"] for i in stack.sink_items()}, 60
        ), "later events not delivered"
        time.sleep(1.5)  # several commit intervals with the head still in flight
        o = ns.overrides()

        offsets = result_offsets(stack.bootstrap, o["results_topic"], 11)
        head_partition, head_offset = offsets[head["id"]]

        def committed() -> int | None:
            return committed_offset(
                stack.bootstrap, o["kafka_consumer_group"], o["results_topic"], head_partition
            )

        # a commit after the ten later events finished (only the head is in flight)
        assert wait_until(lambda: committed() is not None, 30), "nothing was ever committed"
        time.sleep(1.0)
        committed_before_kill = committed()
        calls_before_kill = llm_calls(stack)
        first.kill()  # SIGKILL: no commit on the way out
        receiver.hold = False
        workers.start(**params)
        wait_until(lambda: head["id"] in receiver.successes, 20 if not safe_commit else 45)
        items = [i for i in stack.sink_items() if i["simulation_id"] in rest_ids]
        counts = {
            "rest_deliveries": len(items),
            "calls_after_kill": llm_calls(stack) - calls_before_kill,
            "rest_delivered": len({i["simulation_id"] for i in items}),
            "rest": len(rest_ids),
            "committed_before_kill": committed_before_kill,
            "head_offset": head_offset,
            "after_head": sum(
                1 for p, off in offsets.values() if p == head_partition and off > head_offset
            ),
        }
        return receiver, [head["id"]], counts
    finally:
        receiver.stop()


def test_head_event_in_flight_is_redelivered_after_sigkill(stack, ns, workers):
    receiver, (head_id,), counts = run_scenario(stack, ns, workers, safe_commit=True)
    assert counts["after_head"] >= 5  # summaries finished after the held one: the scenario
    assert counts["committed_before_kill"] <= counts["head_offset"]  # never past the held one
    assert head_id in receiver.successes, "the in-flight head event was lost"
    # the ten later summaries were read again too (the commit stayed at the held one) and
    # POSTed again with the same Idempotency-Key: at least once, never re-simulated
    assert counts["rest_delivered"] == counts["rest"]
    assert counts["rest"] <= counts["rest_deliveries"] <= 2 * counts["rest"]
    assert counts["calls_after_kill"] == 0


def test_stock_faust_commit_rule_loses_the_head_event(stack, ns, workers):
    receiver, (head_id,), counts = run_scenario(stack, ns, workers, safe_commit=False)
    assert counts["committed_before_kill"] > counts["head_offset"]  # past the held summary
    assert head_id not in receiver.successes, "stock Faust did not lose it: the bug is gone?"
