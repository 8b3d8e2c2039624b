"""What the machine is and what its processes used: the CPU model, package versions, CPU
seconds of a process and of the whole machine, peak RSS, a speed reference.

Both benches put these facts next to their figures, because on a shared VM a figure without
the load and the speed around it cannot be compared with another.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import psutil

BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq")  # not idle, iowait or steal


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(name: str) -> str | None:
    """An installed distribution's version without importing it (LiteLLM takes 2.5 s)."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The `machine` field of a `make bench` result."""
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "litellm": package_version("litellm"),
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None once it is gone."""
    try:
        return process_cpu_seconds(psutil.Process(pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def process_cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process so far, all its threads."""
    times = proc.cpu_times()
    return float(times.user + times.system)


def busy_seconds(times: Any) -> float:
    """Machine-wide busy CPU seconds (all cores) in psutil.cpu_times() (guest time is already
    in user time; steal, the time the hypervisor gave to others, is not in it)."""
    return float(sum(getattr(times, name, 0.0) for name in BUSY_FIELDS))


def system_busy_seconds() -> dict[str, float]:
    """Machine-wide CPU seconds so far: busy (not idle/iowait, steal included) and steal."""
    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    return {"busy": busy_seconds(t) + steal, "steal": steal}


def reference_loop_ms() -> float:
    """Best of 5 of `sum(range(10**6))`, in ms: how fast this machine is right now (a VM's
    speed drifts; docs/benchmarks.md quotes the same loop)."""
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        sum(range(10**6))
        best = min(best, time.perf_counter() - started)
    return best * 1000


class RssSampler(threading.Thread):
    """Samples the RSS of some processes every `interval` s and keeps each one's maximum."""

    def __init__(self, pids: list[int], interval: float = 1.0) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.procs = {pid: psutil.Process(pid) for pid in pids}
        self.peak = dict.fromkeys(pids, 0)
        self.interval = interval
        self.done = threading.Event()

    def sample(self) -> None:
        for pid, proc in self.procs.items():
            try:
                self.peak[pid] = max(self.peak[pid], proc.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue

    def run(self) -> None:
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.join(timeout=5)
        self.sample()
        return dict(self.peak)
