"""An asyncio circuit breaker that uses pybreaker as its state store.

pybreaker cannot wrap coroutines (``call_async`` needs tornado; decorating an ``async def`` only
guards coroutine creation, pybreaker issue #7), and its open state fails callers at once. So the
admission logic lives here and pybreaker keeps what it is good at: the state names, the
consecutive-failure counter and state-change listeners. We never call pybreaker's ``call()``;
transitions go through its ``open()``/``half_open()``/``close()``, which notify its listeners.

Every decision (admit, count, transition) runs synchronously between awaits on one event loop,
so hundreds of concurrent callers cannot corrupt the counter or let two probes through:

* closed: every call goes to the backend; a failure increments the counter, a success resets it;
  ``fail_max`` consecutive failures (in completion order) open the breaker.
* open: nothing reaches the backend. Callers wait on an ``asyncio.Event`` (no polling) until
  ``reset_timeout`` has passed on ``loop.time()``, or raise ``BreakerOpen`` at once when
  ``wait_when_open`` is False, or when their ``deadline`` passes.
* half-open: exactly one caller is the probe; the rest keep waiting. Probe success closes the
  breaker and wakes everyone; probe failure re-opens it for another ``reset_timeout``; a
  cancelled probe hands the probe slot to the next waiter.

Outcomes of calls admitted before the latest transition (e.g. stragglers that were in flight
when the breaker opened) are ignored: only calls of the current closed period or the current
probe move the state. Excluded errors count as successes, as in pybreaker: the backend answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pybreaker

__all__ = ["AsyncCircuitBreaker", "BreakerOpen", "StateCallback"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
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


class _Ticket:
    """Admission of one call: which state period admitted it and whether it is the probe."""

    __slots__ = ("epoch", "probe")

    def __init__(self, epoch: int, probe: bool) -> None:
        self.epoch = epoch
        self.probe = probe


class _StateForwarder(pybreaker.CircuitBreakerListener):
    """Turns pybreaker's state-change notifications into (old, new) name callbacks."""

    def __init__(self, callbacks: list[StateCallback]) -> None:
        self._callbacks = callbacks

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = old_state.name if old_state is not None else ""
        for callback in list(self._callbacks):
            try:
                callback(old, new_state.name)
            except Exception:  # a metrics bug must not break the state machine
                logger.exception("breaker %s state listener failed", cb.name)


class AsyncCircuitBreaker:
    """Guards an async backend; see the module docstring for the exact semantics."""

    def __init__(
        self,
        name: str,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        wait_when_open: bool = True,
        exclude: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError(f"fail_max must be >= 1, got {fail_max}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must be >= 0, got {reset_timeout}")
        self.name = name
        self.wait_when_open = wait_when_open
        self._exclude = exclude
        self._callbacks: list[StateCallback] = []
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            name=name,
            listeners=[_StateForwarder(self._callbacks)],
        )
        self._epoch = 0  # bumped on every transition; stale outcomes are ignored
        self._probe_active = False
        self._open_until = 0.0  # loop.time() at which the open breaker allows a probe
        self._changed = asyncio.Event()  # set (and replaced) on every transition
        self._wake_timer: asyncio.TimerHandle | None = None

    # -- introspection -------------------------------------------------------------------

    @property
    def state(self) -> str:
        """'closed' | 'open' | 'half-open'."""
        return self._cb.current_state

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted by pybreaker (reset on success and on closing)."""
        return self._cb.fail_counter

    @property
    def fail_max(self) -> int:
        return self._cb.fail_max

    @property
    def reset_timeout(self) -> float:
        return self._cb.reset_timeout

    @property
    def retry_at(self) -> float | None:
        """loop.time() at which an open breaker lets a probe through, else None."""
        return self._open_until if self.state == STATE_OPEN else None

    def add_listener(self, callback: StateCallback) -> None:
        """Call callback(old_state, new_state) on every transition, e.g. to export metrics."""
        self._callbacks.append(callback)

    def remove_listener(self, callback: StateCallback) -> None:
        self._callbacks.remove(callback)

    def on_state_change(self, callback: StateCallback) -> StateCallback:
        """Decorator form of add_listener."""
        self.add_listener(callback)
        return callback

    # -- the call ------------------------------------------------------------------------

    async def call(self, fn: Callable[[], Awaitable[T]], deadline: float | None = None) -> T:
        """Run fn() under the breaker; deadline (loop.time()) bounds only the waiting."""
        ticket = await self._admit(deadline)
        try:
            result = await fn()
        except Exception as exc:
            self._on_failure(ticket, exc)
            raise
        except BaseException:  # cancelled or interrupted: says nothing about the backend
            self._abandon(ticket)
            raise
        self._on_success(ticket)
        return result

    async def _admit(self, deadline: float | None) -> _Ticket:
        """Return once this caller may reach the backend; raises BreakerOpen otherwise."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            state = self.state
            if state == STATE_CLOSED:
                return _Ticket(self._epoch, probe=False)
            if state == STATE_OPEN and now >= self._open_until:
                self._transition(STATE_HALF_OPEN)
                state = STATE_HALF_OPEN
            if state == STATE_HALF_OPEN and not self._probe_active:
                self._probe_active = True
                return _Ticket(self._epoch, probe=True)
            retry_at = self._open_until if state == STATE_OPEN else None
            if not self.wait_when_open or (deadline is not None and now >= deadline):
                raise BreakerOpen(self.name, state, retry_at)
            if state == STATE_OPEN:
                self._arm_wake_timer(loop)
            changed = self._changed
            wake_at = math.inf if deadline is None else deadline
            if wake_at == math.inf:
                await changed.wait()
            else:
                try:
                    async with asyncio.timeout_at(wake_at):
                        await changed.wait()
                except TimeoutError:
                    pass  # loop again: re-check state, then the deadline

    def _arm_wake_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        """One timer per open period wakes all waiters when a probe may go (not one each)."""
        if self._wake_timer is None:
            self._wake_timer = loop.call_at(self._open_until, self._on_wake_timer)

    def _on_wake_timer(self) -> None:
        self._wake_timer = None
        self._notify()

    # -- outcomes ------------------------------------------------------------------------

    def _is_current(self, ticket: _Ticket) -> bool:
        if ticket.epoch != self._epoch:
            return False
        return self.state == (STATE_HALF_OPEN if ticket.probe else STATE_CLOSED)

    def _on_success(self, ticket: _Ticket) -> None:
        if not self._is_current(ticket):
            return
        if ticket.probe:
            self._transition(STATE_CLOSED)
        else:
            self._cb._state_storage.reset_counter()

    def _on_failure(self, ticket: _Ticket, exc: Exception) -> None:
        if self._exclude is not None and self._exclude(exc):
            self._on_success(ticket)
            return
        if not self._is_current(ticket):
            logger.debug("breaker %s: ignoring stale failure %r", self.name, exc)
            return
        self._cb._inc_counter()
        if ticket.probe:
            logger.warning("breaker %s: probe failed (%s), re-opening", self.name, exc)
            self._transition(STATE_OPEN)
        elif self._cb.fail_counter >= self._cb.fail_max:
            logger.warning(
                "breaker %s: %d consecutive failures (last: %s), opening",
                self.name,
                self._cb.fail_counter,
                exc,
            )
            self._transition(STATE_OPEN)

    def _abandon(self, ticket: _Ticket) -> None:
        """A cancelled probe frees the probe slot for the next waiter."""
        if ticket.probe and self._is_current(ticket):
            self._probe_active = False
            self._notify()

    # -- transitions ---------------------------------------------------------------------

    def _transition(self, new_state: str) -> None:
        self._epoch += 1
        self._probe_active = False
        if self._wake_timer is not None:
            self._wake_timer.cancel()
            self._wake_timer = None
        if new_state == STATE_OPEN:
            self._open_until = asyncio.get_running_loop().time() + self._cb.reset_timeout
            self._cb.open()
        elif new_state == STATE_HALF_OPEN:
            self._cb.half_open()
        else:
            self._cb.close()
        logger.info("breaker %s -> %s", self.name, new_state)
        self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def __repr__(self) -> str:
        details: dict[str, Any] = {"state": self.state, "fail_counter": self.fail_counter}
        return f"<AsyncCircuitBreaker {self.name!r} {details}>"
