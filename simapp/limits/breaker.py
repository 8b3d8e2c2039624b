"""An asyncio circuit breaker, one per LLM backend, with pybreaker as its state machine.

pybreaker cannot wrap coroutines (``call_async`` needs tornado; decorating an ``async def``
guards only the coroutine's creation, pybreaker issue #7). So admission is decided here, and
every outcome is fed to pybreaker through its public ``call``: a success resets its counter, a
failure counts, ``fail_max`` consecutive failures open it, and its listeners report changes.

* closed: calls go to the backend.
* open: ``admit`` raises BreakerOpen until ``reset_timeout`` passed; ``ready()`` waits for it.
* half-open: exactly one caller is the probe; its success closes, its failure re-opens.

Outcomes of calls admitted before the latest transition (stragglers in flight when the breaker
opened) are ignored. Excluded errors count as successes, as in pybreaker: the backend answered.
Every step runs synchronously between awaits on one event loop, so concurrent callers cannot
corrupt the count or let two probes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pybreaker

__all__ = ["AsyncCircuitBreaker", "BreakerOpen", "StateCallback"]

logger = logging.getLogger(__name__)

StateCallback = Callable[[str, str], None]

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN


class BreakerOpen(Exception):
    """The call was not attempted: the breaker is open (or its probe is still running)."""

    def __init__(self, name: str, state: str, retry_at: float | None = None) -> None:
        super().__init__(f"circuit breaker {name!r} is {state}")
        self.name = name
        self.state = state
        self.retry_at = retry_at  # loop.time() at which a probe may go, if known


class Ticket:
    """Admission of one call: the state period that admitted it and whether it is the probe."""

    __slots__ = ("epoch", "probe")

    def __init__(self, epoch: int, probe: bool) -> None:
        self.epoch = epoch
        self.probe = probe


class _Listener(pybreaker.CircuitBreakerListener):
    """pybreaker's state changes as (old, new) names, for our callbacks."""

    def __init__(self, breaker: AsyncCircuitBreaker) -> None:
        self.breaker = breaker

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.breaker._on_state_change(old_state.name if old_state else "", new_state.name)


class _Outcome(Exception):
    """Carries a call's failure into pybreaker's ``call`` so pybreaker counts it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class AsyncCircuitBreaker:
    """Guards an async backend; see the module docstring for the exact semantics."""

    def __init__(
        self,
        name: str,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        exclude: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {fail_max}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must be >= 0, got {reset_timeout}")
        self.name = name
        self._callbacks: list[StateCallback] = []
        self._exclude = exclude
        # pybreaker measures the open period itself too; it must never be the one to refuse
        # the probe we admit, so its timeout is 0 and ours (on loop.time()) decides.
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=0,
            name=name,
            exclude=[self._excluded],
            listeners=[_Listener(self)],
        )
        self._reset_timeout = reset_timeout
        self._epoch = 0  # bumped on every transition; stale outcomes are ignored
        self._probe_active = False
        self._open_until = 0.0  # loop.time() at which the open breaker allows a probe
        self._changed = asyncio.Event()  # set (and replaced) on every transition

    # -- introspection -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """'closed' | 'open' | 'half-open'."""
        return self._cb.current_state

    @property
    def fail_counter(self) -> int:
        return self._cb.fail_counter

    @property
    def fail_max(self) -> int:
        return self._cb.fail_max

    @property
    def reset_timeout(self) -> float:
        return self._reset_timeout

    @property
    def retry_at(self) -> float | None:
        """loop.time() at which an open breaker lets a probe through, else None."""
        return self._open_until if self.state == STATE_OPEN else None

    def add_listener(self, callback: StateCallback) -> None:
        """Call callback(old_state, new_state) on every transition, e.g. to export metrics."""
        self._callbacks.append(callback)

    # -- admission -----------------------------------------------------------------------

    def admit(self) -> Ticket:
        """Admit one call now, or raise BreakerOpen (with the time a probe may go). The caller
        must `record` the ticket's outcome, also when cancelled (a probe admitted and never
        recorded would keep the breaker half-open); `call` does."""
        state = self.state
        if state == STATE_CLOSED:
            return Ticket(self._epoch, probe=False)
        now = asyncio.get_running_loop().time()
        if state == STATE_OPEN and now >= self._open_until:
            self._cb.half_open()
            state = STATE_HALF_OPEN
        if state == STATE_HALF_OPEN and not self._probe_active:
            self._probe_active = True
            return Ticket(self._epoch, probe=True)
        raise BreakerOpen(self.name, state, self._open_until if state == STATE_OPEN else None)

    async def ready(self) -> None:
        """Wait until a call could be admitted (closed, or a probe may go). No polling: every
        transition wakes the waiters, and while open each waits at most until the probe time."""
        loop = asyncio.get_running_loop()
        while True:
            state = self.state
            if state == STATE_CLOSED:
                return
            if state == STATE_OPEN and loop.time() >= self._open_until:
                return
            if state == STATE_HALF_OPEN and not self._probe_active:
                return
            changed = self._changed
            if state == STATE_OPEN:
                try:
                    async with asyncio.timeout_at(self._open_until):
                        await changed.wait()
                except TimeoutError:
                    pass
            else:
                await changed.wait()

    def record(self, ticket: Ticket, error: BaseException | None) -> None:
        """Feed one call's outcome (None = success) to the state machine."""
        if error is not None and not isinstance(error, Exception):
            self._abandon(ticket)  # cancelled or interrupted: says nothing about the backend
            return
        if ticket.epoch != self._epoch or self.state != (
            STATE_HALF_OPEN if ticket.probe else STATE_CLOSED
        ):
            logger.debug("breaker %s: ignoring a stale outcome (%r)", self.name, error)
            return

        def outcome() -> None:
            if error is not None:
                raise _Outcome(error)

        try:
            self._cb.call(outcome)
        except _Outcome:
            pass  # counted (or excluded) by pybreaker
        except pybreaker.CircuitBreakerError:
            pass  # this failure opened it; _on_state_change did the rest

    # -- internals -----------------------------------------------------------------------

    def _excluded(self, exc: BaseException) -> bool:
        error = exc.error if isinstance(exc, _Outcome) else exc
        return self._exclude is not None and self._exclude(error)

    def _abandon(self, ticket: Ticket) -> None:
        """A cancelled probe frees the probe slot for the next waiter."""
        if ticket.probe and ticket.epoch == self._epoch and self._probe_active:
            self._probe_active = False
            self._notify()

    def _on_state_change(self, old: str, new: str) -> None:
        self._epoch += 1
        self._probe_active = False
        if new == STATE_OPEN:
            self._open_until = asyncio.get_running_loop().time() + self._reset_timeout
            logger.warning(
                "breaker %s opened after %d consecutive failures", self.name, self.fail_max
            )
        else:
            logger.info("breaker %s -> %s", self.name, new)
        for callback in list(self._callbacks):
            try:
                callback(old, new)
            except Exception:  # a metrics bug must not break the state machine
                logger.exception("breaker %s state listener failed", self.name)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def __repr__(self) -> str:
        return f"<AsyncCircuitBreaker {self.name!r} state={self.state} fails={self.fail_counter}>"
