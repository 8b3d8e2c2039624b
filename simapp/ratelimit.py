"""Per-model request pacing (RPS) and token budgets (TPM) for one worker.

Why not ``aiolimiter``: ``AsyncLimiter(R, 1.0)`` starts with a full bucket and refills while it
drains, so a strict sliding-window meter can see up to 2R requests in one second. The smooth
shape ``AsyncLimiter(1, 1/R)`` is burst-free and was FIFO with 300 waiters here, but it times
each release from the previous actual one, so millisecond timer lateness is lost every time
(measured: 46.6/s at R=49, 185/s at R=200, 833/s at R=1000); and its rate cannot be changed
while tasks wait, nor can it pause. We need ``set_share``, 429 pauses and the full rate, so each
model gets a tiny exact scheduler instead (measured: 48.9/s, 199/s, 973/s at those rates):

* waiters queue FIFO in a deque, each on its own future (no polling, no busy loop);
* one ``loop.call_at`` timer per model releases the head of the queue when it is ready --
  computed *at release time*, so a new share, a pause or freed tokens apply at once to waiters
  already queued, without a burst;
* ``acquire`` is O(1): a future, a deque append and at most one timer (a few microseconds); an
  idle model with budget grants synchronously without a timer.

When a request is ready (all must hold):

1. Smooth grid: slots are ``1/rate`` apart. A grant up to ``GRID_SLACK`` (50 ms) after its
   slot keeps the grid, so timer lateness on a busy event loop does not cost throughput (with
   2 ms, a worker at 67 % of a core lost half its budget: the bench of 2026-11-27); a later
   grant (idle, pause, stalled loop) restarts the grid at that grant, so there is never a
   catch-up burst larger than ``GRID_SLACK * rate`` requests, and rule 2 still holds.
2. The bound, enforced exactly: with ``B = ceil(rate)``, a grant needs the B-th previous grant
   of that model to be more than 1 s (+1 us) old. Hence **any 1 s window of loop.time(), open
   or closed, holds at most ceil(rate) grants** of one model, whatever the timers do.
3. Not paused; and with a TPM limit, the token budget of the last 60 s has room.

``rate = configured * share * (1 - safety_margin)``. With an integer ``configured * share`` and
a margin > 0, ``ceil(rate) <= configured * share``. The provider meters on its own clock a few
ms after our send: ``configured * share + 1`` consecutive grants span more than 1 s by rule 2
alone, plus about one slot per margin-request (with LLM_RATE_SAFETY_MARGIN's default 5 %,
~50 ms over a second): that is the send/arrival jitter we tolerate before the provider's 1 s
window could count one request too many.

At send time (``send_gate``) the bounds are enforced a second time, on the moment the
request's bytes are written: the LLM session's trace hook awaits the gate inside aiohttp's
chunk-sent callback, which runs right before the write, in the same event-loop step. The gate's
times are the write times, however LiteLLM's work or a busy loop bunched requests after their
grants: any 1 s window of writes holds at most ceil(rate), and any 1 + tau window at most
P = floor(rps * share), tau being the spacing the margin gives paced requests (``send_rules``).
(A gate at request start, before the connection and the body task, needed an allowance for the
delay to the write and kept only rate / (1 + delay): 0.855-0.883 of the budget, bench
2026-11-27.)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "GRID_SLACK",
    "TPM_WINDOW_SECONDS",
    "ModelBudget",
    "ModelStats",
    "RateBudgets",
    "window_bound",
]

logger = logging.getLogger(__name__)

TPM_WINDOW_SECONDS = 60.0
GRID_SLACK = 0.05  # timer lateness absorbed by the smooth grid (busy event loops are late)
SEND_TOLERANCE_SLACK = 0.001  # paced requests stay this far inside the send gate's rule 2
_WINDOW_EPSILON = 1e-6  # "more than 1 s", so closed 1 s windows obey the bound too


def window_bound(rate: float) -> int:
    """Most grants in any 1 s window at this rate: ceil(rate), at least 1."""
    return max(1, math.ceil(rate - 1e-9))


@dataclass
class ModelStats:
    """Counters per model, for metrics and tests."""

    acquired: int = 0
    total_wait_seconds: float = 0.0
    pauses: int = 0  # pause() calls, including ones that did not extend the pause
    tokens_recorded: int = 0


class _Waiter:
    __slots__ = ("fut", "est_tokens")

    def __init__(self, fut: asyncio.Future[float], est_tokens: int) -> None:
        self.fut = fut
        self.est_tokens = est_tokens


class _TokenEntry:
    """Tokens charged at one grant; mutable so record_tokens can replace the estimate."""

    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class ModelBudget:
    """One model's request budget (and optional tokens-per-minute budget) on one event loop.

    TPM is a sliding 60 s log rather than a token bucket: a bucket that starts full and
    refills lets 2x the budget through within 60 s, the same flaw as a bursty limiter.
    A request with ``est_tokens`` is released only when the tokens charged in the last 60 s
    plus its estimate fit the budget (an estimate above the whole budget waits for an empty
    window). ``record_tokens`` replaces the oldest outstanding estimate with the actual count
    (FIFO matching: per call it may be off when calls finish out of order, the sum is exact).
    """

    def __init__(
        self, model: str, rps: float, tpm: int | None, share: float, safety_margin: float
    ) -> None:
        if rps <= 0:
            raise ValueError(f"rps for {model!r} must be > 0, got {rps}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm for {model!r} must be > 0, got {tpm}")
        self.model = model
        self.rps = rps
        self.tpm = tpm
        self.stats = ModelStats()
        self._factor = share * (1.0 - safety_margin)
        self._margin = safety_margin
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: deque[_Waiter] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_slot = -math.inf  # grid slot of the last grant
        self._recent: deque[float] = deque(maxlen=window_bound(self.rate))  # last B grants
        self._sent: deque[float] = deque(maxlen=4096)  # write times, for send_gate
        self._paused_until = 0.0
        self._ledger: deque[_TokenEntry] = deque()  # grants of the last 60 s, oldest first
        self._pending: deque[_TokenEntry] = deque()  # ledger entries still holding an estimate
        self._ledger_sum = 0

    # -- configuration -------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Effective requests/s now (configured * share * (1 - safety_margin))."""
        return self.rps * self._factor

    @property
    def token_budget(self) -> float | None:
        """Effective tokens per 60 s now, or None without a TPM limit."""
        return None if self.tpm is None else self.tpm * self._factor

    def set_factor(self, factor: float) -> None:
        """Apply a new share; queued waiters are re-timed from the last grant (no burst)."""
        self._factor = factor
        if self.rate > 0:
            self._recent = deque(self._recent, maxlen=window_bound(self.rate))
        self._reschedule()

    # -- public operations ---------------------------------------------------------------

    async def acquire(self, est_tokens: int = 0) -> float:
        """Wait for this model's next request slot; returns the seconds waited."""
        loop = self._bind_loop()
        start = loop.time()
        self._drop_cancelled()
        if not self._waiters and self._ready_at(start, est_tokens) <= start:
            self._grant(start, est_tokens)
            self.stats.acquired += 1
            return 0.0
        fut: asyncio.Future[float] = loop.create_future()
        self._waiters.append(_Waiter(fut, est_tokens))
        self._schedule()
        granted_at = await fut  # cancelled -> the future is cancelled and _dispatch skips it
        waited = granted_at - start
        self.stats.acquired += 1
        self.stats.total_wait_seconds += waited
        return waited

    def record_tokens(self, tokens: int) -> None:
        """Replace the oldest outstanding estimate with the actual token count."""
        self.stats.tokens_recorded += tokens
        if self.tpm is None:
            return
        now = self._bind_loop().time()
        self._prune(now)
        if self._pending:
            entry = self._pending.popleft()
            self._ledger_sum += tokens - entry.tokens
            entry.tokens = tokens
        else:  # no estimate left (e.g. it already left the window): charge now
            self._ledger.append(_TokenEntry(now, tokens))
            self._ledger_sum += tokens
        self._reschedule()

    def send_rules(self) -> tuple[tuple[int, float], ...]:
        """(count, seconds): at most `count` writes in any window of `seconds`.

        1. ceil(rate) per 1 s: our own bound, as for grants.
        2. P = floor(rps * share), this worker's part of the provider's limit, per 1 + tau s,
           with tau = P / rate - 1 (minus 1 ms): the spacing the safety margin gives P + 1
           paced requests (52 ms at 5 %). Paced requests never meet it; requests that a busy
           loop bunched are spread again, so the provider still sees at most P in any of its
           1 s windows when its arrival times jitter by up to tau. Rule 1 alone let bunched
           requests out as a burst at each window edge, and 2-6 ms of jitter then made the
           provider count 41 at a 40 rps limit (mock, one worker, no Faust, 2026-11-27).
        """
        rate = self.rate
        if rate <= 0:
            return ((1, 1.0),)
        bound = window_bound(rate)
        provider = max(bound, math.floor(rate / (1.0 - self._margin) + 1e-9))
        tolerance = max(0.0, provider / rate - 1.0 - SEND_TOLERANCE_SLACK)
        if provider == bound and tolerance == 0.0:
            return ((bound, 1.0),)
        return ((bound, 1.0), (provider, 1.0 + tolerance))

    async def send_gate(self) -> float:
        """Right before a request's bytes are written: hold it until `send_rules` allow one
        more write. Grants are paced by `acquire`, but the work between a grant and the write
        (LiteLLM builds the request; aiohttp writes the body from a task of its own) bunches
        requests on a busy loop; this keeps the bounds on the write times themselves. Returns
        seconds held."""
        loop = self._bind_loop()
        sent = self._sent
        arrived = now = loop.time()
        while True:
            wait = 0.0
            for count, seconds in self.send_rules():
                if len(sent) >= count:
                    wait = max(wait, sent[-count] + seconds + _WINDOW_EPSILON - now)
            if wait <= 0:
                break
            await asyncio.sleep(wait)
            now = loop.time()
        sent.append(now)
        return now - arrived

    def pause(self, seconds: float) -> None:
        """Hold every current and future waiter until now+seconds; never shortens a pause."""
        self.stats.pauses += 1
        until = self._bind_loop().time() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            logger.info("model %s paused for %.3fs", self.model, seconds)
            self._reschedule()

    def paused_until(self) -> float:
        """loop.time() at which the current pause ends, or 0 when not paused."""
        if self._loop is None or self._paused_until <= self._loop.time():
            return 0.0
        return self._paused_until

    @property
    def waiting(self) -> int:
        """Queued acquirers (including cancelled ones not yet skipped)."""
        return len(self._waiters)

    @property
    def tokens_in_window(self) -> int:
        """Tokens charged in the last 60 s (estimates until replaced by actuals)."""
        if self._loop is not None:
            self._prune(self._loop.time())
        return self._ledger_sum

    # -- scheduler -----------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:  # re-used on a new loop: old waiters and timer are dead
                logger.warning("ModelBudget %s re-bound to a new event loop", self.model)
                self._waiters.clear()
                self._timer = None
            self._loop = loop
        return loop

    def _ready_at(self, now: float, est_tokens: int) -> float:
        """Earliest loop time at which a request with est_tokens may be released."""
        rate = self.rate
        if rate <= 0:
            return math.inf  # share 0: wait until set_share gives us a budget again
        ready = max(self._last_slot + 1.0 / rate, self._paused_until)
        recent = self._recent
        if len(recent) == recent.maxlen:  # the B-th previous grant must be > 1 s old
            ready = max(ready, recent[0] + 1.0 + _WINDOW_EPSILON)
        budget = self.token_budget
        if budget is not None:
            ready = max(ready, self._tokens_ready_at(now, est_tokens, budget))
        return ready

    def _tokens_ready_at(self, now: float, est_tokens: int, budget: float) -> float:
        self._prune(now)
        need = min(max(est_tokens, 0), budget)
        excess = self._ledger_sum + need - budget
        if excess <= 0:
            return now
        freed = 0
        for entry in self._ledger:
            freed += entry.tokens
            if freed >= excess:
                return entry.at + TPM_WINDOW_SECONDS
        return math.inf  # unreachable while need <= budget; kept for safety

    def _prune(self, now: float) -> None:
        horizon = now - TPM_WINDOW_SECONDS
        ledger = self._ledger
        while ledger and ledger[0].at <= horizon:
            self._ledger_sum -= ledger.popleft().tokens
        pending = self._pending
        while pending and pending[0].at <= horizon:
            pending.popleft()

    def _grant(self, now: float, est_tokens: int) -> None:
        """Charge one request at loop time now (callers checked _ready_at(now) <= now)."""
        slot = self._last_slot + 1.0 / self.rate
        if now - slot > GRID_SLACK:  # idle, paused or stalled: restart the grid, no catch-up
            slot = now
        self._last_slot = slot
        self._recent.append(now)
        if self.tpm is not None:
            entry = _TokenEntry(now, max(est_tokens, 0))
            self._ledger.append(entry)
            self._pending.append(entry)
            self._ledger_sum += entry.tokens

    def _drop_cancelled(self) -> _Waiter | None:
        waiters = self._waiters
        while waiters and waiters[0].fut.done():
            waiters.popleft()
        return waiters[0] if waiters else None

    def _schedule(self) -> None:
        """Arm the single timer for the head of the queue, if it can ever be released."""
        if self._timer is not None or self._loop is None:
            return
        head = self._drop_cancelled()
        if head is None:
            return
        when = self._ready_at(self._loop.time(), head.est_tokens)
        if when != math.inf:
            self._timer = self._loop.call_at(when, self._dispatch)

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule()

    def _dispatch(self) -> None:
        """Timer callback: release the waiters that are ready (usually one), re-arm the timer."""
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        while (head := self._drop_cancelled()) is not None:
            if self._ready_at(now, head.est_tokens) > now:
                break
            self._waiters.popleft()
            self._grant(now, head.est_tokens)
            head.fut.set_result(now)
        self._schedule()


class RateBudgets:
    """All models' budgets for this worker: each model is paced on its own (providers limit
    per model); ``share`` scales every budget to the part of the global limit this worker owns.

    Guarantee per model: no 1 s window of loop.time() holds more than ``ceil(rate(model))``
    grants. Use from the event loop's thread only (no locks: every step is synchronous).
    """

    def __init__(
        self,
        rps: float,
        per_model_rps: Mapping[str, float] | None = None,
        tpm: int | None = None,
        per_model_tpm: Mapping[str, int] | None = None,
        share: float = 1.0,
        safety_margin: float = 0.02,
    ) -> None:
        if rps <= 0:
            raise ValueError(f"rps must be > 0, got {rps}")
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
        self._check_share(share)
        self._rps = rps
        self._per_model_rps = dict(per_model_rps or {})
        self._tpm = tpm
        self._per_model_tpm = dict(per_model_tpm or {})
        self._share = share
        self._safety_margin = safety_margin
        self._models: dict[str, ModelBudget] = {}

    @staticmethod
    def _check_share(share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")

    @property
    def share(self) -> float:
        return self._share

    @property
    def safety_margin(self) -> float:
        return self._safety_margin

    @property
    def stats(self) -> dict[str, ModelStats]:
        """Counters per model seen so far (acquired, total_wait_seconds, pauses, tokens)."""
        return {name: budget.stats for name, budget in self._models.items()}

    def budget(self, model: str) -> ModelBudget:
        """The model's budget, created on first use from the overrides or the defaults."""
        budget = self._models.get(model)
        if budget is None:
            budget = ModelBudget(
                model,
                self._per_model_rps.get(model, self._rps),
                self._per_model_tpm.get(model, self._tpm),
                self._share,
                self._safety_margin,
            )
            self._models[model] = budget
        return budget

    async def acquire(self, model: str, est_tokens: int = 0) -> float:
        """Wait for a request slot of that model (pause and TPM included); seconds waited."""
        return await self.budget(model).acquire(est_tokens)

    def record_tokens(self, model: str, tokens: int) -> None:
        """Actual tokens after a call, correcting the estimate charged at acquire()."""
        self.budget(model).record_tokens(tokens)

    async def send_gate(self, model: str) -> float:
        """See ModelBudget.send_gate: the bound enforced again at the moment of sending."""
        return await self.budget(model).send_gate()

    def pause(self, model: str, seconds: float) -> None:
        """E.g. a 429 Retry-After: that model's callers wait until now+seconds (never shorter)."""
        self.budget(model).pause(seconds)

    def paused_until(self, model: str) -> float:
        """loop.time() at which the model's pause ends, or 0 when not paused."""
        budget = self._models.get(model)
        return 0.0 if budget is None else budget.paused_until()

    def set_share(self, share: float) -> None:
        """Use this fraction of the global budget (e.g. owned/total partitions), at once."""
        self._check_share(share)
        if share == self._share:
            return
        logger.info("rate share %.4f -> %.4f", self._share, share)
        self._share = share
        factor = share * (1.0 - self._safety_margin)
        for budget in self._models.values():
            budget.set_factor(factor)

    def rate(self, model: str) -> float:
        """Effective requests/s for that model now = configured * share * (1 - safety_margin)."""
        budget = self._models.get(model)
        if budget is not None:
            return budget.rate
        rps = self._per_model_rps.get(model, self._rps)
        return rps * self._share * (1.0 - self._safety_margin)
