"""Scaling laws: the papers' formulas worked by hand, and fits that recover known exponents."""

import numpy as np
import pytest

from utils.scaling import (
    BESIROGLU,
    CHINCHILLA,
    FIT_STARTS,
    PETAFLOP_DAY,
    ChinchillaLaw,
    bootstrap_exponent,
    bootstrap_isoflop_exponent,
    budget_plan,
    fit_chinchilla,
    fit_power_law,
    fixed_ratio_optimal_parameters,
    isoflop_minimum,
    isoflop_optima,
    isoflop_plan,
    kaplan_compute_frontier,
    kaplan_loss,
    kaplan_optimal_parameters,
    run_plan,
)

FEW_STARTS = FIT_STARTS[::7]  # 35 of the 243 starts: enough for these clean surfaces, and quick


def test_chinchilla_loss_by_hand():
    expected = 1.69 + 406.4 / 70e9**0.34 + 410.7 / 1.4e12**0.28
    assert CHINCHILLA.loss(70e9, 1.4e12) == pytest.approx(expected)


def test_compute_optimal_allocation_by_hand_and_by_search():
    flops = 5.76e23  # Gopher's and Chinchilla's budget
    g = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
    n, d = CHINCHILLA.compute_optimal(flops)
    assert n == pytest.approx(g * (flops / 6) ** (0.28 / 0.62))
    assert d == pytest.approx((flops / 6) ** (0.34 / 0.62) / g)
    assert 6 * n * d == pytest.approx(flops)
    grid = np.logspace(9, 12, 20001)  # every N on the budget line; none does better
    assert CHINCHILLA.loss(grid, flops / (6 * grid)).min() >= CHINCHILLA.loss(n, d) - 1e-9
    with pytest.raises(ValueError):
        CHINCHILLA.compute_optimal(0)


def test_plans_go_both_ways():
    plan = budget_plan(1e21)
    back = run_plan(plan["parameters"], plan["tokens"])
    assert back["flops"] == pytest.approx(1e21) and back["loss"] == pytest.approx(plan["loss"])
    assert back["rule_tokens"] == 20 * plan["parameters"]


def test_kaplan_laws_by_hand():
    assert kaplan_loss(parameters=1e9) == pytest.approx((8.8e13 / 1e9) ** 0.076)
    assert kaplan_loss(tokens=1e10) == pytest.approx((5.4e13 / 1e10) ** 0.095)
    joint = ((8.8e13 / 1e9) ** (0.076 / 0.095) + 5.4e13 / 1e10) ** 0.095
    assert kaplan_loss(1e9, 1e10) == pytest.approx(joint)
    assert kaplan_loss(1e9, 1e30) == pytest.approx(kaplan_loss(parameters=1e9), rel=1e-6)  # data-unlimited limit
    assert kaplan_compute_frontier(PETAFLOP_DAY) == pytest.approx(3.1e8**0.05)
    with pytest.raises(ValueError):
        kaplan_loss()


def test_power_law_fit_recovers_a_known_exponent_with_its_uncertainty():
    rng = np.random.default_rng(0)
    x = np.logspace(15, 19, 12)
    y = 30 * x**-0.05 * np.exp(rng.normal(0, 0.01, len(x)))
    k, p = fit_power_law(x, y)
    assert p == pytest.approx(-0.05, abs=0.005)
    estimate, low, high = bootstrap_exponent(x, y, samples=300)
    assert low < -0.05 < high and low <= estimate <= high
    with pytest.raises(ValueError):
        fit_power_law([1.0], [2.0])


def test_chinchilla_fit_recovers_synthetic_parameters_from_many_starts():
    truth = ChinchillaLaw(E=2.0, A=300.0, B=500.0, alpha=0.3, beta=0.35)
    n, d = np.meshgrid(np.logspace(6, 9, 6), np.logspace(8, 11, 6))
    fit = fit_chinchilla(n.ravel(), d.ravel(), truth.loss(n.ravel(), d.ravel()), starts=FEW_STARTS)
    assert fit.law.alpha == pytest.approx(0.3, abs=0.02) and fit.law.beta == pytest.approx(0.35, abs=0.02)
    assert abs(fit.law.E - 2.0) < 0.05
    assert fit.at_bounds == () and fit.starts == len(FEW_STARTS) and 1 <= fit.near_best <= fit.starts
    assert fit.alpha_range[0] <= fit.law.alpha <= fit.alpha_range[1]


def test_chinchilla_fit_says_when_a_parameter_hits_its_bound():
    n, d = np.meshgrid(np.logspace(6, 9, 6), np.logspace(8, 11, 6))
    no_floor = 300.0 / n.ravel() ** 0.3 + 500.0 / d.ravel() ** 0.35  # E = 0: the fit can only push log E down
    fit = fit_chinchilla(n.ravel(), d.ravel(), no_floor, starts=FEW_STARTS)
    assert "log E" in fit.at_bounds and fit.law.E < 1e-6
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_chinchilla(n.ravel()[:4], d.ravel()[:4], no_floor[:4])


def test_the_replication_puts_20_tokens_on_a_parameter_where_the_printed_fit_puts_90():
    n, d = BESIROGLU.compute_optimal(5.76e23)  # Chinchilla's own budget: it trained 70B parameters on 1.4T tokens
    assert 60e9 < n < 80e9 and 15 < d / n < 25
    n, d = CHINCHILLA.compute_optimal(5.76e23)
    assert 30e9 < n < 35e9 and 85 < d / n < 100


def test_optimal_sizes_of_kaplan_and_of_a_fixed_ratio_by_hand():
    assert kaplan_optimal_parameters(PETAFLOP_DAY) == pytest.approx(1.3e9)
    assert kaplan_optimal_parameters(10 * PETAFLOP_DAY) == pytest.approx(1.3e9 * 10**0.73)
    n = fixed_ratio_optimal_parameters(5.76e23)
    assert 6 * n * (20 * n) == pytest.approx(5.76e23)


def test_isoflop_plan_buys_each_model_the_steps_its_budget_pays_for():
    per_token = {"small": 10.0, "large": 1000.0}
    rows = isoflop_plan([1e6, 1e7], per_token, tokens_per_step=100, min_steps=5, max_tokens=20_000)
    steps = {(r["budget"], r["model"]): r["steps"] for r in rows}
    assert steps == {(1e6, "small"): 1000, (1e6, "large"): 10, (1e7, "small"): 10000, (1e7, "large"): 100}
    skips = {(r["budget"], r["model"]): r["skip"] for r in rows if r["skip"]}
    assert set(skips) == {(1e6, "small"), (1e7, "small")} and "tokens" in skips[(1e6, "small")]
    assert all(r["flops"] == r["tokens"] * per_token[r["model"]] for r in rows)
    short = isoflop_plan([1e6], {"large": 1000.0}, tokens_per_step=100, min_steps=20)
    assert short[0]["skip"] == "10 steps < 20"
    with pytest.raises(ValueError):
        isoflop_plan([0.0], {"m": 1.0}, 1)


def test_isoflop_minimum_is_the_parabola_vertex_and_flags_an_unbracketed_one():
    sizes = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
    losses = 3 + 0.1 * (np.log(sizes) - np.log(7e4)) ** 2
    found = isoflop_minimum(sizes, losses)
    assert found["parameters"] == pytest.approx(7e4, rel=1e-6) and found["loss"] == pytest.approx(3.0)
    assert found["bracketed"]
    steep = losses + np.array([0, 0, 0, 0, 2.0])  # far from the optimum the curve rises faster than a parabola
    assert isoflop_minimum(sizes, steep, neighbours=1)["parameters"] == pytest.approx(7e4, rel=1e-6)
    falling = isoflop_minimum(sizes, 4 - 0.1 * np.log(sizes))  # the best model is the largest trained: no minimum
    assert not falling["bracketed"] and falling["parameters"] == pytest.approx(1e6)
    with pytest.raises(ValueError, match="three distinct"):
        isoflop_minimum(sizes[:2], losses[:2])


def test_isoflop_sweep_of_a_known_law_recovers_its_size_exponent():
    truth = ChinchillaLaw(E=1.5, A=400.0, B=400.0, alpha=0.35, beta=0.3)
    budgets = np.repeat([1e14, 1e15, 1e16, 1e17], 7)
    ratio = np.tile(np.logspace(-1.5, 1.5, 7), 4)  # sizes from 1/30 to 30 x the true optimum of each budget
    sizes = np.array([truth.compute_optimal(c)[0] for c in budgets]) * ratio
    losses = truth.loss(sizes, budgets / (6 * sizes))
    optima = isoflop_optima(budgets, sizes, losses)
    assert optima["bracketed"].all() and list(optima["budget"]) == [1e14, 1e15, 1e16, 1e17]
    estimate, low, high = bootstrap_isoflop_exponent(budgets, sizes, losses, samples=200)
    assert estimate == pytest.approx(0.3 / 0.65, abs=0.02) and low <= estimate <= high
    lone = isoflop_optima(np.append(budgets, [1e18, 1e18]), np.append(sizes, [1e6, 2e6]), np.append(losses, [3, 3]))
    assert list(lone["budget"]) == [1e14, 1e15, 1e16, 1e17]  # two sizes make no curve: that budget is left out
    with pytest.raises(ValueError, match="three distinct"):
        isoflop_optima([1.0, 1.0], [1.0, 2.0], [3.0, 3.0])


def test_dataset_sufficiency():
    from utils.scaling import dataset_sufficiency

    verdict = dataset_sufficiency(1e9, documents=1_000_000, tokens_per_document=2_000)
    assert verdict == {"available_tokens": 2e9, "required_tokens": 2e10, "ratio": 0.1, "enough": False}
    assert dataset_sufficiency(1e6, 100, 1e6)["enough"]
    with pytest.raises(ValueError):
        dataset_sufficiency(0, 1, 1)


def test_loss_curve_doubling_gain_recovers_a_power_law():
    from utils.scaling import loss_curve_doubling_gain

    steps = np.arange(1, 201)
    reading = loss_curve_doubling_gain(6.0 * steps**-0.1, window=1)  # window 1: the curve itself
    assert reading["slope"] == pytest.approx(-0.1, abs=1e-9)
    assert reading["gain"] == pytest.approx(6.0 * 200**-0.1 * (1 - 2**-0.1))
    noisy = 6.0 * steps**-0.1 + np.random.default_rng(0).normal(0, 0.05, len(steps))
    assert loss_curve_doubling_gain(noisy)["slope"] == pytest.approx(-0.1, abs=0.03)  # default window: 20 steps
    with pytest.raises(ValueError, match="need at least"):
        loss_curve_doubling_gain(np.ones(5))
