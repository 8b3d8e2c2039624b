"""The embedded default stack: Tansu broker, mock LLM server, callback sink, simapp workers.

Used by `make run`, `make bench`, `faust -A simapp loadtest` without a broker, and the tests.
Every part runs as a child process on a free loopback port and is stopped by its PID.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simapp.embedded.broker import start_tansu
from simapp.embedded.processes import ManagedProcess, free_port, spawn, wait_for_port

HOST = "127.0.0.1"
# The embedded Tansu listens in plaintext: its clients leave out a deployment's Kafka security
# settings from the environment or .env ("" = unset).
PLAINTEXT_KAFKA = {
    "kafka_security_protocol": "PLAINTEXT",
    **{
        f"kafka_{name}": ""
        for name in ("sasl_mechanism", "sasl_username", "sasl_password")
        + ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    },
}


def http_json(
    url: str, data: dict | None = None, timeout: float = 10.0, headers: dict | None = None
) -> Any:
    """Tiny blocking JSON client for the driver side (never used inside a worker loop)."""
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(
        url, data=body, method="POST" if body is not None else "GET", headers=headers or {}
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read() or b"null")


def http_text(url: str, timeout: float = 10.0, headers: dict | None = None) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback only
        return resp.read().decode()


@dataclass
class EmbeddedStack:
    """Start/stop the parts; `worker_env()` is what a worker needs to use them."""

    workdir: Path
    mock_args: list[str] = field(default_factory=list)
    sink_args: list[str] = field(default_factory=list)
    partitions: int = 8
    api_key: str = "sk-embedded-not-secret"
    endpoint: str | None = None  # an assistant endpoint served by a second mock
    endpoint_rps: float = 100.0
    broker: ManagedProcess | None = None
    mock: ManagedProcess | None = None
    endpoint_mock: ManagedProcess | None = None
    sink: ManagedProcess | None = None
    workers: list[ManagedProcess] = field(default_factory=list)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _next_index: int = 0

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return f"{HOST}:{self.broker.port}"

    @property
    def mock_url(self) -> str:
        assert self.mock is not None
        return f"http://{HOST}:{self.mock.port}"

    @property
    def sink_url(self) -> str:
        assert self.sink is not None
        return f"http://{HOST}:{self.sink.port}"

    def start(self) -> EmbeddedStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.broker = start_tansu(self.log_dir)
        self.mock = self._start_py(
            "mock_llm", "simapp.embedded.mock_llm", ["--api-key", self.api_key, *self.mock_args]
        )
        self.sink = self._start_py(
            "sink",
            "simapp.embedded.sink",
            ["--record", str(self.workdir / "sink.jsonl"), *self.sink_args],
        )
        if self.endpoint is not None:
            self.endpoint_mock = self._start_py(
                "endpoint_mock",
                "simapp.embedded.mock_llm",
                ["--api-key", self.endpoint_key, *self.mock_args],
            )
        return self

    @property
    def endpoint_key(self) -> str:
        return f"sk-{self.endpoint}-not-secret"

    @property
    def endpoint_url(self) -> str:
        assert self.endpoint_mock is not None
        return f"http://{HOST}:{self.endpoint_mock.port}"

    def _start_py(self, name: str, module: str, args: list[str]) -> ManagedProcess:
        port = free_port(HOST)
        proc = spawn(
            name,
            [sys.executable, "-m", module, "--host", HOST, "--port", str(port), *args],
            log_dir=self.log_dir,
        )
        proc.port = port
        wait_for_port(HOST, port, timeout=30, proc=proc.proc)
        return proc

    def worker_env(self, index: int, **overrides: Any) -> dict[str, str]:
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "BROKER_PROFILE": "embedded",
            "KAFKA_PARTITIONS": str(self.partitions),
            "KAFKA_CONSUMER_GROUP": f"simapp-{self.run_id}",
            "LLM_BACKEND_URL": f"{self.mock_url}/v1",
            "LLM_API_KEY": self.api_key,
            "CALLBACK_ALLOWED_HOSTS": "127.0.0.1,localhost",
            "WEB_BIND": HOST,
            "WEB_HOST": HOST,
            # open views on loopback, whatever WEB_AUTH_TOKEN .env holds (tests override it)
            "WEB_AUTH_TOKEN": "",
            "WORKER_DATADIR": str(self.workdir / f"worker-{index}"),
            "LOG_FORMAT": "json",
            **{name.upper(): value for name, value in PLAINTEXT_KAFKA.items()},
        }
        if self.endpoint is not None:
            key_env = "SIMAPP_ENDPOINT_KEY"
            env[key_env] = self.endpoint_key
            env["ASSISTANT_ENDPOINTS"] = json.dumps(
                {
                    self.endpoint: {
                        "base_url": f"{self.endpoint_url}/v1",
                        "api_key_env": key_env,
                        "rps": self.endpoint_rps,
                    }
                }
            )
        env.update({k.upper(): str(v) for k, v in overrides.items()})
        return env

    def start_worker(
        self, index: int | None = None, wait: bool = True, **overrides: Any
    ) -> ManagedProcess:
        """Start `faust -A simapp worker` with the stack's settings (+ overrides)."""
        if index is None:  # a fresh index (and datadir) unless a restart asks for its old one
            index = self._next_index
        self._next_index = max(self._next_index, index + 1)
        port = int(overrides.pop("metrics_port", 0)) or free_port(HOST)
        env = self.worker_env(index, metrics_port=port, **overrides)
        proc = spawn(
            f"worker-{index}",
            [sys.executable, "-m", "faust", "-A", "simapp", "worker", "-l", "info"],
            log_dir=self.log_dir,
            env=env,
        )
        proc.port = port
        proc.extra["index"] = index
        proc.extra["env"] = env
        self.workers.append(proc)
        if wait:
            wait_for_port(HOST, port, timeout=60, proc=proc.proc)
        return proc

    def wait_workers_ready(self, timeout: float = 60.0) -> None:
        for worker in self.workers:
            if worker.alive():
                wait_for_port(HOST, worker.port or 0, timeout=timeout, proc=worker.proc)

    def stop_workers(self, timeout: float = 60.0) -> None:
        for worker in self.workers:
            worker.signal(15)
        for worker in self.workers:
            worker.stop(timeout=timeout)

    def stop(self) -> None:
        """Stop everything we started, workers first; SIGKILL what lingers."""
        self.stop_workers(timeout=30)
        for part in (self.endpoint_mock, self.sink, self.mock, self.broker):
            if part is not None:
                part.stop(timeout=5)

    # ----- observation helpers ----------------------------------------------------------
    def sink_received(self) -> dict:
        return http_json(f"{self.sink_url}/received?limit=0")

    def sink_ids(self) -> list[str]:
        return http_json(f"{self.sink_url}/received?ids=1")["ids"]

    def sink_items(self, page: int = 1000) -> list[dict]:
        items: list[dict] = []
        while True:
            chunk = http_json(f"{self.sink_url}/received?limit={page}&offset={len(items)}")["items"]
            items.extend(chunk)
            if len(chunk) < page:
                return items

    def mock_stats(self) -> dict:
        return http_json(f"{self.mock_url}/stats")

    def wait_for(self, predicate: Any, timeout: float, interval: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return bool(predicate())

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
