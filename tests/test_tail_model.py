"""The tail model (simapp/lab/tail_model.py) the issue 23 figures in docs/benchmarks.md come
from: pure logic, seeded, so it is checked by orders, not times."""

from __future__ import annotations

import random
import re
import subprocess
import sys

from simapp.lab.tail_model import Rules, catalogue, latency_sampler, run


def burst(rules: Rules, seed: int = 0) -> tuple[float, float, float]:
    rng = random.Random(seed)
    sample = latency_sampler(rng, 3.0, 2.0, "uniform")
    return run(rules, 47.5, sample, 3.0, catalogue(rng, 600))


def test_every_call_is_made_and_no_burst_beats_its_floor():
    ratio, floor, longest = burst(Rules())
    assert ratio >= 1.0 and floor > 0 and longest > 0


def test_knowing_each_conversations_length_shortens_the_tail():
    base = burst(Rules())[0]
    known = burst(Rules(lrpt=True, priority="known", end_kappa=2.0))[0]
    assert known < base


def test_the_command_docs_benchmarks_shows_runs_and_refuses_an_unknown_rule():
    """`python -m simapp.lab.tail_model ...` as docs/benchmarks.md gives it (one seed)."""
    command = [sys.executable, "-m", "simapp.lab.tail_model", "--latency-ms", "8000",
               "--jitter-ms", "4000", "--latency-dist", "lognormal", "--lrpt",
               "--priority", "known", "--end-kappa", "2", "--seeds", "1"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    line = r"seed 0: wall/floor \d\.\d{3} \(floor [\d.]+ s\), longest conversation \d+ s\n"
    assert re.fullmatch(line, done.stdout), done.stdout
    command[command.index("known")] = "oracle"
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2 and "invalid choice: 'oracle'" in refused.stderr
