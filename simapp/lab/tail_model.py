"""A discrete-event model of one worker's burst: how much of a burst's tail a scheduling rule
can win back, without running the stack (issue 23, docs/benchmarks.md).

The model is what simapp does, stripped to time: N conversations of the load-test catalogue's
lengths (the mock's user closes after 1-4 answers, capped by `max_iterations` 2-10; a judge
call on half of them), one call at a time each, every call waiting for a budget of R calls/s
(granted in order) and then taking a latency drawn from the bench's distribution. The door
admits the longest `max_iterations` first while fewer than HEADROOM x R x latency run (the
slots' target). Rules to compare:

- `--lrpt`: the budget serves the caller with the most calls to go first (`--priority known`:
  the true count, which no worker knows; `bound`: 2 x max_iterations - calls made, what a
  worker could know);
- `--end-kappa K`: the door lets everyone in once its remaining calls drain at R within K x
  the mean conversation's length in time (the end of a burst).

It prints wall / paced floor (calls / R) per seed. `python -m simapp.lab.tail_model --latency-ms
8000 --jitter-ms 4000 --latency-dist lognormal --lrpt --priority known --end-kappa 2`.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from simapp.embedded.mock_llm import lognormal_params

MEAN_CALLS = 4.5  # the catalogue's mean calls per conversation (make bench: 4.46)


@dataclass
class Conversation:
    calls_left: int
    max_iterations: int
    calls_made: int = 0
    admitted_at: float = 0.0


@dataclass(frozen=True)
class Rules:
    headroom: float = 1.15
    lrpt: bool = False
    priority: str = "bound"  # or "known"
    end_kappa: float = 0.0  # 0 = the door's target only


def latency_sampler(rng: random.Random, mean: float, sd: float, dist: str) -> Callable[[], float]:
    """Seconds per call, as the mock draws them (uniform mean ± sd, or log-normal)."""
    if dist == "lognormal":
        mu, sigma = lognormal_params(mean, sd)  # the mock's own (unit-free) parameters
        return lambda: rng.lognormvariate(mu, sigma)
    return lambda: rng.uniform(max(0.0, mean - sd), mean + sd)


def catalogue(rng: random.Random, n: int) -> list[Conversation]:
    out = []
    for _ in range(n):
        answers, cap = rng.randint(1, 4), rng.randint(2, 10)
        calls = 2 * min(answers, cap) - 1 + (1 if rng.random() < 0.5 else 0)
        out.append(Conversation(max(1, calls), cap))
    return out


def run(rules: Rules, rate: float, latency: Callable[[], float], mean_latency: float,
        convs: list[Conversation]) -> tuple[float, float, float]:  # fmt: skip
    """(wall / floor, floor s, longest conversation s from the door) of one burst."""
    floor = sum(c.calls_left for c in convs) / rate
    door = sorted(range(len(convs)), key=lambda i: -convs[i].max_iterations)
    target = math.ceil(rules.headroom * rate * mean_latency)
    events: list[tuple[float, int, int, int]] = []  # (time, seq, kind 0=tick 1=done, conv)
    queue: list[tuple[int, int, int]] = []  # (key, seq, conv)
    state = {"seq": 0, "running": 0, "next": 0.0, "end": 0.0, "longest": 0.0}
    state["tick"] = math.inf  # the earliest tick already scheduled: one is enough

    def push_call(i: int) -> None:
        state["seq"] += 1
        c = convs[i]
        to_go = c.calls_left if rules.priority == "known" else 2 * c.max_iterations - c.calls_made
        heapq.heappush(queue, (-to_go if rules.lrpt else 0, state["seq"], i))

    def admit(now: float) -> None:
        while door:
            door_calls = sum(convs[i].calls_left for i in door)
            at_end = rules.end_kappa and door_calls / rate <= rules.end_kappa * (
                MEAN_CALLS * mean_latency
            )
            if state["running"] >= target and not at_end:
                return
            i = door.pop(0)
            state["running"] += 1
            convs[i].admitted_at = now
            push_call(i)

    def grant(now: float) -> None:
        if state["next"] < now - 0.5:
            state["next"] = now  # idle: the grid restarts, no catch-up
        while queue and state["next"] <= now:
            _, _, i = heapq.heappop(queue)
            state["next"] += 1.0 / rate
            state["seq"] += 1
            heapq.heappush(events, (now + latency(), state["seq"], 1, i))
        at = max(state["next"], now)
        if queue and at < state["tick"]:
            state["seq"] += 1
            state["tick"] = at
            heapq.heappush(events, (at, state["seq"], 0, -1))

    admit(0.0)
    grant(0.0)
    while events:
        now, _, kind, i = heapq.heappop(events)
        if kind == 0 and now >= state["tick"]:
            state["tick"] = math.inf
        if kind == 1:
            c = convs[i]
            c.calls_left -= 1
            c.calls_made += 1
            if c.calls_left == 0:
                state["running"] -= 1
                state["end"] = now
                state["longest"] = max(state["longest"], now - c.admitted_at)
                admit(now)
            else:
                push_call(i)
        grant(now)
    return state["end"] / floor, floor, state["longest"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1500, help="conversations (one worker)")
    p.add_argument("--rps", type=float, default=47.5, help="the worker's paced budget")
    p.add_argument("--latency-ms", type=float, default=3000)
    p.add_argument("--jitter-ms", type=float, default=2000)
    p.add_argument("--latency-dist", choices=("uniform", "lognormal"), default="uniform")
    p.add_argument("--headroom", type=float, default=1.15)
    p.add_argument("--lrpt", action="store_true")
    p.add_argument("--priority", choices=("bound", "known"), default="bound")
    p.add_argument("--end-kappa", type=float, default=0.0)
    p.add_argument("--seeds", type=int, default=4)
    args = p.parse_args()
    rules = Rules(args.headroom, args.lrpt, args.priority, args.end_kappa)
    mean, sd = args.latency_ms / 1000, args.jitter_ms / 1000
    for seed in range(args.seeds):
        rng = random.Random(seed)
        sample = latency_sampler(rng, mean, sd, args.latency_dist)
        ratio, floor, longest = run(rules, args.rps, sample, mean, catalogue(rng, args.count))
        print(f"seed {seed}: wall/floor {ratio:.3f} (floor {floor:.1f} s), "
              f"longest conversation {longest:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
