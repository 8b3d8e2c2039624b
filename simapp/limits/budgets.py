"""Request budgets towards LLM providers: never more than the limit in any 1 s window.

A worker has one budget per backend (the provider behind LLM_BACKEND_URL or LiteLLM, and each
configured assistant endpoint): LLM_RATE_LIMIT_RPS, or this worker's share of
LLM_GLOBAL_RATE_LIMIT_RPS, bounds every call of the instance, whatever its model or role.
Per-model limits (LLM_MODEL_RATE_LIMITS) are extra ceilings inside it. A call waits for every
budget it belongs to, in FIFO order, and its bytes are held again at the write (`send_gate`)
so that the provider, which counts arrivals, never sees more than the bound.

Each budget is a small exact scheduler, not aiolimiter's leaky bucket: a full bucket lets 2R
through in the first second (tests/test_ratelimit.py,
`test_a_leaky_bucket_lets_twice_the_rate_into_the_first_second`), and it cannot re-rate or
pause queued waiters. The scheduler:

1. grants sit on a grid 1/rate apart; a grant up to GRID_SLACK after its slot keeps the grid
   (a busy loop's late timers cost no throughput), a later one restarts it (no catch-up burst);
2. the B-th previous grant must be more than 1 s old, B = ceil(rate): any 1 s window of
   loop.time() holds at most ceil(rate) grants, whatever the timers do;
3. not paused (429), and with a TPM limit the tokens of the last 60 s leave room.

rate = configured x (1 - LLM_RATE_SAFETY_MARGIN) for the instance's own limits; the margin is
the tolerance for the provider's clock, a few ms after our write (`Budget.send_rules`).

A group limit (LLM_GLOBAL_RATE_LIMIT_RPS, an endpoint's `rps`, model ceilings under a global
limit) is not split by fractional shares: ceil(rps x share) per window summed over the group
exceeds rps (8 workers at 1.25/s each fit 2 in a 1 s window: 16 against 10). It is handed out
in whole units, `group_units(rps)` = floor(rps) requests per 1 s window (1 below 1/s); a worker
holding `units` paces at units x min(1, rps) x (1 - margin), so it never lets more than
`units` into any 1 s window, and the units the workers hold sum to at most group_units.
Who holds how many, and when, is simapp/limits/group.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TPM_WINDOW_SECONDS = 60.0
GRID_SLACK = 0.05  # timer lateness absorbed by the grid (busy event loops are late)
SEND_TOLERANCE_SLACK = 0.001  # paced requests stay this far inside the send gate's rule 2
DEFAULT_BACKEND = "default"
_WINDOW_EPSILON = 1e-6  # "more than 1 s", so closed 1 s windows obey the bound too
_SEND_HISTORY = 4096  # write times kept per budget (rules look back ceil(rate) writes)


def effective_rate(rps: float, share: float, safety_margin: float) -> float:
    """Requests/s a worker may use: its share of the configured limit, minus the margin."""
    return rps * share * (1.0 - safety_margin)


def group_units(rps: float) -> int:
    """Whole requests per 1 s window a group limit hands out: floor(rps), at least 1 (a limit
    below 1/s is one unit, paced at rps)."""
    return max(1, math.floor(rps))


def local_units(rps: float, share: float) -> int:
    """The units a worker may take knowing only its own share: floor(share x units). Never
    more than its part in any layout, but it drops the remainders, and a share below
    1/units gets none (simapp/limits/group.py uses the whole assignment instead)."""
    return math.floor(share * group_units(rps) + 1e-9)


def window_bound(rate: float) -> int:
    """Most grants in any 1 s window at this rate: ceil(rate), at least 1."""
    return max(1, math.ceil(rate - 1e-9))


@dataclass
class BudgetStats:
    """Counters per budget, for metrics and tests."""

    acquired: int = 0
    total_wait_seconds: float = 0.0
    pauses: int = 0  # pause() calls, including ones that did not extend the pause
    tokens_recorded: int = 0


class _Waiter:
    __slots__ = ("fut", "est_tokens", "seq", "since")

    def __init__(self, fut: asyncio.Future[float], est_tokens: int, seq: int, since: float) -> None:
        self.fut = fut
        self.est_tokens = est_tokens
        self.seq = seq  # arrival order across lanes
        self.since = since


class _TokenEntry:
    """Tokens charged at one grant; mutable so record_tokens can replace the estimate."""

    __slots__ = ("at", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens


class Budget:
    """One limit (requests/s, optionally tokens/min) paced on one event loop, FIFO.

    TPM is a sliding 60 s log, not a bucket (a full bucket lets 2x through in 60 s): a request
    is released when the tokens charged in the last 60 s plus its estimate fit; record_tokens
    replaces the oldest outstanding estimate with the actual count (the sum is exact).
    """

    def __init__(
        self,
        name: str,
        rps: float,
        tpm: int | None = None,
        *,
        share: float = 1.0,
        safety_margin: float = 0.05,
        shared: bool = True,
    ) -> None:
        if rps <= 0:
            raise ValueError(f"rps for {name!r} must be > 0, got {rps}")
        if tpm is not None and tpm <= 0:
            raise ValueError(f"tpm for {name!r} must be > 0, got {tpm}")
        if not 0.0 <= safety_margin < 1.0:
            raise ValueError(f"safety_margin must be in [0, 1), got {safety_margin}")
        self.name = name
        self.rps = rps
        self.tpm = tpm
        self.shared = shared  # scaled by the worker's partition share
        self.safety_margin = safety_margin
        self.stats = BudgetStats()
        self._share = share if shared else 1.0
        self._units = local_units(rps, self._share) if shared else 0
        self._gate_rate = self.rate  # send rules' rate: the last non-zero one
        self._loop: asyncio.AbstractEventLoop | None = None
        # waiters by the ceiling they also need (None: this budget only), each lane FIFO
        self._lanes: dict[Budget | None, deque[_Waiter]] = {}
        self._seq = 0
        self._dependents: list[Budget] = []  # budgets whose waiters also wait for this one
        self._timer: asyncio.TimerHandle | None = None
        self._last_slot = -math.inf  # grid slot of the last grant
        self._recent: deque[float] = deque(maxlen=window_bound(self.rate))  # last B grants
        self._sent: deque[float] = deque(maxlen=_SEND_HISTORY)  # write times (send_gate)
        self._paused_until = 0.0
        self._ledger: deque[_TokenEntry] = deque()  # grants of the last 60 s, oldest first
        self._pending: deque[_TokenEntry] = deque()  # ledger entries still holding an estimate
        self._ledger_sum = 0

    # -- configuration -------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Effective requests/s now: rps x (1 - margin), or for a group limit the units held x
        min(1, rps) x (1 - margin)."""
        if not self.shared:
            return effective_rate(self.rps, 1.0, self.safety_margin)
        return effective_rate(self._units * min(1.0, self.rps), 1.0, self.safety_margin)

    @property
    def group_units(self) -> int:
        """Units of the group's limit (shared budgets): requests per 1 s window, all workers."""
        return group_units(self.rps)

    @property
    def units(self) -> int:
        """Units this worker holds (shared budgets): at most this many grants per 1 s window."""
        return self._units

    @property
    def token_budget(self) -> float | None:
        """Effective tokens per 60 s now, or None without a TPM limit."""
        if self.tpm is None:
            return None
        return effective_rate(self.tpm, self._share, self.safety_margin)

    def set_share(self, share: float) -> None:
        """The local rule (`local_units`): units floor(share x group units), tokens x share."""
        self.set_units(local_units(self.rps, share) if self.shared else 0, share)

    def set_units(self, units: int, share: float) -> None:
        """Hold `units` of the group's requests per 1 s window and `share` of its tokens, at
        once; queued waiters are re-timed from the last grant (shared budgets only)."""
        if not self.shared or (units, share) == (self._units, self._share):
            return
        if not 0 <= units <= self.group_units:
            raise ValueError(f"units for {self.name!r} must be in 0..{self.group_units}: {units}")
        self._units, self._share = units, share
        if self.rate > 0:
            self._recent = deque(self._recent, maxlen=window_bound(self.rate))
            self._gate_rate = self.rate
        self._reschedule()

    # -- public operations ---------------------------------------------------------------

    async def acquire(self, est_tokens: int = 0, ceiling: Budget | None = None) -> float:
        """Wait for the next request slot (and, with `ceiling`, one of the ceiling's at the
        same moment); returns the seconds waited. Each ceiling's waiters are FIFO, and the
        oldest waiter whose ceiling allows it goes first: a throttled model holds no slot."""
        loop = self._bind_loop()
        if ceiling is not None:
            ceiling._bind_loop()
            if self not in ceiling._dependents:
                ceiling._dependents.append(self)
        start = loop.time()
        if not self.waiting and self._lane_ready_at(ceiling, start, est_tokens) <= start:
            self._grant_lane(ceiling, start, est_tokens, 0.0)
            return 0.0
        fut: asyncio.Future[float] = loop.create_future()
        self._seq += 1
        waiter = _Waiter(fut, est_tokens, self._seq, start)
        lane = self._lanes.setdefault(ceiling, deque())
        lane.append(waiter)
        if len(lane) == 1:
            self._reschedule()  # a new lane's head may be ready before the armed timer
        else:
            self._schedule()
        granted_at = await fut  # cancelled -> the future is cancelled and _dispatch skips it
        return granted_at - start

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
        else:  # no estimate left (it already left the window): charge now
            self._ledger.append(_TokenEntry(now, tokens))
            self._ledger_sum += tokens
        self._reschedule()

    def send_rules(self) -> tuple[tuple[int, float], ...]:
        """(count, seconds): at most `count` writes in any window of `seconds`.

        1. ceil(rate) per 1 s: our own bound, as for grants.
        2. P = floor(rps), or the units held of a group limit: this worker's part of the
           provider's limit, per 1 + tau s, tau = P / rate - 1 (minus 1 ms): the spacing the
           margin gives P + 1 paced requests (52 ms at 5 %). Paced requests never meet it;
           requests a busy loop bunched are spread again, so arrival jitter up to tau still
           leaves the provider at <= P.
        At 0 units (a rebalance, a rotation) the rules of the last units held stay: writes
        granted before leave as they would have, not one a second.
        """
        rate = self.rate or self._gate_rate  # at 0, writes granted before keep their rules
        if rate <= 0:
            return ((1, 1.0),)
        bound = window_bound(rate)
        provider = max(bound, math.floor(rate / (1.0 - self.safety_margin) + 1e-9))
        tolerance = max(0.0, provider / rate - 1.0 - SEND_TOLERANCE_SLACK)
        if provider == bound and tolerance == 0.0:
            return ((bound, 1.0),)
        return ((bound, 1.0), (provider, 1.0 + tolerance))

    def send_wait(self, now: float) -> float:
        """Seconds until one more write at `now` would keep every send rule and no 429
        pause holds the backend (0 = now): a request granted before the 429 came back is
        not written until its Retry-After is over."""
        sent = self._sent
        wait = max(0.0, self._paused_until - now)
        for count, seconds in self.send_rules():
            if len(sent) >= count:
                wait = max(wait, sent[-count] + seconds + _WINDOW_EPSILON - now)
        return wait

    def record_send(self, now: float) -> None:
        self._sent.append(now)

    def pause(self, seconds: float) -> None:
        """Hold every current and future waiter until now+seconds; never shortens a pause."""
        self.stats.pauses += 1
        until = self._bind_loop().time() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            logger.info("budget %s paused for %.3fs", self.name, seconds)
            self._reschedule()

    @property
    def waiting(self) -> int:
        """Queued acquirers (including cancelled ones not yet skipped)."""
        return sum(len(lane) for lane in self._lanes.values())

    # -- scheduler -----------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:  # re-used on a new loop: old waiters and timer are dead
                logger.warning("budget %s re-bound to a new event loop", self.name)
                self._lanes.clear()
                self._timer = None
            self._loop = loop
        return loop

    def _ready_at(self, now: float, est_tokens: int) -> float:
        """Earliest loop time at which a request with est_tokens may be released."""
        rate = self.rate
        if rate <= 0:
            return math.inf  # no units (a rebalance, a rotation): wait until we hold some
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

    def _lane_ready_at(self, ceiling: Budget | None, now: float, est_tokens: int) -> float:
        ready = self._ready_at(now, est_tokens)
        if ceiling is not None:
            ready = max(ready, ceiling._ready_at(now, est_tokens))
        return ready

    def _grant_lane(
        self, ceiling: Budget | None, now: float, est_tokens: int, waited: float
    ) -> None:
        for budget in (self, ceiling) if ceiling is not None else (self,):
            budget._grant(now, est_tokens)
            budget.stats.acquired += 1
            budget.stats.total_wait_seconds += waited

    def _heads(self) -> list[tuple[Budget | None, _Waiter]]:
        """The first live waiter of each lane (cancelled ones are dropped)."""
        heads = []
        for ceiling, lane in list(self._lanes.items()):
            while lane and lane[0].fut.done():
                lane.popleft()
            if lane:
                heads.append((ceiling, lane[0]))
            else:
                del self._lanes[ceiling]
        return heads

    def _schedule(self) -> None:
        """Arm the single timer for the earliest head that can ever be released."""
        if self._timer is not None or self._loop is None:
            return
        now = self._loop.time()
        when = min(
            (self._lane_ready_at(c, now, w.est_tokens) for c, w in self._heads()), default=math.inf
        )
        if when != math.inf:
            self._timer = self._loop.call_at(when, self._dispatch)

    def _reschedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._schedule()
        for dependent in self._dependents:  # their waiters wait for this budget too
            dependent._reschedule()

    def _dispatch(self) -> None:
        """Timer callback: release the ready waiters, oldest first, then re-arm."""
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        while True:
            ready = [
                (w.seq, c, w)
                for c, w in self._heads()
                if self._lane_ready_at(c, now, w.est_tokens) <= now
            ]
            if not ready:
                break
            _, ceiling, waiter = min(ready, key=lambda item: item[0])
            self._lanes[ceiling].popleft()
            self._grant_lane(ceiling, now, waiter.est_tokens, now - waiter.since)
            waiter.fut.set_result(now)
        self._schedule()


async def send_gate(budgets: Sequence[Budget]) -> float:
    """Right before a request's bytes are written: hold the write until the send rules of
    every budget it belongs to allow one more, then record it in all of them at once.
    Grants are paced by `acquire`, but the work between a grant and the write bunches
    requests on a busy loop; this keeps the bounds on the write times. Seconds held."""
    loop = asyncio.get_running_loop()
    arrived = now = loop.time()
    while True:
        wait = max((budget.send_wait(now) for budget in budgets), default=0.0)
        if wait <= 0:
            break
        await asyncio.sleep(wait)
        now = loop.time()
    for budget in budgets:
        budget.record_send(now)
    return now - arrived


class RateLimits:
    """Every budget of one worker: one per backend, plus per-model ceilings on the default one.

    ``for_call(model, backend)`` names the budgets a call belongs to, the narrowest first:
    waiting for the model's ceiling before taking a slot of the shared backend budget keeps a
    throttled model from holding slots that other models could use. Use from the event
    loop's thread only (every step is synchronous).
    """

    def __init__(
        self,
        rps: float,
        *,
        tpm: int | None = None,
        model_rps: Mapping[str, float] | None = None,
        model_tpm: Mapping[str, int] | None = None,
        safety_margin: float = 0.05,
        shared: bool = False,
        share: float = 1.0,
    ) -> None:
        self.safety_margin = safety_margin
        self._share = share
        self._check_share(share)
        self._backends: dict[str, Budget] = {}
        self._ceilings: dict[str, Budget] = {}
        self._calls: dict[tuple[str, str], tuple[Budget, ...]] = {}
        self.add_backend(DEFAULT_BACKEND, rps, tpm, shared=shared)
        model_tpm = dict(model_tpm or {})
        for model in dict.fromkeys([*(model_rps or {}), *model_tpm]):
            ceiling_rps = (model_rps or {}).get(model, rps)
            self._ceilings[model] = self._new(
                f"model:{model}", ceiling_rps, model_tpm.get(model), shared
            )

    def _new(self, name: str, rps: float, tpm: int | None, shared: bool) -> Budget:
        return Budget(
            name, rps, tpm, share=self._share, safety_margin=self.safety_margin, shared=shared
        )

    @staticmethod
    def _check_share(share: float) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share must be in [0, 1], got {share}")

    def add_backend(self, name: str, rps: float, tpm: int | None = None, *, shared: bool) -> Budget:
        """A backend's own budget (e.g. an assistant endpoint with its own limit)."""
        budget = self._new(name, rps, tpm, shared)
        self._backends[name] = budget
        self._calls.clear()
        return budget

    @property
    def share(self) -> float:
        return self._share

    def backend(self, name: str = DEFAULT_BACKEND) -> Budget:
        return self._backends[name]

    def ceiling(self, model: str) -> Budget | None:
        return self._ceilings.get(model)

    def backends(self) -> Iterable[Budget]:
        return self._backends.values()

    def ceilings(self) -> Iterable[Budget]:
        return self._ceilings.values()

    def for_call(self, model: str, backend: str = DEFAULT_BACKEND) -> tuple[Budget, ...]:
        """The budgets one call waits for: the model's ceiling (default backend only), then
        its backend's budget. KeyError for an unknown backend."""
        key = (model, backend)
        budgets = self._calls.get(key)
        if budgets is None:
            ceiling = self._ceilings.get(model) if backend == DEFAULT_BACKEND else None
            own = self._backends[backend]
            budgets = (ceiling, own) if ceiling is not None else (own,)
            self._calls[key] = budgets
        return budgets

    async def acquire(self, budgets: Sequence[Budget], est_tokens: int = 0) -> float:
        """Wait until every budget of the call has a slot, granted in all at the same moment
        (`for_call` puts the ceiling first, the backend last); returns the seconds waited."""
        *ceilings, backend = budgets
        ceiling = ceilings[0] if ceilings else None
        return await backend.acquire(est_tokens, ceiling=ceiling)

    @staticmethod
    def record_tokens(budgets: Sequence[Budget], tokens: int) -> None:
        for budget in budgets:
            budget.record_tokens(tokens)

    @staticmethod
    def pause(budgets: Sequence[Budget], seconds: float) -> None:
        """A 429: everything queued on these budgets waits (never shortens a pause)."""
        for budget in budgets:
            budget.pause(seconds)

    def shared(self) -> list[Budget]:
        """The budgets that are the group's (every worker holds a part of them)."""
        return [b for b in [*self._backends.values(), *self._ceilings.values()] if b.shared]

    def set_share(self, share: float) -> None:
        """The local rule for every group budget, at once: floor(share x units) per 1 s
        window, share x tokens (`local_units`; simapp/limits/group.py knows better)."""
        self._check_share(share)
        self.allot({b: local_units(b.rps, share) for b in self.shared()}, share)

    def allot(self, units: Mapping[Budget, int], share: float) -> None:
        """This worker's part of the group's budgets, at once: `units` requests per 1 s window
        of each (missing: 0) and `share` of their tokens per minute."""
        self._check_share(share)
        self._share = share
        for budget in self.shared():
            budget.set_units(units.get(budget, 0), share)
