"""Settings: seed names and defaults, errors that name the variable, sizing warnings."""

from __future__ import annotations

import pytest

from simapp.config import SettingsError, load_settings


def test_seed_defaults(monkeypatch):
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC", "LLM_RATE_LIMIT_RPS", "LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings(_env_file=None)
    assert s.kafka_bootstrap_servers == "localhost:9092"
    assert s.kafka_topic == "simulation-events"
    assert s.kafka_consumer_group == "simulation-consumer-group"
    assert (s.llm_rate_limit_rps, s.max_iterations) == (10, 10)
    assert (s.conversation_timeout, s.llm_timeout, s.llm_retry_attempts) == (300, 30, 3)
    assert s.metrics_port == 8000
    # Two seed defaults changed on purpose (README, "How many conversations run"): the seed's
    # 20 conversations and 50 sockets are now a ceiling of 1000 and one socket per conversation
    assert (s.concurrent_conversations, s.llm_connection_pool_size) == (1000, None)
    assert s.llm_pool_size == 1000
    assert s.llm_backend_url is None and s.llm_api_key is None


def test_bad_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONCURRENT_CONVERSATIONS", "many")
    monkeypatch.setenv("LLM_API_KEY", "sk-secret-value")
    monkeypatch.setenv("LLM_TIMEOUT", "-1")
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    text = str(err.value)
    assert "CONCURRENT_CONVERSATIONS" in text and "LLM_TIMEOUT" in text
    assert "sk-secret-value" not in text


def test_env_lists_and_model_limits(monkeypatch):
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "api.example.com, 10.0.0.0/8")
    monkeypatch.setenv("LLM_MODEL_RATE_LIMITS", "gpt-4=20,claude-3=5")
    s = load_settings(_env_file=None)
    assert s.callback_allowed_hosts == ["api.example.com", "10.0.0.0/8"]
    assert s.llm_model_rate_limits == {"gpt-4": 20.0, "claude-3": 5.0}
    monkeypatch.setenv("CALLBACK_ALLOWED_HOSTS", "10.0.0.0/33")
    with pytest.raises(SettingsError, match="CALLBACK_ALLOWED_HOSTS"):
        load_settings(_env_file=None)


def test_the_pool_follows_the_ceiling_unless_capped():
    default = load_settings(_env_file=None)
    assert default.llm_pool_size == default.concurrent_conversations
    assert default.conversation_ceiling == default.concurrent_conversations
    capped = load_settings(
        _env_file=None, concurrent_conversations=500, llm_connection_pool_size=50
    )
    assert (capped.llm_pool_size, capped.conversation_ceiling) == (50, 50)


def test_rocksdb_memory_settings_refuse_what_would_not_bound_it(monkeypatch):
    """A memtable too small to hold a row, or sizes that would not bound a worker's memory,
    are refused by name (issue 19: Faust's 64 MB x 3 per partition database grew for weeks)."""
    monkeypatch.setenv("ROCKSDB_WRITE_BUFFER_BYTES", "1")
    monkeypatch.setenv("ROCKSDB_BLOCK_CACHE_BYTES", str(1 << 40))
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    assert "ROCKSDB_WRITE_BUFFER_BYTES" in str(err.value)
    assert "ROCKSDB_BLOCK_CACHE_BYTES" in str(err.value)
