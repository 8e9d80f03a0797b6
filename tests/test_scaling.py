"""Scaling laws: the papers' formulas worked by hand, and fits that recover known exponents."""

import numpy as np
import pytest

from utils.scaling import (
    CHINCHILLA,
    PETAFLOP_DAY,
    ChinchillaLaw,
    bootstrap_exponent,
    budget_plan,
    fit_chinchilla,
    fit_power_law,
    kaplan_compute_frontier,
    kaplan_loss,
    run_plan,
)


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


def test_chinchilla_fit_recovers_synthetic_parameters():
    truth = ChinchillaLaw(E=2.0, A=300.0, B=500.0, alpha=0.3, beta=0.35)
    n, d = np.meshgrid(np.logspace(6, 9, 6), np.logspace(8, 11, 6))
    fitted = fit_chinchilla(n.ravel(), d.ravel(), truth.loss(n.ravel(), d.ravel()))
    assert fitted.alpha == pytest.approx(0.3, abs=0.02) and fitted.beta == pytest.approx(0.35, abs=0.02)
    floor = fitted.E
    assert floor == pytest.approx(2.0, abs=0.05)


def test_dataset_sufficiency():
    from utils.scaling import dataset_sufficiency

    verdict = dataset_sufficiency(1e9, documents=1_000_000, tokens_per_document=2_000)
    assert verdict == {"available_tokens": 2e9, "required_tokens": 2e10, "ratio": 0.1, "enough": False}
    assert dataset_sufficiency(1e6, 100, 1e6)["enough"]
    with pytest.raises(ValueError):
        dataset_sufficiency(0, 1, 1)


def test_frontier_and_best_size_per_budget():
    from utils.scaling import best_size_per_budget, compute_frontier

    flops = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 11.0])
    losses = np.array([5.0, 4.0, 4.5, 3.0, 3.5, 2.0])
    assert compute_frontier(flops, losses).tolist() == [0, 1, 3, 5]
    params = np.array([10, 20, 30, 40, 50, 60])
    best = best_size_per_budget(flops, params, losses, budgets=2)
    assert best["parameters"].tolist() == [20, 60]  # bins [1, 3.3) and [3.3, 11] on a log scale
