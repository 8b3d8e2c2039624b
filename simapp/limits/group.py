"""A group budget that holds for any layout: whole requests per 1 s window, per member.

LLM_GLOBAL_RATE_LIMIT_RPS is the whole consumer group's limit, and so is every
ASSISTANT_ENDPOINTS `rps` (and LLM_MODEL_RATE_LIMITS under a global limit). Fractional shares
cannot split it: a worker paced at rps x owned/total partitions still fits ceil(that) requests
into some 1 s window, and the ceilings add up past the limit (8 workers at 10/s: 1.25/s each,
2 per window, 16 in all; the provider saw 12 in one second). So the limit is handed out in
units, U = floor(rps) requests per 1 s window (1 below 1/s; `budgets.group_units`), and each
worker holds a whole number of them (`Budget.set_units`; it paces at units x min(1, rps) x
(1 - LLM_RATE_SAFETY_MARGIN) and never lets more than its units into a 1 s window of its
clock, grants and writes alike).

The rule. Faust's assignor sends every member the whole assignment (member URL -> partitions,
`app.router.external_topics_metadata()`). The members owning partitions of the simulation
topic, ordered by their lowest partition, are m_0..m_{N-1}, with p_i partitions each; every
member computes the same order from the same message (`Layout`).

- U >= N: m_i holds a_i >= 1 units, sum a_i = U: one each, then one at a time to the member
  with the most partitions per unit (largest p_i / a_i, ties to the lower i; `split`). That
  is the split with the smallest max p_i / a_i, the time a burst spread evenly over the
  partitions takes. 10/s over 8 workers of one partition: 2, 2, 1, 1, 1, 1, 1, 1; over 5
  workers owning 2, 2, 2, 1, 1 partitions: 3, 3, 2, 1, 1.
- U < N (fewer requests per second than workers): the units rotate. In epoch k (ROTATION_EPOCH
  seconds of wall-clock time) m_i holds one unit when (i - kU) mod N < U, else none: every
  member holds one in U epochs of every N, so none starves.
- A member without partitions of the topic holds none (it has no events).

The bound: in any 1 s window the group's requests to a limit are at most U (U <= rps; below
1/s, one, paced at rps), for any number of workers, any partition split, limit or margin, and
any alignment of the workers' windows:

1. While the assignment and the epoch stay, sum a_i = U (each rotating holder has 1), and each
   member lets at most a_i into any 1 s window of its own (its scheduler and send gate; the
   margin absorbs the jitter to the provider's clock, budgets.py), so any window, wherever it
   starts, holds at most U. No clock is shared.
2. Units change hands with a gap. A member gives units up at once: all of them on a revoke,
   the rotated ones at the epoch boundary. It takes units only HANDOFF_HOLD = 1 s +
   HANDOFF_GUARD after what freed them: its assignment (Kafka's eager rebalance runs every
   member's revoke before the group's next assignment reaches any member, so every earlier
   grant is older), or the epoch boundary. No 1 s window holds grants of an old holder and a
   new one, so every window sees one layout, and (1) applies to it.

What (2) assumes: HANDOFF_GUARD covers, together, a write's delay after its grant (the send
gate keeps its rules at 0 units, so held writes leave as before), a late timer at an epoch
boundary, and, for rotation only, how far the members' wall clocks disagree. A member cut off
from the broker longer than its session timeout but still reaching the provider (Kafka's
zombie, which can process a partition twice as well) keeps its units until it learns of the
rebalance.

When the assignment cannot be read (two members advertise the same URL, WEB_HOST:METRICS_PORT,
so one hides the other; KAFKA_PARTITIONS disagrees with the topic), every member sees the same
defect and falls back to the local rule, floor(share x U) (`budgets.local_units`): also within
U in any layout, but it drops remainders and a share below 1/U gets nothing until the next
rebalance (logged at WARNING). Tokens per minute are split by the fractional share
owned / total partitions, which sums to 1 at most: a sum of tokens has no rounding problem.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from simapp.limits.budgets import Budget, RateLimits, local_units

logger = logging.getLogger(__name__)

HANDOFF_GUARD = 0.25  # write delay after a grant, clock disagreement between members (rotation)
HANDOFF_HOLD = 1.0 + HANDOFF_GUARD  # a unit is taken this long after it was freed
ROTATION_EPOCH = 10.0  # seconds a rotating unit stays with one member


@functools.lru_cache(maxsize=256)
def split(units: int, owned: tuple[int, ...]) -> tuple[int, ...]:
    """Units per member, `units` >= members, every member owning >= 1 partition: one each,
    then one at a time to the largest partitions per unit (ties: the lower index)."""
    if units < len(owned) or any(p < 1 for p in owned):
        raise ValueError(f"cannot split {units} units over {owned}")
    held = [1] * len(owned)
    heap = [(-Fraction(p, 1), i) for i, p in enumerate(owned)]
    heapq.heapify(heap)
    for _ in range(units - len(owned)):
        _, i = heapq.heappop(heap)
        held[i] += 1
        heapq.heappush(heap, (-Fraction(owned[i], held[i]), i))
    return tuple(held)


def rotating_holder(member: int, members: int, units: int, epoch: int) -> bool:
    """With fewer units than members: does `member` hold one in `epoch`?"""
    return (member - epoch * units) % members < units


@dataclass(frozen=True)
class Layout:
    """The group's assignment of the simulation topic, as every member reads it."""

    owned: tuple[int, ...]  # partitions of each member owning any, by lowest partition
    me: int | None  # this worker's position in `owned`; None: it owns none

    def units(self, group_units: int, epoch: int) -> int:
        """This worker's units of a limit of `group_units` in `epoch`."""
        if self.me is None:
            return 0
        members = len(self.owned)
        if group_units >= members:
            return split(group_units, self.owned)[self.me]
        return 1 if rotating_holder(self.me, members, group_units, epoch) else 0

    def rotates(self, group_units: int) -> bool:
        return group_units < len(self.owned)


def read_layout(
    distribution: Mapping[str, Mapping[str, Sequence[int]]],
    topic: str,
    me: str,
    mine: Iterable[int],
    partitions: int,
) -> Layout | None:
    """The layout from Faust's assignment (member URL -> topic -> partitions), or None when it
    is not a partition of 0..partitions-1 among the members: a defect every member sees alike
    (colliding URLs hide a member; a wrong KAFKA_PARTITIONS). When this worker's own entry is
    not what its consumer was given (never seen: Faust asserts both), it holds nothing."""
    members = sorted(
        (sorted(topics.get(topic, ())), url)
        for url, topics in distribution.items()
        if topics.get(topic)
    )
    listed = sorted(p for parts, _ in members for p in parts)
    if listed != list(range(partitions)):
        return None
    urls = [url for _, url in members]
    position = urls.index(me) if me in urls else None
    own = members[position][0] if position is not None else []
    if own != sorted(mine):
        logger.error("the assignment gives %s partitions %s, its consumer %s", me, own, mine)
        position = None
    return Layout(tuple(len(parts) for parts, _ in members), position)


class GroupAllotment:
    """Keeps one worker's part of the group budgets (module docstring) across rebalances and
    rotation epochs: units given up at once, taken HANDOFF_HOLD after they were freed. Use
    from the event loop's thread."""

    def __init__(
        self,
        limits: RateLimits,
        on_change: Callable[[], None] | None = None,
        *,
        hold: float = HANDOFF_HOLD,
        epoch: float = ROTATION_EPOCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.on_change = on_change
        self.hold = hold
        self.epoch = epoch
        self._clock = clock  # wall clock: the epochs of every member
        self.layout: Layout | None = None
        self.rule = "none"  # group, local (the assignment could not be read) or none
        self._share = 0.0
        self._gain_at = math.inf  # loop time from which units may be taken
        self._timers: list[asyncio.TimerHandle] = []
        self._announced = False  # the allotment after the hold was logged at INFO

    def revoke(self) -> None:
        """Partitions are moving: hold nothing until the next assignment."""
        self._cancel()
        self.layout, self.rule, self._share, self._gain_at = None, "none", 0.0, math.inf
        self.limits.allot({}, 0.0)
        self._changed("rate budget allotment: none until the next assignment (rebalance)")

    def assign(self, layout: Layout | None, share: float) -> None:
        """A new assignment: `layout` None for the local rule, `share` = owned / total."""
        self.layout, self._share = layout, share
        self.rule = "group" if layout is not None else "local"
        self._gain_at = asyncio.get_running_loop().time() + self.hold
        self._announced = False
        self._step()

    def targets(self, epoch: int) -> dict[Budget, int]:
        """The units of every group budget in `epoch`, once the hold is over."""
        budgets = self.limits.shared()
        if self.rule == "local":
            return {b: local_units(b.rps, self._share) for b in budgets}
        if self.layout is None:
            return {}
        return {b: self.layout.units(b.group_units, epoch) for b in budgets}

    def _step(self, epoch: int | None = None) -> None:
        """Apply what may be held now; arm the end of the hold and the next epoch."""
        self._cancel()
        loop = asyncio.get_running_loop()
        now, wall = loop.time(), self._clock()
        epoch = max(epoch or 0, math.floor(wall / self.epoch))
        wanted = self.targets(epoch)
        taking = now >= self._gain_at
        units = {b: n if taking else min(n, b.units) for b, n in wanted.items()}
        share = self._share if taking else min(self._share, self.limits.share)
        self.limits.allot(units, share)
        if taking and not self._announced:
            self._announced = True
            self._changed(self._describe(logging.INFO))
        else:
            self._changed(self._describe(logging.DEBUG))
        if not taking:
            self._timers.append(loop.call_at(self._gain_at, self._step))
        if self.layout is not None and any(self.layout.rotates(b.group_units) for b in wanted):
            boundary = (epoch + 1) * self.epoch
            self._timers.append(
                loop.call_at(now + boundary - wall, self._on_epoch, epoch + 1, boundary)
            )

    def _on_epoch(self, epoch: int, boundary: float) -> None:
        """An epoch boundary: the rotated units are given up now and taken after the hold,
        counted from the boundary on the wall clock (not from a timer that fired late)."""
        loop = asyncio.get_running_loop()
        taken_at = loop.time() + boundary + self.hold - self._clock()
        self._gain_at = max(self._gain_at, taken_at)
        self._step(epoch)

    def _describe(self, level: int) -> tuple[int, str]:
        held = ", ".join(f"{b.name} {b.units}/{b.group_units}" for b in self.limits.shared())
        return level, (
            f"rate budget allotment: {held or 'no group budget'} per 1 s window; "
            f"tokens x {self.limits.share:.4f} (rule: {self.rule})"
        )

    def _changed(self, message: str | tuple[int, str]) -> None:
        level, text = message if isinstance(message, tuple) else (logging.INFO, message)
        logger.log(level, "%s", text)
        if self.on_change is not None:
            self.on_change()

    def _cancel(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
