"""How many conversations a worker runs at once: as many as keep its budgets full.

Little's law: to keep a budget at R calls/s when a call's cycle (the provider's latency plus
our own work between a conversation's calls) takes C seconds, about R x C calls must be in
flight, and a conversation has at most one. So the target is HEADROOM x X x C conversations,
capped by CONCURRENT_CONVERSATIONS (the ceiling), where X is the call rate the budgets allow
for this worker's mix of calls: min over backends of R_b / p_b, p_b the share of recent calls
that went to backend b (an endpoint with a small budget holds the whole mix back). C and p_b
come from the last WINDOW calls; before any call, C is LLM_EXPECTED_LATENCY and X the default
backend's rate, and until WARMUP_CALLS calls are measured C is at least the age of the oldest
call in flight (a provider slower than expected is seen before its first answer). A model
ceiling (LLM_MODEL_RATE_LIMITS) counts as a budget of its own. Time spent waiting for a
budget, the breaker or a retry is not part of C: it would grow the target exactly when the
budget is the bottleneck.

A conversation takes a slot before its first LLM call and gives it back after its last (the
judge included; the summary's delivery is not). Events past the target wait at the door
holding only their Kafka event, so a started conversation runs at full speed and its
CONVERSATION_TIMEOUT counts from the door, not from the queue. The door lets the longest
conversations (the most iterations to go) in first: the last conversation to start decides
when a burst ends, and a short one ends soonest (measured: docs/benchmarks.md, issue 23).
When Faust stops the flow of events (a rebalance or a shutdown), the door closes: waiting
events are handed back unstarted (`enter` returns False), so revoked partitions are not held
up by work that never began.

Why the target is what it is (`reason`): `budget` — the target's conversations fill the
budgets and more would only queue behind them; `latency` — fewer events than the target are
at hand, so each conversation's pace is its calls' latency (the tail of a burst, a trickle);
`ceiling` — Little's law asks for more than CONCURRENT_CONVERSATIONS.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass

from simapp.limits.budgets import Budget, RateLimits

HEADROOM = 1.15  # conversations beyond R x C: calls' cycles vary, the budget must not idle
WINDOW = 512  # calls whose cycle and backend the target is measured on
WARMUP_CALLS = 64  # until this many calls are measured, an older call in flight says more
BUDGET = "budget"
LATENCY = "latency"
CEILING = "ceiling"
REASONS = (BUDGET, LATENCY, CEILING)


@dataclass(slots=True)
class _Conversation:
    """The running conversation's clock: when its last call ended (or it entered)."""

    last: float


_current: ContextVar[_Conversation | None] = ContextVar("simapp_conversation", default=None)


class ConversationSlots:
    """The door conversations pass before their first LLM call; one per worker."""

    def __init__(
        self,
        limits: RateLimits,
        ceiling: int,
        *,
        initial_cycle: float,
        headroom: float = HEADROOM,
        window: int = WINDOW,
    ) -> None:
        if ceiling < 1:
            raise ValueError(f"ceiling must be >= 1, got {ceiling}")
        self.limits = limits
        self.ceiling = ceiling
        self.initial_cycle = initial_cycle
        self.headroom = headroom
        self.running = 0
        self.target = 1
        self._wanted = 1  # Little's law's answer before the ceiling
        self._cycles: deque[float] = deque(maxlen=window)
        self._cycle_sum = 0.0
        self._calls: deque[Sequence[Budget]] = deque(maxlen=window)  # each call's budgets
        self._budget_calls: Counter[Budget] = Counter()
        # (-priority, arrival, future): the longest conversations first, then FIFO
        self._waiters: list[tuple[int, int, asyncio.Future[bool]]] = []
        self._arrivals = 0
        self.waiting = 0  # live waiters (cancelled ones leave the heap lazily)
        self._in_flight: OrderedDict[object, float] = OrderedDict()  # call -> when sent
        self._open = True
        self.recompute()

    # -- the door ------------------------------------------------------------------------

    async def enter(self, priority: int = 0) -> bool:
        """Wait for a slot; False when the flow of events stopped (give the event back).
        Waiters with a higher `priority` (a conversation's iterations to go) go first: the
        longest conversations start first, so the last one to start ends sooner and a
        burst's tail is shorter (longest-processing-time-first; FIFO among equals)."""
        if not self._open:
            return False
        if self.running < self.target and not self.waiting:
            self._admit()
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._arrivals += 1
        heapq.heappush(self._waiters, (-priority, self._arrivals, waiter))
        self.waiting += 1
        try:
            admitted = await waiter
        except asyncio.CancelledError:
            if not waiter.done() or waiter.cancelled():
                self.waiting -= 1  # still queued: leaves the deque when reached
            elif waiter.result():
                self.running -= 1  # admitted and cancelled in the same step: give it back
                self._wake()
            raise
        if admitted:
            _current.set(_Conversation(time.monotonic()))
        return admitted

    def leave(self) -> None:
        """The conversation's last LLM call is over."""
        self.running -= 1
        _current.set(None)
        self._wake()

    def _admit(self) -> None:
        self.running += 1
        _current.set(_Conversation(time.monotonic()))

    def _wake(self) -> None:
        while self._waiters and self.running < self.target:
            _, _, waiter = heapq.heappop(self._waiters)
            if waiter.done():
                continue
            self.waiting -= 1
            self.running += 1  # its task starts its clock when it resumes (enter)
            waiter.set_result(True)

    def close(self) -> None:
        """Faust stopped the flow (rebalance, shutdown): hand waiting events back."""
        self._open = False
        while self._waiters:
            _, _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                self.waiting -= 1
                waiter.set_result(False)

    def open(self) -> None:
        """Events flow again."""
        self._open = True
        self._wake()

    def on_flow(self, active: bool) -> None:
        """Faust's flow control changed (simapp.kafka.recovery.LedgerFlowControl)."""
        if active:
            self.open()
        else:
            self.close()

    # -- measuring -----------------------------------------------------------------------

    def call_done(
        self, budgets: Sequence[Budget], entered: float, sent: float, done: float
    ) -> None:
        """An LLM call succeeded: the budgets it took, when the caller asked (`entered`), when
        the request that succeeded went out (`sent`), when its answer came (`done`), all
        time.monotonic()."""
        conversation = _current.get()
        if conversation is None:  # a call outside any slot (tests, tools)
            conversation = _Conversation(entered)
            _current.set(conversation)
        cycle = max(0.0, (done - conversation.last) - (sent - entered))
        conversation.last = done
        if len(self._cycles) == self._cycles.maxlen:
            self._cycle_sum -= self._cycles[0]
            for budget in self._calls[0]:
                self._budget_calls[budget] -= 1
        self._cycles.append(cycle)
        self._cycle_sum += cycle
        self._calls.append(budgets)
        for budget in budgets:
            self._budget_calls[budget] += 1
        self.recompute()

    def call_sent(self) -> object:
        """A request went out; the handle goes to `call_ended` whatever its outcome."""
        handle = object()
        self._in_flight[handle] = time.monotonic()
        return handle

    def call_ended(self, handle: object) -> None:
        self._in_flight.pop(handle, None)

    @property
    def cycle(self) -> float:
        """Mean seconds a call takes a conversation, waiting for budgets not counted."""
        measured = self._cycle_sum / len(self._cycles) if self._cycles else self.initial_cycle
        if len(self._cycles) < WARMUP_CALLS and self._in_flight:
            oldest = next(iter(self._in_flight.values()))
            return max(measured, time.monotonic() - oldest)
        return measured

    def call_rate(self) -> float:
        """Calls/s the budgets allow for the recent mix of calls (0 when one is at 0)."""
        total = len(self._calls)
        if not total:
            return self.limits.backend().rate
        return min(
            budget.rate * total / count for budget, count in self._budget_calls.items() if count
        )

    def recompute(self) -> None:
        """The target from the budgets and the measured cycle; wakes waiters it admits."""
        self._wanted = math.ceil(self.headroom * self.call_rate() * self.cycle)
        self.target = max(1, min(self._wanted, self.ceiling))
        self._wake()

    @property
    def reason(self) -> str:
        """What sets the pace now (module docstring)."""
        if self._wanted > self.ceiling:
            return CEILING
        if self.running + self.waiting >= self.target:
            return BUDGET
        return LATENCY
