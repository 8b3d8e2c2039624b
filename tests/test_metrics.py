"""The Prometheus exposition of a real worker after a run: seed names, values, promtool."""

from __future__ import annotations

import subprocess

import pytest

from simapp.embedded.session import parse_prometheus
from tests.tools import require_tool

pytestmark = pytest.mark.slow

# the seed's metric names; counters carry prometheus-client's `_total` suffix
SEED_NAMES = [
    "conversations_active",
    "conversations_completed_total",
    "conversations_failed_total",
    "conversation_duration_seconds_bucket",
    "iterations_per_conversation_bucket",
    "llm_api_calls_total",
    "llm_api_latency_seconds_bucket",
    "llm_api_errors_total",
    "kafka_consumer_lag",
    "kafka_messages_consumed_total",
    "kafka_commits_succeeded_total",
    "kafka_commits_failed_total",
    "remaining_simulations",
    "total_simulations",
]


def test_every_seed_metric_is_exported_with_plausible_values(live_worker_run):
    text, n = live_worker_run["text"], live_worker_run["count"]
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    for name in SEED_NAMES:
        base = name.removesuffix("_bucket").removesuffix("_total")
        assert base in declared or name in declared, f"{name} not exported"
    values = parse_prometheus(text)

    def total(prefix: str) -> float:
        return sum(v for k, v in values.items() if k.split("{")[0] == prefix)

    assert total("conversations_completed_total") + total("conversations_failed_total") == n
    assert total("conversation_duration_seconds_count") == n
    assert total("iterations_per_conversation_count") == n
    assert total("kafka_messages_consumed_total") == n
    assert total("llm_api_calls_total") >= 2 * n - n  # at least one assistant turn each
    assert total("llm_api_latency_seconds_count") == total("llm_api_calls_total")
    assert total("kafka_commits_succeeded_total") >= 1
    assert total("conversations_active") == 0
    assert total("callback_deliveries_total") == n
    assert total("llm_tokens_total") > 0


def test_exposition_passes_promtool(live_worker_run):
    promtool = require_tool("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=live_worker_run["text"].encode(),
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
