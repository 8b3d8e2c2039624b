"""Every command the README shows, run as a user types it, from a fresh directory, with only
the variables the README tells a user to set (the environment is rebuilt, not inherited).

The worker command once failed from a fresh clone while every other test passed, because each
of them set a variable a user never sets (WORKER_DATADIR). `make test` is what runs this file;
`make up`/`make down` need a docker engine, which these machines do not have
(tests/test_deployment.py checks the compose files instead).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from simapp.embedded.processes import ManagedProcess, free_port, spawn, wait_for_port
from simapp.embedded.stack import EmbeddedStack, http_text
from tests.helpers import events_for, read_topic, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def user_env(**variables: Any) -> dict[str, str]:
    """What a user's shell has: PATH with the venv (as after `make install` and activating
    it), HOME, and the variables they set; nothing of the test process's environment."""
    env = {
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
    }
    env.update({k: str(v) for k, v in variables.items()})
    return env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_worker(argv: list[str], cwd: Path, env: dict[str, str], name: str) -> ManagedProcess:
    return spawn(name, argv, log_dir=cwd / "logs", env=env, cwd=str(cwd), inherit_env=False)


def test_worker_command_from_a_fresh_directory(stack: EmbeddedStack, tmp_path: Path) -> None:
    """`faust -A simapp worker -l info` with only KAFKA_BOOTSTRAP_SERVERS (and METRICS_PORT,
    to keep off ports other processes use): it starts, creates Faust's default data
    directory in the working directory and serves /metrics."""
    port = free_port()
    env = user_env(KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap, METRICS_PORT=port)
    worker = start_worker(["faust", "-A", "simapp", "worker", "-l", "info"], tmp_path, env, "w")
    try:
        wait_for_port("127.0.0.1", port, timeout=90, proc=worker.proc)
        text = wait_until(lambda: _metrics_or_none(port), 30)
        assert text and "conversations_active" in text
        assert (tmp_path / "simulation-consumer-group-data").is_dir()
    finally:
        code = worker.stop(timeout=30)
    log = worker.log_path.read_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_faust_datadir_web_port_and_json_logs(stack: EmbeddedStack, tmp_path: Path) -> None:
    """Faust's own options work (`faust -A simapp --datadir D worker --web-port P`), and with
    LOG_FORMAT=json every line the worker prints is a JSON object, the first one included."""
    port = free_port()
    env = user_env(KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap, LOG_FORMAT="json")
    argv = ["faust", "-A", "simapp", "--datadir", "state/w1", "worker", "--web-port", str(port)]
    worker = start_worker(argv, tmp_path, env, "w")
    try:
        wait_for_port("127.0.0.1", port, timeout=90, proc=worker.proc)
        assert wait_until(lambda: _metrics_or_none(port), 30)
        assert (tmp_path / "state" / "w1").is_dir()
    finally:
        worker.stop(timeout=30)
    lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
    assert len(lines) > 5
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"not a JSON line: {line[:200]!r}")
    assert parsed[0]["msg"] == "worker starting"
    assert parsed[0]["banner"]["datadir"].endswith("state/w1")
    assert parsed[0]["banner"]["web"].endswith(f":{port}")


def test_submit_follow_and_progress(
    stack: EmbeddedStack, workers: Any, ns: Any, tmp_path: Path
) -> None:
    """`faust -A simapp submit FILE.jsonl --follow` sends a validated file as one batch and
    reports it delivered; `faust -A simapp progress --batch-id B` prints it done; a file with a
    bad line is refused whole (exit 2, nothing sent)."""
    worker = workers.start()
    topics = ns.overrides()
    env = user_env(
        KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap,
        KAFKA_TOPIC=topics["kafka_topic"],
        KAFKA_PARTITIONS=stack.partitions,
        CALLBACK_ALLOWED_HOSTS="127.0.0.1",
    )
    web = f"http://127.0.0.1:{worker.port}"
    events = [
        {k: v for k, v in e.items() if k not in ("batch_id", "batch_size")}
        for e in events_for(stack, 6)
    ]
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps(e) + "\n" for e in events))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(events[0]) + "\n{not json\n")

    refused = run(["faust", "-A", "simapp", "submit", str(bad)], tmp_path, env, 120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "line 2: not_json" in refused.stderr and "nothing was sent" in refused.stderr

    estimated = run(
        ["faust", "-A", "simapp", "submit", str(good), "--estimate"], tmp_path, env, 120
    )
    assert estimated.returncode == 0, estimated.stdout + estimated.stderr
    assert "estimate for 6 events (nothing was sent)" in estimated.stdout
    assert "LLM calls:" in estimated.stdout and "time at the budget:" in estimated.stdout
    assert read_topic(stack.bootstrap, topics["kafka_topic"], 1, timeout=3) == []

    cmd = ["faust", "-A", "simapp", "submit", str(good), "--batch-id", "readme-batch", "--follow",
           "--web-url", web, "--timeout", "180"]  # fmt: skip
    sent = run(cmd, tmp_path, env, 240)
    assert sent.returncode == 0, sent.stdout[-3000:] + sent.stderr[-3000:]
    assert "sent 6 events, batch readme-batch" in sent.stdout
    assert "RESULT: OK, every simulation delivered" in sent.stdout
    ids = {e["id"] for e in events}
    assert ids <= {item["simulation_id"] for item in stack.sink_items()}

    shown = run(
        ["faust", "-A", "simapp", "progress", "--batch-id", "readme-batch", "--web-url", web],
        tmp_path,
        env,
        120,
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    row = next(line for line in shown.stdout.splitlines() if line.startswith("readme-batch"))
    assert row.split()[1:4] == ["6", "6", "0"]  # completed, total, failed
    assert row.split()[-1] == "done"


def test_make_run(tmp_path: Path) -> None:
    """`make run` (a small burst): the embedded stack, a report, exit 0 when all delivered."""
    proc = run(["make", "run", "COUNT=12"], REPO, user_env(), 400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT: OK, every event delivered" in proc.stdout
    assert "missing: 0" in proc.stdout.replace("  ", "")
    # it ends with the batch report a user gets, from a worker, with the personas' names
    assert "the batch report (faust -A simapp report batch-" in proc.stdout
    assert "12/12 finished" in proc.stdout and "judge:" in proc.stdout
    assert "by persona:" in proc.stdout and "persona 1" not in proc.stdout


def test_make_loadtest_without_a_broker(tmp_path: Path) -> None:
    """`make loadtest` = `faust -A simapp loadtest --count N --follow` with no broker
    configured: it runs an embedded session, follows progress and reports."""
    proc = run(["make", "loadtest", "COUNT=12"], REPO, user_env(), 400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RESULT: OK, every simulation delivered" in proc.stdout
    assert "stopping the embedded stack" in proc.stdout


def _metrics_or_none(port: int) -> str | None:
    try:
        return http_text(f"http://127.0.0.1:{port}/metrics", timeout=5)
    except OSError:
        time.sleep(0.5)
        return None
