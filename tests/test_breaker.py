"""AsyncCircuitBreaker: consecutive failures, waiting while open, a single half-open probe."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

from simapp.limits.breaker import AsyncCircuitBreaker, BreakerOpen

RESET = 0.3
T = TypeVar("T")


class Boom(Exception):
    """A backend failure."""


class BadRequest(Exception):
    """The caller's fault (think HTTP 400): must not count."""


class Backend:
    """Counts invocations; fails while `failing` or for the first `fail_first` invocations."""

    def __init__(self, fail_first: int = 0, latency: float = 0.0) -> None:
        self.fail_first = fail_first
        self.latency = latency
        self.failing = False
        self.invocations = 0
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self) -> str:
        self.invocations += 1
        n = self.invocations
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.failing or n <= self.fail_first:
                raise Boom(f"call {n}")
            return f"ok {n}"
        finally:
            self.in_flight -= 1


async def call(breaker: AsyncCircuitBreaker, fn: Callable[[], Awaitable[T]]) -> T:
    """One call as the LLM client makes it (simapp/llm/client.py): admitted without waiting
    (BreakerOpen when it may not go), its outcome recorded."""
    ticket = breaker.admit()
    try:
        result = await fn()
    except BaseException as exc:
        breaker.record(ticket, exc)
        raise
    breaker.record(ticket, None)
    return result


async def fail(breaker: AsyncCircuitBreaker, times: int) -> None:
    async def boom() -> None:
        raise Boom()

    for _ in range(times):
        with pytest.raises(Boom):
            await call(breaker, boom)


async def waiting_call(
    breaker: AsyncCircuitBreaker,
    fn: Callable[[], Awaitable[T]],
    rejections: list[int] | None = None,
) -> T:
    """What a caller that waits does: ready(), then call(); refused (another caller took the
    probe first) means wait again. Each refusal is counted in `rejections`, if given."""
    while True:
        await breaker.ready()
        try:
            return await call(breaker, fn)
        except BreakerOpen:
            if rejections is not None:
                rejections.append(1)
            continue


def recorder(breaker: AsyncCircuitBreaker) -> list[tuple[str, str]]:
    transitions: list[tuple[str, str]] = []
    breaker.add_listener(lambda old, new: transitions.append((old, new)))
    return transitions


def test_rejects_invalid_parameters() -> None:
    with pytest.raises(ValueError):
        AsyncCircuitBreaker("t", fail_max=0)
    with pytest.raises(ValueError):
        AsyncCircuitBreaker("t", reset_timeout=-1)


async def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    backend = Backend()

    await fail(breaker, 4)
    assert breaker.fail_counter == 4
    assert await call(breaker, backend) == "ok 1"  # a success resets the count
    assert breaker.fail_counter == 0
    await fail(breaker, 4)
    assert breaker.state == "closed"
    await fail(breaker, 1)
    assert breaker.state == "open"
    assert breaker.fail_counter == 5
    assert transitions == [("closed", "open")]


async def test_open_breaker_never_reaches_the_backend() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    await fail(breaker, 5)
    backend = Backend()
    for _ in range(10):
        with pytest.raises(BreakerOpen) as info:
            await call(breaker, backend)
    assert backend.invocations == 0
    assert info.value.state == "open"
    assert info.value.name == "t"
    assert info.value.retry_at == breaker.retry_at
    for _ in range(10):
        with pytest.raises(BreakerOpen):
            breaker.admit()
    assert breaker.state == "open"


async def test_call_on_open_breaker_raises_at_once_with_retry_at() -> None:
    """call() never waits: refused at once, with the time a probe may go, and fn never runs."""
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=2, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 2)
    opened = loop.time()
    assert breaker.retry_at == pytest.approx(opened + RESET, abs=0.01)
    backend = Backend()

    step = call(breaker, backend)
    with pytest.raises(BreakerOpen) as info:
        step.send(None)  # refused on its first step: no waiting
    assert backend.invocations == 0
    assert info.value.state == "open"
    assert info.value.retry_at == pytest.approx(opened + RESET, abs=0.01)
    assert info.value.retry_at == breaker.retry_at
    assert "open" in str(info.value)
    assert transitions == [("closed", "open")]  # a refusal is no transition

    # Just before retry_at: still refused. At retry_at the call is the probe.
    await asyncio.sleep(max(0.0, info.value.retry_at - loop.time() - 0.05))
    with pytest.raises(BreakerOpen):
        await call(breaker, backend)
    assert backend.invocations == 0
    await asyncio.sleep(max(0.0, info.value.retry_at - loop.time()) + 0.01)
    assert await call(breaker, backend) == "ok 1"
    assert breaker.state == "closed"


def returns_without_waiting(step: Coroutine[Any, Any, None]) -> bool:
    """True if the coroutine finishes on its first step: it never suspended, whatever the
    machine's load (a count, not a timing)."""
    try:
        step.send(None)
    except StopIteration:
        return True
    step.close()
    return False


async def test_ready_returns_at_once_when_a_call_could_be_admitted() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=1, reset_timeout=RESET)
    assert returns_without_waiting(breaker.ready())  # closed
    assert breaker.retry_at is None

    await fail(breaker, 1)
    retry_at = breaker.retry_at
    assert retry_at is not None
    await breaker.ready()
    assert loop.time() >= retry_at  # waited for the open period, on loop.time()
    assert breaker.state == "open"  # ready() only waits; admit() takes the probe
    assert returns_without_waiting(breaker.ready())  # open past reset_timeout: a probe may go

    ticket = breaker.admit()
    assert ticket.probe
    assert breaker.state == "half-open"
    breaker.record(ticket, asyncio.CancelledError())  # abandoned: the slot is free again
    assert breaker.state == "half-open"
    assert returns_without_waiting(breaker.ready())  # half-open, no probe running


async def test_waiting_caller_becomes_probe_and_success_closes() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 5)
    opened = loop.time()
    retry_at = breaker.retry_at
    assert retry_at is not None
    backend = Backend()

    await breaker.ready()
    assert loop.time() - opened >= RESET - 0.01
    assert loop.time() >= retry_at
    assert backend.invocations == 0
    assert await call(breaker, backend) == "ok 1"
    assert backend.invocations == 1
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
    assert breaker.retry_at is None
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_probe_failure_reopens_for_another_reset_timeout() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 5)
    backend = Backend()
    backend.failing = True

    await breaker.ready()  # waits RESET
    with pytest.raises(Boom):
        await call(breaker, backend)  # probes, fails
    reopened = loop.time()
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(reopened + RESET, abs=0.01)
    with pytest.raises(BreakerOpen) as info:
        await call(breaker, backend)  # re-opened: refused at once again
    assert info.value.retry_at == breaker.retry_at
    assert backend.invocations == 1

    backend.failing = False
    assert await waiting_call(breaker, backend) == "ok 2"
    assert loop.time() - reopened >= RESET - 0.01
    assert breaker.state == "closed"
    assert transitions == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


async def test_one_probe_while_many_wait_then_all_proceed() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    await fail(breaker, 5)
    backend = Backend(latency=0.05)
    rejections: list[int] = []

    results = await asyncio.gather(
        *(waiting_call(breaker, backend, rejections) for _ in range(100))
    )
    assert len(results) == 100
    assert breaker.state == "closed"
    # The probe ran alone; once it closed the breaker the other 99 went together.
    assert results.count("ok 1") == 1
    assert backend.invocations == 100
    assert backend.max_in_flight == 99
    # Each of the 99 was refused at most once (when the probe was taken), then waited: no spin.
    assert len(rejections) <= 99


async def test_300_concurrent_callers_consistent_state_and_single_probe() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    events: list[tuple[str, ...]] = []
    breaker.add_listener(lambda old, new: events.append(("transition", old, new)))
    fail_first = 30
    backend = Backend(fail_first=fail_first, latency=0.02)
    refused = [0] * 300

    async def fn() -> str:
        events.append(("invoke", breaker.state))
        return await backend()

    async def caller(i: int) -> str:
        await asyncio.sleep(i * 0.001)  # arrivals spread over 0.3 s
        while True:
            await breaker.ready()
            try:
                return await call(breaker, fn)
            except BreakerOpen:
                refused[i] += 1
                continue
            except Boom:
                return "failed"

    started = loop.time()
    results = await asyncio.gather(*(caller(i) for i in range(300)))
    assert loop.time() - started < 8

    # Every caller got exactly one attempt: none was lost or let through twice.
    assert backend.invocations == 300
    assert results.count("failed") == fail_first
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0

    transitions = [e[1:] for e in events if e[0] == "transition"]
    assert transitions[0] == ("closed", "open")
    assert transitions[-1] == ("half-open", "closed")
    for (_, new), (old, _) in zip(transitions, transitions[1:], strict=False):
        assert new == old  # a proper chain
    probes = transitions.count(("open", "half-open"))
    assert probes == transitions.count(("half-open", "open")) + 1
    # Failures while closed: fail_max counted ones plus stragglers already in flight.
    closed_failures = fail_first - (probes - 1)
    assert closed_failures >= 5
    # ready() really waits: a caller is refused at most once per half-open period (someone
    # else took the probe), never in a loop while the breaker is open.
    assert max(refused) <= probes

    # Between transitions: nothing while open, exactly one invocation per half-open period.
    state = "closed"
    invoked_in_period = 0
    for event in events:
        if event[0] == "transition":
            if state == "half-open":
                assert invoked_in_period == 1
            state, invoked_in_period = event[2], 0
        else:
            assert event[1] == state
            assert state != "open"
            invoked_in_period += 1


async def test_excluded_errors_do_not_count() -> None:
    breaker = AsyncCircuitBreaker(
        "t", fail_max=3, reset_timeout=RESET, exclude=lambda e: isinstance(e, BadRequest)
    )

    async def bad() -> None:
        raise BadRequest()

    for _ in range(10):
        with pytest.raises(BadRequest):
            await call(breaker, bad)
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
    # An excluded error counts as a success: it resets the consecutive count.
    await fail(breaker, 2)
    assert breaker.fail_counter == 2
    with pytest.raises(BadRequest):
        await call(breaker, bad)
    assert breaker.fail_counter == 0
    await fail(breaker, 2)
    assert breaker.state == "closed"
    await fail(breaker, 1)
    assert breaker.state == "open"

    # A probe that gets an excluded error closes the breaker: the backend answered.
    await breaker.ready()
    with pytest.raises(BadRequest):
        await call(breaker, bad)
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0


async def test_timeout_around_ready_cancels_cleanly() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 5)
    retry_at = breaker.retry_at
    backend = Backend()

    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await breaker.ready()
    assert loop.time() - started >= 0.09  # waited its whole timeout, and no probe went
    assert backend.invocations == 0
    # Nothing changed: still open until the same retry_at, still refusing.
    assert breaker.state == "open"
    assert breaker.retry_at == retry_at
    assert transitions == [("closed", "open")]
    with pytest.raises(BreakerOpen):
        await call(breaker, backend)
    assert backend.invocations == 0

    # Waiters behind a slow probe time out too, without a second probe.
    slow = Backend(latency=0.5)
    probe = asyncio.create_task(waiting_call(breaker, slow))
    await asyncio.sleep(RESET + 0.05)
    assert breaker.state == "half-open"
    assert slow.invocations == 1
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await breaker.ready()
    assert loop.time() - started >= 0.04
    with pytest.raises(BreakerOpen) as info:
        breaker.admit()  # the probe slot is still taken
    assert info.value.state == "half-open"
    assert info.value.retry_at is None
    assert slow.invocations == 1

    # A waiter that was not timed out still wakes when the probe closes the breaker.
    follower = asyncio.create_task(waiting_call(breaker, backend))
    assert await probe == "ok 1"
    assert breaker.state == "closed"
    assert await asyncio.wait_for(follower, 1.0) == "ok 1"
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_cancelled_probe_hands_over_to_next_waiter() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=1, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 1)
    hang = asyncio.Event()

    async def hanging() -> str:
        await hang.wait()
        return "never"

    probe = asyncio.create_task(waiting_call(breaker, hanging))
    await asyncio.sleep(RESET + 0.05)
    assert breaker.state == "half-open"
    backend = Backend()
    rejections: list[int] = []
    second = asyncio.create_task(waiting_call(breaker, backend, rejections))
    await asyncio.sleep(0.05)
    assert backend.invocations == 0  # still waiting behind the probe
    assert len(rejections) == 0  # waiting in ready(), not refused in a loop
    probe.cancel()
    assert await asyncio.wait_for(second, 1.0) == "ok 1"
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert breaker.state == "closed"
    # The cancelled probe moved nothing: one half-open period, closed by the second caller.
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_cancelled_closed_call_does_not_count() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=2, reset_timeout=RESET)
    await fail(breaker, 1)
    hang = asyncio.Event()

    async def hanging() -> None:
        await hang.wait()

    task = asyncio.create_task(call(breaker, hanging))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state == "closed"
    assert breaker.fail_counter == 1  # neither a failure nor a success


async def test_stale_outcomes_are_ignored() -> None:
    """Outcomes of calls admitted before a transition move nothing."""
    breaker = AsyncCircuitBreaker("t", fail_max=2, reset_timeout=RESET)
    transitions = recorder(breaker)
    early_success = breaker.admit()
    early_failure = breaker.admit()
    assert not early_success.probe
    await fail(breaker, 2)
    assert breaker.state == "open"

    # Stragglers finishing while open: neither closes it nor counts.
    breaker.record(early_success, None)
    breaker.record(early_failure, Boom())
    assert breaker.state == "open"
    assert breaker.fail_counter == 2

    await breaker.ready()
    probe = breaker.admit()
    assert probe.probe
    with pytest.raises(BreakerOpen):
        breaker.admit()  # exactly one probe
    # A straggler's success while half-open does not close it, nor its failure re-open it.
    breaker.record(early_success, None)
    assert breaker.state == "half-open"
    breaker.record(early_failure, Boom())
    assert breaker.state == "half-open"
    with pytest.raises(BreakerOpen):
        breaker.admit()  # the probe slot is still the real probe's

    breaker.record(probe, None)
    assert breaker.state == "closed"
    breaker.record(probe, Boom())  # a duplicate report of the old probe: stale too
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
    breaker.record(early_failure, Boom())  # from the first closed period: stale
    assert breaker.fail_counter == 0
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


async def test_failing_listener_does_not_break_the_breaker() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=1, reset_timeout=RESET)

    def broken(old: str, new: str) -> None:
        raise RuntimeError("metrics down")

    seen: list[str] = []
    breaker.add_listener(broken)
    breaker.add_listener(lambda old, new: seen.append(new))
    await fail(breaker, 1)
    assert breaker.state == "open"
    assert seen == ["open"]
    await breaker.ready()
    assert await call(breaker, Backend()) == "ok 1"
    assert breaker.state == "closed"
    assert seen == ["open", "half-open", "closed"]
