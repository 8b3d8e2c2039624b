"""State a worker keeps is bounded (issue 19, point 4), through the real path: a worker,
Tansu, the mock LLM, the sink.

Finished batches leave the progress table, /progress/ and /metrics after BATCH_RETENTION,
simulation rows leave after SIMULATION_RETENTION (tombstones: a restarted worker does not
bring them back); a burst of distinct hostile batch ids and model names makes a bounded
number of series and list entries.
"""

from __future__ import annotations

import json

import pytest

from simapp.embedded.session import parse_prometheus
from simapp.embedded.stack import http_json, http_text
from tests.helpers import events_for, send_events, send_raw, wait_until

pytestmark = pytest.mark.slow

RETENTION = {"batch_retention": 4, "simulation_retention": 4, "retention_sweep_rows": 5000}


def metrics(worker) -> dict[str, float]:
    return parse_prometheus(http_text(f"http://127.0.0.1:{worker.port}/metrics"))


def delivered(stack, ids: set[str]) -> set[str]:
    return {i["simulation_id"] for i in stack.sink_items()} & ids


def test_finished_batches_and_rows_expire_and_stay_gone_after_a_restart(stack, ns, workers):
    worker = workers.start(**RETENTION)
    events = events_for(stack, 20, max_iterations=2, seed=41)
    batch = events[0]["batch_id"]
    ids = {e["id"] for e in events}
    send_events(stack, ns, events)
    assert wait_until(lambda: delivered(stack, ids) == ids, 120)
    web = f"http://127.0.0.1:{worker.port}"
    assert wait_until(lambda: http_json(f"{web}/progress/{batch}/").get("done"), 30)

    def gone() -> bool:
        m = metrics(worker)
        return (
            m.get('table_rows{table="simulations"}') == 0
            and m.get('table_rows{table="progress"}') == 0
            and m.get('table_rows{table="progress-seen"}') == 0
        )

    assert wait_until(gone, 60), metrics(worker)
    assert all(b["batch_id"] != batch for b in http_json(f"{web}/progress/")["batches"])
    assert not [k for k in metrics(worker) if batch in k]  # its series are gone too
    workers.stop_all()
    again = workers.start(**RETENTION)  # recovers the tables from their changelogs
    m = wait_until(lambda: metrics(again).get('table_rows{table="simulations"}') == 0, 60)
    assert m, metrics(again)
    status, _ = http_json_status(f"http://127.0.0.1:{again.port}/progress/{batch}/")
    assert status in (404, 503)


def test_hostile_batch_ids_and_model_names_make_bounded_series(stack, ns, workers):
    worker = workers.start(progress_batches_shown=20, gauged_batches=5)
    events = events_for(stack, 60, max_iterations=2, seed=43)
    for i, event in enumerate(events):
        event["batch_id"] = f"hostile-{ns.tag}-{i}"  # every event its own batch
        event["batch_size"] = 1000  # none ever finishes: all stay unfinished
        event["model"] = f"model-{i}"
    ids = {e["id"] for e in events}
    send_raw(stack, ns, [(e["id"].encode(), json.dumps(e).encode()) for e in events])
    assert wait_until(lambda: delivered(stack, ids) == ids, 180)
    web = f"http://127.0.0.1:{worker.port}"
    listed = http_json(f"{web}/progress/")
    assert len(listed["batches"]) <= 20 and listed["batches_known"] >= 60
    m = metrics(worker)
    batch_series = {k for k in m if k.startswith("total_simulations{")}  # 60 batches
    assert len(batch_series) <= 5, batch_series
    model_labels = {k for k in m if k.startswith("llm_api_calls_total{")}
    assert len(model_labels) <= 21, model_labels  # 20 names, then "other"
    assert 'llm_api_calls_total{model="other"}' in m


def http_json_status(url: str) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
