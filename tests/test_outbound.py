"""What an event can make the worker's LLM traffic do, through the real path: a worker on the
LiteLLM route without LLM_BACKEND_URL, Tansu, the mock provider on loopback, the sink (issue 20,
points 3 and 5).

A model whose provider LiteLLM would send to an internal address is an `invalid_field` dead
letter and no request leaves; ALLOWED_MODELS takes globs and ALLOWED_PROVIDERS narrows the
providers; LLM_API_KEY reaches only its provider; a dead provider opens only its own breaker;
an unknown endpoint's rejection lists no endpoint, an endpoint's transport error names the
endpoint and not its host; the backend's label and log lines carry no credentials.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from simapp.embedded.stack import http_json, http_text
from tests.helpers import events_for, read_topic, send_events, wait_until
from tests.test_llm_resilience import metric

pytestmark = pytest.mark.slow

OLLAMA_PORT = 11434  # where LiteLLM sends ollama/... by default


class LocalServer:
    """An HTTP server on this machine that records every request it gets (it should get none)."""

    def __init__(self, port: int = 0) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"response": "a local server answered"}')

            do_GET = do_POST = _any  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_servers() -> Iterator[list[LocalServer]]:
    """One on Ollama's default port when it is free (else none there), one on a free port."""
    servers = []
    try:
        servers.append(LocalServer(OLLAMA_PORT))
    except OSError:
        pass
    servers.append(LocalServer())
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


def litellm_worker(workers: Any, **overrides: Any) -> Any:
    """A worker routing by model name through LiteLLM (no LLM_BACKEND_URL)."""
    return workers.start(llm_backend_url="", llm_route="litellm", **overrides)


def dead_letters(stack: Any, ns: Any, count: int) -> dict[str, dict]:
    dead = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], count, timeout=60)
    return {d["simulation_id"]: d for d in dead}


def delivered(stack: Any, ids: set[str]) -> dict[str, dict]:
    return {i["simulation_id"]: i for i in stack.sink_items() if i["simulation_id"] in ids}


def test_events_cannot_send_the_worker_to_local_servers(stack, ns, workers, local_servers):
    local = local_servers[-1]
    workers_env = {
        "lemonade_api_base": f"http://localhost:{local.port}/api/v1",
        "llamafile_api_base": f"http://127.0.0.1:{local.port}/v1",
    }
    if len(local_servers) == 1:  # Ollama's port is taken here: point ollama at ours
        workers_env["ollama_api_base"] = f"http://127.0.0.1:{local.port}"
    worker = litellm_worker(workers, **workers_env)
    events = events_for(stack, 6, max_iterations=2)
    fields = [
        {"model": "ollama/llama3"},
        {"model": "ollama/llama3"},
        {"model": "ollama/llama3"},
        {"assistant": {"model": "lemonade/some-model"}},
        {"user": {"model": "llamafile/some-model"}},
        {"judge": {"criteria": ["It helped"], "model": "ollama_chat/llama3"}},
    ]
    named = ["model", "model", "model", "assistant.model", "user.model", "judge.model"]
    for event, extra in zip(events, fields, strict=True):
        event.update(extra)
    send_events(stack, ns, events)

    dead = dead_letters(stack, ns, len(events))
    assert set(dead) == {e["id"] for e in events}
    for event, field in zip(events, named, strict=True):
        letter = dead[event["id"]]
        assert letter["reason"] == "invalid_field", letter
        assert letter["detail"].startswith(f"{field} "), letter["detail"]
        assert "internal address" in letter["detail"]
    assert all(server.seen == [] for server in local_servers)  # no request left the worker
    assert not delivered(stack, {e["id"] for e in events})  # no summary, no local answer
    assert worker.alive()


def test_allowed_models_globs_and_allowed_providers(stack, ns, workers):
    litellm_worker(
        workers,
        openai_base_url=f"{stack.mock_url}/v1",
        llm_allowed_internal_hosts="127.0.0.1",
        allowed_models="gpt-4o*,hosted_vllm/*",
        allowed_providers="openai",
    )
    good, wrong_name, wrong_provider = events_for(stack, 3, max_iterations=2)
    good["model"] = "gpt-4o-mini"
    wrong_name["model"] = "gpt-4"
    wrong_provider["model"] = "hosted_vllm/gpt-4o"
    send_events(stack, ns, [good, wrong_name, wrong_provider])

    assert wait_until(lambda: delivered(stack, {good["id"]}), 90)
    assert delivered(stack, {good["id"]})[good["id"]]["end_reason"] in {
        "completed",
        "max_iterations",
    }
    dead = dead_letters(stack, ns, 2)
    assert dead[wrong_name["id"]]["reason"] == "unknown_model"
    assert dead[wrong_name["id"]]["detail"] == "model 'gpt-4' is not in ALLOWED_MODELS"
    assert dead[wrong_provider["id"]]["reason"] == "unknown_model"
    assert "provider 'hosted_vllm'" in dead[wrong_provider["id"]]["detail"]
    models = {r["model"] for r in http_json(f"{stack.mock_url}/requests")["requests"]}
    assert models == {"gpt-4o-mini"}


def test_llm_api_key_reaches_only_the_provider_named_for_it(stack, ns, workers):
    """OpenAI (the default LLM_API_KEY_PROVIDER) is the stack's mock; a hosted vLLM is the
    second mock, which wants its own key from HOSTED_VLLM_API_KEY."""
    litellm_worker(
        workers,
        openai_base_url=f"{stack.mock_url}/v1",
        hosted_vllm_api_base=f"{stack.endpoint_url}/v1",
        hosted_vllm_api_key=stack.endpoint_key,
        llm_allowed_internal_hosts="127.0.0.1",
    )
    to_openai, to_vllm = events_for(stack, 2, max_iterations=2)
    to_openai["model"] = "gpt-4o-mini"
    to_vllm["model"] = "hosted_vllm/gpt-4o"
    ids = {to_openai["id"], to_vllm["id"]}
    send_events(stack, ns, [to_openai, to_vllm])

    assert wait_until(lambda: set(delivered(stack, ids)) == ids, 90)
    got = delivered(stack, ids)
    assert {got[i]["end_reason"] for i in ids} <= {"completed", "max_iterations"}, got
    at_openai = http_json(f"{stack.mock_url}/requests")["requests"]
    at_vllm = http_json(f"{stack.endpoint_url}/requests")["requests"]
    assert at_openai and at_vllm
    assert {r["authorization"] for r in at_openai} == {f"Bearer {stack.api_key}"}
    assert {r["authorization"] for r in at_vllm} == {f"Bearer {stack.endpoint_key}"}


def test_a_dead_provider_pauses_only_its_own_conversations(stack, ns, workers):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    try:
        worker = litellm_worker(
            workers,
            openai_base_url=f"{stack.mock_url}/v1",
            hosted_vllm_api_base=f"http://127.0.0.1:{dead.getsockname()[1]}/v1",
            llm_allowed_internal_hosts="127.0.0.1",
            llm_retry_attempts=1,
            breaker_fail_max=5,
            breaker_reset_timeout=600,  # far beyond the test: an open breaker never probes
        )
        broken = events_for(stack, 5, max_iterations=2)
        for event in broken:
            event["model"] = "hosted_vllm/gpt-4o"
        send_events(stack, ns, broken)
        assert wait_until(lambda: metric(worker, "circuit_breaker_state") == 2, 60), (
            "the dead provider's breaker did not open"
        )

        healthy = events_for(stack, 5, max_iterations=2)
        for event in healthy:
            event["model"] = "gpt-4o-mini"
        ids = {e["id"] for e in healthy}
        send_events(stack, ns, healthy)
        assert wait_until(lambda: set(delivered(stack, ids)) == ids, 60), (
            "conversations on another provider waited for the dead one's breaker"
        )
        assert {i["end_reason"] for i in delivered(stack, ids).values()} <= {
            "completed",
            "max_iterations",
        }
        assert metric(worker, "circuit_breaker_state", backend="provider:hosted_vllm") == 2
        assert metric(worker, "circuit_breaker_state", backend="provider:openai") == 0
    finally:
        dead.close()


def test_endpoint_names_and_hosts_stay_out_of_what_events_get(stack, ns, workers):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    try:
        endpoints = {
            "dead-bot": {"base_url": f"http://127.0.0.1:{port}/v1", "rps": 50},
            "secret-partner-bot": {"base_url": f"{stack.endpoint_url}/v1", "rps": 50},
        }
        workers.start(assistant_endpoints=json.dumps(endpoints), llm_retry_attempts=0)
        to_dead, unknown = events_for(stack, 2, max_iterations=2)
        to_dead["assistant"] = {"endpoint": "dead-bot"}
        unknown["assistant"] = {"endpoint": "no-such-bot"}
        send_events(stack, ns, [to_dead, unknown])

        assert wait_until(lambda: delivered(stack, {to_dead["id"]}), 60)
        summary = delivered(stack, {to_dead["id"]})[to_dead["id"]]
        assert summary["end_reason"] == "llm_unavailable"
        assert "endpoint 'dead-bot'" in summary["error"], summary["error"]
        assert "127.0.0.1" not in summary["error"] and str(port) not in summary["error"]

        (letter,) = read_topic(stack.bootstrap, ns.overrides()["dlq_topic"], 1)
        assert letter["reason"] == "invalid_field" and "no-such-bot" in letter["detail"]
        assert "dead-bot" not in letter["detail"] and "secret-partner" not in letter["detail"]
    finally:
        closed.close()


def test_backend_credentials_are_no_label_and_no_log_field(stack, ns, workers):
    port = stack.mock_url.rsplit(":", 1)[1]
    http_json(f"{stack.mock_url}/admin/config", {"api_key": None, "error_rate": 1.0})
    worker = workers.start(
        llm_backend_url=f"http://simapp:s3cret-pw@127.0.0.1:{port}/v1",
        llm_api_key="",
        llm_retry_attempts=1,
        breaker_fail_max=2,
    )
    events = events_for(stack, 2, max_iterations=2)
    send_events(stack, ns, events)
    origin = f"http://127.0.0.1:{port}"
    assert wait_until(lambda: metric(worker, "circuit_breaker_state", backend=origin) == 2, 60)
    text = http_text(f"http://127.0.0.1:{worker.port}/metrics")
    assert "s3cret-pw" not in text
    assert wait_until(lambda: f"breaker {origin} opened" in worker.log_path.read_text(), 30)
    assert "s3cret-pw" not in worker.log_path.read_text()
