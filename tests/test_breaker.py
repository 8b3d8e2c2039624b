"""AsyncCircuitBreaker: consecutive failures, waiting while open, a single half-open probe."""

from __future__ import annotations

import asyncio

import pytest

from simapp.breaker import AsyncCircuitBreaker, BreakerOpen

RESET = 0.3


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


async def fail(breaker: AsyncCircuitBreaker, times: int) -> None:
    async def boom() -> None:
        raise Boom()

    for _ in range(times):
        with pytest.raises(Boom):
            await breaker.call(boom)


def recorder(breaker: AsyncCircuitBreaker) -> list[tuple[str, str]]:
    transitions: list[tuple[str, str]] = []
    breaker.add_listener(lambda old, new: transitions.append((old, new)))
    return transitions


@pytest.mark.asyncio
async def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    backend = Backend()

    await fail(breaker, 4)
    assert breaker.fail_counter == 4
    assert await breaker.call(backend) == "ok 1"  # a success resets the count
    assert breaker.fail_counter == 0
    await fail(breaker, 4)
    assert breaker.state == "closed"
    await fail(breaker, 1)
    assert breaker.state == "open"
    assert breaker.fail_counter == 5
    assert transitions == [("closed", "open")]


@pytest.mark.asyncio
async def test_open_breaker_never_reaches_the_backend() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET, wait_when_open=False)
    await fail(breaker, 5)
    backend = Backend()
    for _ in range(10):
        with pytest.raises(BreakerOpen) as info:
            await breaker.call(backend)
    assert backend.invocations == 0
    assert info.value.state == "open"
    assert info.value.retry_at == breaker.retry_at


@pytest.mark.asyncio
async def test_waiting_caller_becomes_probe_and_success_closes() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 5)
    opened = loop.time()
    backend = Backend()

    assert await breaker.call(backend) == "ok 1"
    assert loop.time() - opened >= RESET - 0.01
    assert backend.invocations == 1
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
    assert transitions == [("closed", "open"), ("open", "half-open"), ("half-open", "closed")]


@pytest.mark.asyncio
async def test_probe_failure_reopens_for_another_reset_timeout() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    transitions = recorder(breaker)
    await fail(breaker, 5)
    backend = Backend()
    backend.failing = True

    with pytest.raises(Boom):
        await breaker.call(backend)  # waits RESET, probes, fails
    reopened = loop.time()
    assert breaker.state == "open"
    assert breaker.retry_at == pytest.approx(reopened + RESET, abs=0.01)

    backend.failing = False
    assert await breaker.call(backend) == "ok 2"
    assert loop.time() - reopened >= RESET - 0.01
    assert breaker.state == "closed"
    assert transitions == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


@pytest.mark.asyncio
async def test_one_probe_while_many_wait_then_all_proceed() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    await fail(breaker, 5)
    backend = Backend(latency=0.05)

    results = await asyncio.gather(*(breaker.call(backend) for _ in range(100)))
    assert len(results) == 100
    assert breaker.state == "closed"
    # The probe ran alone; once it closed the breaker the other 99 went together.
    assert results.count("ok 1") == 1
    assert backend.max_in_flight == 99


@pytest.mark.asyncio
async def test_300_concurrent_callers_consistent_state_and_single_probe() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    events: list[tuple[str, ...]] = []
    breaker.add_listener(lambda old, new: events.append(("transition", old, new)))
    fail_first = 30
    backend = Backend(fail_first=fail_first, latency=0.02)

    async def fn() -> str:
        events.append(("invoke", breaker.state))
        return await backend()

    async def caller(i: int) -> str:
        await asyncio.sleep(i * 0.001)  # arrivals spread over 0.3 s
        try:
            return await breaker.call(fn)
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


@pytest.mark.asyncio
async def test_excluded_errors_do_not_count() -> None:
    breaker = AsyncCircuitBreaker(
        "t", fail_max=3, reset_timeout=RESET, exclude=lambda e: isinstance(e, BadRequest)
    )

    async def bad() -> None:
        raise BadRequest()

    for _ in range(10):
        with pytest.raises(BadRequest):
            await breaker.call(bad)
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
    await fail(breaker, 3)
    assert breaker.state == "open"


@pytest.mark.asyncio
async def test_deadline_while_waiting_raises_breaker_open() -> None:
    loop = asyncio.get_running_loop()
    breaker = AsyncCircuitBreaker("t", fail_max=5, reset_timeout=RESET)
    await fail(breaker, 5)
    backend = Backend()

    started = loop.time()
    with pytest.raises(BreakerOpen):
        await breaker.call(backend, deadline=started + 0.1)
    assert 0.09 <= loop.time() - started < RESET
    assert backend.invocations == 0

    # Waiters behind a slow probe time out too, without a second probe.
    slow = Backend(latency=0.5)
    probe = asyncio.create_task(breaker.call(slow))
    await asyncio.sleep(RESET + 0.05)
    assert breaker.state == "half-open"
    with pytest.raises(BreakerOpen):
        await breaker.call(slow, deadline=loop.time() + 0.05)
    assert slow.invocations == 1
    assert await probe == "ok 1"
    assert breaker.state == "closed"


@pytest.mark.asyncio
async def test_cancelled_probe_hands_over_to_next_waiter() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=1, reset_timeout=RESET)
    await fail(breaker, 1)
    hang = asyncio.Event()

    async def hanging() -> str:
        await hang.wait()
        return "never"

    probe = asyncio.create_task(breaker.call(hanging))
    await asyncio.sleep(RESET + 0.05)
    assert breaker.state == "half-open"
    backend = Backend()
    second = asyncio.create_task(breaker.call(backend))
    await asyncio.sleep(0.05)
    assert backend.invocations == 0  # still waiting behind the probe
    probe.cancel()
    assert await asyncio.wait_for(second, 1.0) == "ok 1"
    assert breaker.state == "closed"


@pytest.mark.asyncio
async def test_failing_listener_does_not_break_the_breaker() -> None:
    breaker = AsyncCircuitBreaker("t", fail_max=1, reset_timeout=RESET)

    def broken(old: str, new: str) -> None:
        raise RuntimeError("metrics down")

    seen: list[str] = []
    breaker.add_listener(broken)
    breaker.on_state_change(lambda old, new: seen.append(new))
    await fail(breaker, 1)
    assert breaker.state == "open"
    assert seen == ["open"]
