"""A group budget that holds for any layout (simapp/limits/group.py): the units the workers hold
sum to at most the limit for any number of workers, partition split, limit and margin; grants
of workers sharing one limit stay within it in every 1 s window, across a rebalance and
across rotation epochs; nobody starves. The real path (worker processes, the mock provider)
is tests/test_llm_resilience.py::test_group_budget_holds_for_five_and_eight_workers."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simapp.limits.budgets import Budget, RateLimits, effective_rate, group_units, window_bound
from simapp.limits.group import GroupAllotment, Layout, read_layout, split
from tests.test_ratelimit import GrantLog, max_in_window

TOPIC = "events"
ENDPOINT = "acme"


@pytest.fixture
def grants(monkeypatch: pytest.MonkeyPatch) -> GrantLog:
    """Exact grant times per budget name (as tests/test_ratelimit.py records them)."""
    log = GrantLog()
    original = Budget._grant

    def recording(self: Budget, now: float, est_tokens: int) -> None:
        log.setdefault(self.name, []).append(now)
        original(self, now, est_tokens)

    monkeypatch.setattr(Budget, "_grant", recording)
    return log


def distribution(owner_of: list[int], members: int) -> dict[str, dict[str, list[int]]]:
    """Faust's shape: member URL -> topic -> partitions (members owning none listed too)."""
    out: dict[str, dict[str, list[int]]] = {f"http://w{m}:6066": {} for m in range(members)}
    for partition, member in enumerate(owner_of):
        out[f"http://w{member}:6066"].setdefault(TOPIC, []).append(partition)
        out[f"http://w{member}:6066"].setdefault("progress", []).append(partition)
    return out


def layouts(owner_of: list[int], members: int) -> list[Layout]:
    """Each member's reading of the same assignment."""
    dist = distribution(owner_of, members)
    out = []
    for m in range(members):
        url = f"http://w{m}:6066"
        layout = read_layout(dist, TOPIC, url, dist[url].get(TOPIC, []), len(owner_of))
        assert layout is not None
        out.append(layout)
    return out


def limits_for(rps: float, endpoint_rps: float, margin: float) -> RateLimits:
    limits = RateLimits(rps, shared=True, safety_margin=margin, model_rps={"m": rps / 2 + 0.5})
    limits.add_backend(ENDPOINT, endpoint_rps, shared=True)
    return limits


def per_window(limits: RateLimits) -> dict[str, int]:
    """Grants each group budget lets into any 1 s window; its send-gate rules count no more
    writes than the units it holds."""
    out = {}
    for budget in limits.shared():
        out[budget.name] = window_bound(budget.rate) if budget.rate > 0 else 0
        assert out[budget.name] <= budget.units
        if budget.units:
            assert all(count <= budget.units for count, _ in budget.send_rules())
    return out


# ------------------------------------------------------------------ the rule, layout by layout
def test_the_issues_layouts() -> None:
    assert split(10, (1,) * 8) == (2, 2, 1, 1, 1, 1, 1, 1)
    assert split(10, (2, 2, 2, 1, 1)) == (3, 3, 2, 1, 1)
    assert split(40, (3, 5)) == (15, 25)
    # what the fractional shares allowed: ceil(rate) per window each, past the limit
    assert 8 * window_bound(effective_rate(10, 1 / 8, 0.05)) == 16
    shares = (2, 2, 2, 1, 1)
    assert sum(window_bound(effective_rate(10, p / 8, 0.05)) for p in shares) == 13
    assert group_units(10.5) == 10 and group_units(0.4) == 1 and group_units(1.0) == 1


limits_st = st.one_of(
    st.integers(1, 50).map(float),
    st.integers(2, 200).map(lambda n: n / 4),  # 0.5, 0.75, ..., 50: halves and quarters
    st.floats(0.1, 50.0, allow_nan=False),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=st.integers(1, 16),
    data=st.data(),
    rps=limits_st,
    endpoint_rps=limits_st,
    margin=st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.3]),
    epoch=st.integers(0, 10_000),
)
def test_units_sum_to_at_most_the_limit_in_any_layout(
    members: int, data: st.DataObject, rps: float, endpoint_rps: float, margin: float, epoch: int
) -> None:
    partitions = data.draw(st.integers(1, 64), label="partitions")
    owner_of = data.draw(
        st.lists(st.integers(0, members - 1), min_size=partitions, max_size=partitions),
        label="owner of each partition",
    )

    async def scenario() -> None:
        views = layouts(owner_of, members)
        group = [limits_for(rps, endpoint_rps, margin) for _ in range(members)]
        allotments = [GroupAllotment(limits, hold=0.0) for limits in group]
        for allotment, layout, m in zip(allotments, views, range(members), strict=True):
            allotment.assign(layout, owner_of.count(m) / partitions)
        active = set(owner_of)
        names = [b.name for b in group[0].shared()]
        for e in (epoch, epoch + 1, epoch + members):
            windows, held = [], []
            for allotment, limits in zip(allotments, group, strict=True):
                limits.allot(allotment.targets(e), limits.share)
                windows.append(per_window(limits))
                held.append({b.name: b.units for b in limits.shared()})
            for budget in group[0].shared():
                name, units = budget.name, budget.group_units
                assert units <= max(1.0, budget.rps)
                # every unit is held by one member, and the windows add up to no more
                assert sum(h[name] for h in held) == units
                assert sum(w[name] for w in windows) <= units
                if units >= len(active):  # everyone who owns partitions holds some, always
                    assert all(held[m][name] >= 1 for m in active)
                else:  # rotating: one unit each at most
                    assert all(h[name] <= 1 for h in held)
        # over `members` consecutive epochs every owner holds every group budget at least once
        for m in active:
            for i, name in enumerate(names):
                budget = group[m].shared()[i]
                turns = [allotments[m].targets(e)[budget] for e in range(epoch, epoch + members)]
                assert max(turns) >= 1, (name, m, turns)
        for m in set(range(members)) - active:
            assert all(n == 0 for n in allotments[m].targets(epoch).values())
        for allotment in allotments:
            allotment.revoke()

    asyncio.run(scenario())


def test_an_unreadable_assignment_falls_back_alike_on_every_member() -> None:
    # Two members advertising one URL: the assignment lists one of them only.
    dist = {"http://same:6066": {TOPIC: [0, 1]}, "http://other:6066": {TOPIC: [2, 3, 4]}}
    assert read_layout(dist, TOPIC, "http://other:6066", [2, 3, 4], 8) is None
    # KAFKA_PARTITIONS is not the topic's
    dist = {"http://a:6066": {TOPIC: [0, 1]}, "http://b:6066": {TOPIC: [2, 3]}}
    assert read_layout(dist, TOPIC, "http://a:6066", [0, 1], 8) is None
    # an entry that is not this member's assignment: it holds nothing
    layout = read_layout(dist, TOPIC, "http://a:6066", [0], 4)
    assert layout is not None and layout.me is None and layout.units(10, 0) == 0

    async def scenario() -> None:
        limits = limits_for(10, 40, 0.05)
        allotment = GroupAllotment(limits, hold=0.0)
        allotment.assign(None, 1 / 8)  # the local rule: floor(share x units)
        assert {b.name: b.units for b in limits.shared()} == {
            "default": 1,
            ENDPOINT: 5,
            "model:m": 0,
        }
        allotment.revoke()

    asyncio.run(scenario())


async def test_units_are_given_up_at_once_and_taken_after_the_hold() -> None:
    loop = asyncio.get_running_loop()
    changes: list[float] = []
    limits = limits_for(10, 40, 0.05)
    allotment = GroupAllotment(limits, lambda: changes.append(loop.time()), hold=0.3)
    default = limits.backend()
    layout = layouts([0, 1, 0, 1, 2, 0, 1, 2], 3)[0]  # partitions 0, 2, 5: 3 of 8
    allotment.revoke()  # a worker holds nothing before its first assignment, as after a revoke
    assert default.units == 0 and default.rate == 0
    started = loop.time()
    allotment.assign(layout, 3 / 8)
    assert default.units == 0 and default.rate == 0
    task = asyncio.create_task(limits.acquire(limits.for_call("x")))
    waited = await asyncio.wait_for(task, 2.0)
    assert waited >= 0.29 and loop.time() - started < 0.5
    assert default.units == split(10, (3, 3, 2))[0] == 4
    assert limits.backend(ENDPOINT).units == split(40, (3, 3, 2))[0] == 15
    assert limits.share == pytest.approx(3 / 8)
    allotment.revoke()
    assert default.units == 0 and limits.share == 0.0
    assert len(changes) >= 3


# ------------------------------------------------------------------ grants of a whole group
async def run_group(
    rps: float,
    views: list[Layout],
    seconds: float,
    grants: GrantLog,
    allotments: list[GroupAllotment] | None = None,
    shares: list[float] | None = None,
) -> tuple[list[GroupAllotment], list[str]]:
    """Members that always have work: each keeps 3 callers acquiring its default budget (named
    member-i), starting at random moments, for `seconds`."""
    members = len(views)
    if allotments is None:
        allotments = []
        for m in range(members):
            limits = RateLimits(rps, shared=True, safety_margin=0.0)
            limits.backend().name = f"member-{m}"
            allotments.append(GroupAllotment(limits, hold=1.05))
    for allotment, layout, share in zip(allotments, views, shares or [0.0] * members, strict=True):
        allotment.assign(layout, share)
    stop = asyncio.get_running_loop().time() + seconds

    async def caller(limits: RateLimits) -> None:
        await asyncio.sleep(random.uniform(0, 0.5))  # members' windows are not aligned
        budgets = limits.for_call("x")
        while asyncio.get_running_loop().time() < stop:
            try:
                await asyncio.wait_for(limits.acquire(budgets), stop - time_now())
            except TimeoutError:
                return

    def time_now() -> float:
        return asyncio.get_running_loop().time()

    await asyncio.gather(*(caller(a.limits) for a in allotments for _ in range(3)))
    return allotments, [f"member-{m}" for m in range(members)]


async def test_five_then_eight_members_stay_within_ten_per_window_across_a_rebalance(
    grants: GrantLog,
) -> None:
    """8 members, a global 10/s, 8 partitions: first 5 own them (2, 2, 2, 1, 1), then a
    rebalance gives each of the 8 one. No margin, so the bound is exact: at most 10 grants in
    any 1 s window of the union, also the windows that straddle the rebalance."""
    five = [0, 1, 2, 0, 1, 2, 3, 4]
    allotments, names = await run_group(10, layouts(five, 8), 2.5, grants)
    counts = [len(grants.get(n, [])) for n in names]
    assert all(c >= 2 for c in counts[:5]) and counts[5:] == [0, 0, 0]
    for allotment in allotments:  # eager rebalance: every member revokes, then any assigns
        allotment.revoke()
    switched = asyncio.get_running_loop().time()
    await run_group(10, layouts(list(range(8)), 8), 2.5, grants, allotments)
    union = sorted(t for n in names for t in grants.get(n, []))
    assert max_in_window(union) <= 10
    assert max_in_window(union, 1.0 + 1e-9) <= 10
    after = [t for t in union if t > switched]
    assert after and after[0] >= switched + 1.0  # the hold: no window holds both layouts
    assert all(any(t > switched for t in grants.get(n, [])) for n in names)  # all 8 took part
    # and the budget was used: a window of the union held all 10 units after each layout
    assert max_in_window([t for t in union if t <= switched]) == 10
    assert max_in_window(after) == 10
    for allotment in allotments:
        allotment.revoke()


async def test_the_fractional_shares_it_replaces_let_sixteen_through(grants: GrantLog) -> None:
    """The old rule, for the record: 8 workers at 10/s x 1/8 = 1.25/s each, ceil(1.25) = 2
    grants per window each, 16 in the first second."""
    olds = [Budget(f"share-{m}", 10 / 8, shared=False, safety_margin=0.0) for m in range(8)]
    await asyncio.gather(*(b.acquire() for b in olds for _ in range(2)))
    union = sorted(t for m in range(8) for t in grants[f"share-{m}"])
    assert max_in_window(union) == 16


async def test_fewer_units_than_members_rotate_and_nobody_starves(grants: GrantLog) -> None:
    """A global 2/s over 5 members: 2 hold one unit per epoch, each in turn, so 3 epochs see
    every member hold one. Members' wall clocks disagree by up to 40 ms (the guard here is
    50 ms): still at most 2 grants in any 1 s window."""
    members, epoch, hold = 5, 1.5, 1.05
    allotments = []
    for m in range(members):
        limits = RateLimits(2, shared=True, safety_margin=0.0)
        limits.backend().name = f"member-{m}"
        skew = (m - 2) * 0.01
        allotments.append(
            GroupAllotment(limits, hold=hold, epoch=epoch, clock=lambda s=skew: time.time() + s)
        )
    # start right after an epoch boundary, so that the run covers 3 epochs
    await asyncio.sleep(epoch - time.time() % epoch + 0.05)
    _, names = await run_group(
        2, layouts(list(range(members)), members), 3 * epoch + 0.2, grants, allotments
    )
    union = sorted(t for n in names for t in grants.get(n, []))
    assert max_in_window(union) <= 2
    assert max_in_window(union, 1.0 + 1e-9) <= 2
    assert all(grants.get(n) for n in names), {n: len(grants.get(n, [])) for n in names}
    for allotment in allotments:
        allotment.revoke()


def test_fractional_and_small_limits_pace_within_their_units() -> None:
    for rps, units in ((10.5, 10), (1.5, 1), (0.5, 1), (50.0, 50)):
        limits = RateLimits(rps, shared=True, safety_margin=0.05)
        budget = limits.backend()
        assert budget.group_units == units
        budget.set_units(units, 1.0)
        assert budget.rate == pytest.approx(units * min(1.0, rps) * 0.95)
        assert window_bound(budget.rate) <= units
        assert max(count for count, _ in budget.send_rules()) <= max(1, math.floor(rps))
    with pytest.raises(ValueError):
        RateLimits(10, shared=True).backend().set_units(11, 1.0)
