"""simapp/observe/comparison.py: the statistics against SciPy and hand-computed values, and
the calls they lead to (a difference whose interval holds 0 is "no change")."""

from __future__ import annotations

import random

import pytest
from scipy import stats

from simapp.observe.comparison import (
    NO_CHANGE,
    WORSE,
    Scenario,
    compare,
    mcnemar_exact,
    paired_bootstrap,
)


@pytest.mark.parametrize(("b", "c"), [(1, 9), (0, 5), (7, 7), (3, 12), (20, 41), (0, 0)])
def test_mcnemar_exact_is_scipy_two_sided_binomial(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else stats.binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_mcnemar_by_hand() -> None:
    # 1 against 9: 2 x (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)


def test_paired_bootstrap_is_seeded_and_agrees_with_scipy() -> None:
    rng = random.Random(3)
    pairs = [(rng.random(), rng.random() * 0.8) for _ in range(200)]
    mean, low, high = paired_bootstrap(pairs, resamples=4000, seed=11)
    assert (mean, low, high) == paired_bootstrap(pairs, resamples=4000, seed=11)
    diffs = [b - a for a, b in pairs]
    assert mean == pytest.approx(sum(diffs) / len(diffs))
    ci = stats.bootstrap(
        (diffs,), lambda x: sum(x) / len(x), n_resamples=4000, method="percentile",
        confidence_level=0.95, random_state=11, vectorized=False,
    ).confidence_interval  # fmt: skip
    assert low == pytest.approx(ci.low, abs=0.01) and high == pytest.approx(ci.high, abs=0.01)


def scenarios(rates: dict[str, tuple[int, int]], criterion_fails: set[str] = frozenset()) -> dict:
    """scenario -> Scenario with `passed` of `runs` passing; criterion "b" fails in the named
    scenarios."""
    out = {}
    for name, (passed, runs) in rates.items():
        s = Scenario()
        for i in range(runs):
            ok = i < passed
            b_ok = name not in criterion_fails
            s.add(
                {
                    "simulation_id": f"{name}-{i}",
                    "evaluation": {
                        "passed": ok and b_ok,
                        "criteria": [
                            {"criterion": "a", "passed": ok, "reasoning": "ra"},
                            {"criterion": "b", "passed": b_ok, "reasoning": "rb"},
                        ],
                    },
                    "usage": {"cost_usd": 0.01},
                    "total_iterations": 3,
                    "duration_ms": 1000,
                }
            )
        out[name] = s
    return out


def test_a_criterion_that_fails_far_more_often_is_worse_and_its_regressions_listed() -> None:
    names = [f"s{i}" for i in range(40)]
    base = scenarios({n: (1, 1) for n in names})
    cand = scenarios({n: (1, 1) for n in names}, criterion_fails=set(names[:30]))
    result = compare(base, cand, seed=1)
    assert result["criteria"]["b"]["call"] == WORSE
    assert result["criteria"]["b"]["ci95"][1] < 0
    assert result["criteria"]["a"]["call"] == NO_CHANGE
    assert result["overall"]["call"] == WORSE
    assert result["overall"]["mcnemar"] == {
        "regressions": 30, "fixes": 0, "p_value": pytest.approx(2 / 2**30)
    }  # fmt: skip
    assert {r["scenario_id"] for r in result["regressions"]} == set(names[:30])
    assert result["regressions"][0]["failed"][0]["reasoning"] == "rb"


def test_identical_noise_is_no_change() -> None:
    rng = random.Random(5)
    names = [f"s{i}" for i in range(60)]
    base = scenarios({n: (rng.randint(1, 3), 3) for n in names})
    cand = scenarios({n: (rng.randint(1, 3), 3) for n in names})
    result = compare(base, cand, seed=2)
    assert result["overall"]["call"] == NO_CHANGE
    assert "mcnemar" not in result["overall"]  # repeats: the bootstrap only
    assert result["flaky"]["baseline"] and result["flaky"]["candidate"]


def test_scenarios_in_one_batch_only_are_listed_apart() -> None:
    base = scenarios({"a": (1, 1), "b": (1, 1)})
    cand = scenarios({"b": (1, 1), "c": (0, 1)})
    result = compare(base, cand)
    assert result["scenarios"] == 1
    assert result["only_in_baseline"] == ["a"] and result["only_in_candidate"] == ["c"]


def test_pass_at_k_and_flaky() -> None:
    s = scenarios({"x": (3, 3), "y": (2, 3), "z": (0, 3)})
    assert [s[n].all_passed for n in "xyz"] == [True, False, False]
    assert [s[n].flaky for n in "xyz"] == [False, True, False]
