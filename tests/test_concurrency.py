"""ConversationSlots (simapp/limits/concurrency.py): the target from Little's law, the door's
order, its closing on a rebalance, and what the target is said to be limited by."""

from __future__ import annotations

import asyncio
import contextvars
import math

import pytest

from simapp.limits.budgets import RateLimits
from simapp.limits.concurrency import BUDGET, CEILING, LATENCY, ConversationSlots


def feed(slots: ConversationSlots, budgets: tuple, cycle: float, n: int) -> None:
    """n calls of one new conversation, each taking `cycle` seconds of it (no waiting)."""

    def calls() -> None:
        t = 1000.0
        for _ in range(n):
            slots.call_done(budgets, t, t, t + cycle)
            t += cycle

    contextvars.Context().run(calls)  # the conversation's clock lives in its context


def test_target_is_headroom_times_rate_times_cycle() -> None:
    limits = RateLimits(rps=100, safety_margin=0.05)  # 95 calls/s
    slots = ConversationSlots(limits, 10_000, initial_cycle=1.0, headroom=1.2)
    assert slots.target == math.ceil(1.2 * 95 * 1.0)  # before any call: LLM_EXPECTED_LATENCY
    feed(slots, limits.for_call("m"), 3.0, 600)
    assert slots.cycle == pytest.approx(3.0)
    assert slots.target == math.ceil(1.2 * 95 * 3.0)


def test_waiting_for_a_budget_is_not_part_of_the_cycle() -> None:
    limits = RateLimits(rps=10, safety_margin=0.0)
    slots = ConversationSlots(limits, 10_000, initial_cycle=1.0, headroom=1.0)
    budgets = limits.for_call("m")

    def calls() -> None:
        t = 0.0
        for _ in range(100):  # 4 s in the budget's queue, then 0.5 s at the provider
            slots.call_done(budgets, t, t + 4.0, t + 4.5)
            t += 4.5

    contextvars.Context().run(calls)
    assert slots.cycle == pytest.approx(0.5)
    assert slots.target == 5


def test_a_small_budget_in_the_mix_holds_the_target_back() -> None:
    """Half the calls go to an endpoint allowing 10/s: the mix can run at 20 calls/s in all,
    whatever the default backend's 100/s."""
    limits = RateLimits(rps=100, safety_margin=0.0)
    limits.add_backend("bot", 10, shared=False)
    slots = ConversationSlots(limits, 10_000, initial_cycle=1.0, headroom=1.0)
    for _ in range(100):
        feed(slots, limits.for_call("m"), 2.0, 1)
        feed(slots, limits.for_call("m", "bot"), 2.0, 1)
    assert slots.call_rate() == pytest.approx(20.0)
    assert slots.target == 40


def test_a_model_ceiling_counts_as_a_budget() -> None:
    limits = RateLimits(rps=100, model_rps={"slow": 5}, safety_margin=0.0)
    slots = ConversationSlots(limits, 10_000, initial_cycle=1.0, headroom=1.0)
    feed(slots, limits.for_call("slow"), 1.0, 50)
    assert slots.call_rate() == pytest.approx(5.0)
    assert slots.target == 5


def test_the_share_of_a_group_budget_moves_the_target() -> None:
    limits = RateLimits(rps=100, safety_margin=0.0, shared=True)
    slots = ConversationSlots(limits, 10_000, initial_cycle=2.0, headroom=1.0)
    assert slots.target == 200
    limits.set_share(0.25)
    slots.recompute()
    assert slots.target == 50
    limits.set_share(0.0)  # a rebalance: no budget, still one slot
    slots.recompute()
    assert slots.target == 1


async def test_the_door_is_fifo_and_a_leaving_conversation_lets_the_next_in() -> None:
    limits = RateLimits(rps=2, safety_margin=0.0)
    slots = ConversationSlots(limits, 100, initial_cycle=1.0, headroom=1.0)
    assert slots.target == 2
    assert await slots.enter() and await slots.enter()
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await slots.enter()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert (slots.running, slots.waiting, order) == (2, 4, [])
    assert slots.reason == BUDGET
    slots.leave()
    await asyncio.sleep(0.01)
    assert order == [0]
    slots.leave()
    slots.leave()
    await asyncio.sleep(0.01)
    assert order == [0, 1, 2]
    assert (slots.running, slots.waiting) == (2, 1)
    tasks[3].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert (slots.running, slots.waiting) == (2, 0)
    slots.leave()
    slots.leave()
    assert (slots.running, slots.reason) == (0, LATENCY)


async def test_closing_hands_waiting_events_back_and_opening_resumes() -> None:
    limits = RateLimits(rps=1, safety_margin=0.0)
    slots = ConversationSlots(limits, 100, initial_cycle=1.0, headroom=1.0)
    assert await slots.enter()
    waiting = [asyncio.create_task(slots.enter()) for _ in range(3)]
    await asyncio.sleep(0.01)
    slots.on_flow(False)  # Faust suspended the flow: a rebalance or a shutdown
    assert await asyncio.gather(*waiting) == [False, False, False]
    assert await slots.enter() is False  # nothing starts while the flow is stopped
    assert (slots.running, slots.waiting) == (1, 0)
    slots.on_flow(True)
    slots.leave()
    assert await slots.enter()


async def test_a_raised_target_admits_waiters_at_once() -> None:
    limits = RateLimits(rps=1, safety_margin=0.0)
    slots = ConversationSlots(limits, 100, initial_cycle=1.0, headroom=1.0)
    assert await slots.enter()
    waiting = [asyncio.create_task(slots.enter()) for _ in range(3)]
    await asyncio.sleep(0.01)
    feed(slots, limits.for_call("m"), 4.0, 10)  # slower calls: 4 conversations keep 1/s
    assert await asyncio.gather(*waiting) == [True, True, True]
    assert slots.running == 4


def test_the_ceiling_caps_the_target_and_says_so() -> None:
    limits = RateLimits(rps=500, safety_margin=0.0)
    slots = ConversationSlots(limits, 300, initial_cycle=8.0, headroom=1.0)
    assert (slots.target, slots.reason) == (300, CEILING)


async def test_the_longest_conversations_go_in_first() -> None:
    limits = RateLimits(rps=1, safety_margin=0.0)
    slots = ConversationSlots(limits, 100, initial_cycle=1.0, headroom=1.0)
    assert await slots.enter(priority=1)
    order: list[int] = []

    async def wait(priority: int) -> None:
        assert await slots.enter(priority=priority)
        order.append(priority)
        slots.leave()

    tasks = [asyncio.create_task(wait(p)) for p in (2, 10, 5, 10, 3)]
    await asyncio.sleep(0.01)
    slots.leave()
    await asyncio.gather(*tasks)
    assert order == [10, 10, 5, 3, 2]


async def test_a_call_in_flight_longer_than_expected_raises_the_target() -> None:
    """Before the first answers, a slow provider shows as calls that are still out."""
    limits = RateLimits(rps=10, safety_margin=0.0)
    slots = ConversationSlots(limits, 10_000, initial_cycle=0.1, headroom=1.0)
    assert slots.target == 1
    handle = slots.call_sent()
    await asyncio.sleep(0.35)
    slots.recompute()
    assert slots.target >= 4  # 10/s x 0.35 s
    slots.call_ended(handle)
    slots.recompute()
    assert slots.target == 1
