"""A worker whose table recovery fails leaves, and the others serve its partitions.

The failure is a real one an operator can cause: a worker started with a data directory that
another app id (or a broker that has since lost its data) filled. Faust's RocksDB store keeps
each partition's changelog offset without the topic's name, so the worker finds a persisted
offset above the end of this group's changelog and recovery raises ConsistencyError. Before,
the error named neither cause nor fix; the worker must now say both, exit non-zero (so a
supervisor restarts it) and leave its partitions to the others, which deliver every event.
"""

from __future__ import annotations

import pytest

from tests.helpers import Namespace, events_for, send_events, wait_until

pytestmark = pytest.mark.slow


def delivered(stack, ids: set[str]) -> set[str]:
    return {i["simulation_id"] for i in stack.sink_items()} & ids


def test_a_worker_whose_recovery_fails_exits_and_strands_nothing(stack, ns, workers, tmp_path):
    stale = tmp_path / "stale-datadir"
    other = Namespace()  # another app id, whose tables fill the directory first
    earlier = workers.start(**other.overrides(), worker_datadir=str(stale))
    first = events_for(stack, 200, seed=21)
    send_events(stack, other, first)
    assert wait_until(lambda: len(delivered(stack, {e["id"] for e in first})) == 200, 240)
    assert earlier.stop(timeout=45) == 0

    # this group's worker, and a short changelog: 20 events
    workers.start()
    warm = events_for(stack, 20, seed=22)
    send_events(stack, ns, warm)
    assert wait_until(lambda: len(delivered(stack, {e["id"] for e in warm})) == 20, 120)

    doomed = workers.start(wait=False, worker_datadir=str(stale))  # takes half the partitions
    assert wait_until(lambda: not doomed.alive(), 120), "the worker with stale state kept running"
    assert doomed.proc.returncode not in (0, None)
    log = doomed.log_path.read_text()
    assert "table recovery failed" in log and "ConsistencyError" in log
    assert "empty data directory" in log  # the fix, in the same line as the cause

    burst = events_for(stack, 80, seed=23)
    ids = {e["id"] for e in burst}
    send_events(stack, ns, burst)
    assert wait_until(lambda: delivered(stack, ids) == ids, 240), (
        f"{len(ids - delivered(stack, ids))} events stranded"
    )
