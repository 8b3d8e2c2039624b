"""Child processes of the embedded stack: free loopback ports, start, wait ready, stop by PID.

Stopping is SIGTERM, then SIGKILL after a timeout (Tansu can linger), always by the PID we
started, so nothing else on the machine is touched.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None
) -> None:
    """Block until a TCP connect succeeds (used before any event loop runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before ready")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} not ready after {timeout}s")


@dataclass
class ManagedProcess:
    """A started child: its name, Popen handle and log file."""

    name: str
    proc: subprocess.Popen
    log_path: Path | None = None
    port: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL. Returns the exit code."""
        if self.alive():
            try:
                self.proc.send_signal(signal.SIGTERM)
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    inherit_env: bool = True,
) -> ManagedProcess:
    """Start a child with stdout+stderr to `log_dir/name.log`, in its own process group;
    its environment is ours plus `env`, or `env` alone without `inherit_env`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
    proc = subprocess.Popen(
        list(argv),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**(os.environ if inherit_env else {}), **(env or {})},
        cwd=cwd,
        start_new_session=True,
    )
    log_file.close()
    return ManagedProcess(name=name, proc=proc, log_path=log_path)
