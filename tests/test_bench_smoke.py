"""`python -m simapp.bench` end to end at a tiny size: it runs, accounts for every event and
writes the JSON result with every key the docs table and the lead's comparisons use."""

from __future__ import annotations

import json
import subprocess
import sys
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
    "cpu_seconds_during_run",
    "goals",
    "worker_view",
    "worker_log_problems",
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    cmd = [
        sys.executable, "-m", "simapp.bench",
        "--count", "30", "--workers", "1", "--rps", "50",
        "--latency-ms", "30", "--jitter-ms", "10",
        "--bare-calls", "100", "--no-append", "--out", str(out),
    ]  # fmt: skip
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
    assert result["config"]["concurrency"] == 50
    problems = result["worker_log_problems"]
    assert problems["agent_crashed"] == 0 and problems["partitions_mismatch"] == 0, problems
