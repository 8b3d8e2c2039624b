"""Never commit past an in-flight event (faust-streaming #606): proven with SIGKILL.

The head event of a partition stays in flight (its callback receiver holds the POST open)
while ten later events finish and are committed around it. The worker is SIGKILLed after
several commit intervals and a new one starts: the head event must be processed again.
The same scenario on stock Faust's commit rule (SAFE_COMMIT=false) loses the head event,
which shows the test can fail.
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

        def committed() -> int | None:
            return committed_offset(stack.bootstrap, o["kafka_consumer_group"], o["kafka_topic"], 0)

        # a commit after the ten later events finished (only the head is in flight)
        assert wait_until(lambda: committed() is not None, 30), "nothing was ever committed"
        time.sleep(1.0)
        committed_before_kill = committed()
        first.kill()  # SIGKILL: no commit on the way out
        receiver.hold = False
        workers.start(**params)
        wait_until(lambda: head["id"] in receiver.successes, 20 if not safe_commit else 45)
        items = [i for i in stack.sink_items() if i["simulation_id"] in rest_ids]
        counts = {
            "rest_deliveries": len(items),
            "rest": len(rest_ids),
            "committed_before_kill": committed_before_kill,
        }
        return receiver, [head["id"]], counts
    finally:
        receiver.stop()


def test_head_event_in_flight_is_redelivered_after_sigkill(stack, ns, workers):
    receiver, (head_id,), counts = run_scenario(stack, ns, workers, safe_commit=True)
    assert counts["committed_before_kill"] == 0  # the head's offset: never past it
    assert head_id in receiver.successes, "the in-flight head event was lost"
    # the ten finished events were redelivered too (commit stayed at the head) but skipped:
    # the simulations table knew they were done, so nobody got a second summary.
    assert counts["rest_deliveries"] == counts["rest"]


def test_stock_faust_commit_rule_loses_the_head_event(stack, ns, workers):
    receiver, (head_id,), counts = run_scenario(stack, ns, workers, safe_commit=False)
    assert counts["committed_before_kill"] == 11  # past the in-flight head (offset 0)
    assert head_id not in receiver.successes, "stock Faust did not lose it: the bug is gone?"
