"""`make bench`, `make chaos` and `make soak` end to end at a tiny size, as the README shows
them: they run, account for every event and write the JSON result with every key the docs
use."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

EXPECTED_KEYS = {
    "date",
    "command",
    "machine",
    "config",
    "sent",
    "delivered",
    "missing",
    "dead_lettered",
    "wall_seconds",
    "llm_calls",
    "calls_per_simulation",
    "floor_seconds",
    "wall_over_floor",
    "achieved_rps",
    "achieved_over_budget",
    "mock_max_1s_window",
    "llm_429",
    "worker_cpu_seconds",
    "worker_cpu_s_per_1000_calls",
    "worker_peak_rss_mb",
    "peak_rss_mb",
    "p50_duration_s",
    "p95_duration_s",
    "bare",
    "bare_cpu_s_per_1000_calls",
    "cpu_ratio_vs_bare",
    "raw",
    "raw_cpu_s_per_1000_calls",
    "cpu_ratio_vs_raw",
    "route",
    "cpu_seconds_during_run",
    "goals",
    "worker_view",
    "worker_log_problems",
    "timeouts",
    "conversation_slots",
    "mock_latency_ms",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    args = (
        f"--latency-ms 30 --jitter-ms 10 --bare-calls 100 --raw-calls 200 --no-append --out {out}"
    )
    cmd = ["make", "bench", "COUNT=30", "WORKERS=1", "RPS=50", f"ARGS={args}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    missing_keys = EXPECTED_KEYS - result.keys()
    assert not missing_keys, missing_keys
    assert result["missing"] == 0
    assert result["sent"] == 30 and result["delivered"] == 30
    assert result["llm_calls"] > 0 and result["floor_seconds"] > 0
    assert result["llm_429"] == 0
    assert result["mock_max_1s_window"] <= 50
    assert len(result["worker_cpu_seconds"]) == 1 and result["worker_cpu_seconds"][0] > 0
    assert result["worker_peak_rss_mb"][0] > 0
    assert result["bare"]["ok"] == 100 and result["bare_cpu_s_per_1000_calls"] > 0
    assert result["raw"]["ok"] == 200 and result["raw_cpu_s_per_1000_calls"] > 0
    assert result["route"] == "openai"
    assert result["config"]["concurrency"] is None  # the workers size themselves
    assert result["timeouts"] == 0
    assert result["conversation_slots"]["max_target"]  # read from the workers during the run
    problems = result["worker_log_problems"]
    assert problems["agent_crashed"] == 0 and problems["partitions_mismatch"] == 0, problems


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_chaos_smoke(tmp_path: Path) -> None:
    """`make chaos` at a small size: every fault of the schedule happens, nothing is missing."""
    out = tmp_path / "chaos.json"
    args = f"--no-baseline --rps 120 --timeout 300 --receiver-down-s 10 --no-append --out {out}"
    cmd = ["make", "chaos", "COUNT=240", f"ARGS={args}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=380, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["sent"] == 240 and result["missing"] == 0
    assert "callback_failed" not in result["dead_lettered"]  # the outage was waited out
    faults = " ".join(result["faults"])
    for done in ("SIGKILL worker-0", "worker-0 restarted", "SIGTERM worker-1",
                 "worker-1 restarted", "joins", "receiver down", "receiver up"):  # fmt: skip
        assert done in faults, result["faults"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_soak_smoke(tmp_path: Path) -> None:
    """`make soak` at a tiny size: every batch measured, the worker restarted and timed, the
    verdict written (3 batches are too few for it to mean anything, so its exit is not read)."""
    out = tmp_path / "soak.json"
    args = f"--batches 3 --count 20 --retention 2 --restart-every 2 --out {out}"
    cmd = ["make", "soak", f"ARGS={args}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=280, check=False)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["batch"] for r in result["rows"]] == [1, 2, 3]
    for row in result["rows"]:
        assert row["rss_mb"] > 0 and row["metrics_kb"] > 0 and "simulation_rows" in row, row
    assert result["rows"][1]["restart_s"] > 0  # batch 2: restarted and recovered
    assert set(result["verdict"]) >= {"rss_mb", "metrics_kb", "simulation_rows"}
