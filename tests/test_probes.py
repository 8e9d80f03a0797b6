"""Few-shot sampling, linear probes and nearest neighbours on frozen features."""

import numpy as np

from utils.probes import (
    few_shot_curve,
    few_shot_indices,
    knn_accuracy,
    linear_probe_accuracy,
    nearest_neighbour_accuracy,
)


def _separable(n_per_class=30, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = 5 * np.eye(4)[:classes]  # one direction per class, so cosine distance separates them too
    x = np.concatenate([rng.normal(centres[c], 0.5, (n_per_class, 4)) for c in range(classes)])
    return x, np.repeat(np.arange(classes), n_per_class)


def test_few_shot_indices_take_k_per_class():
    _, y = _separable()
    idx = few_shot_indices(y, 4, seed=0)
    assert np.bincount(y[idx]).tolist() == [4, 4, 4]
    assert not np.array_equal(idx, few_shot_indices(y, 4, seed=1))


def test_probes_solve_separable_data():
    x, y = _separable()
    assert linear_probe_accuracy(x, y, x, y) == 1.0
    assert knn_accuracy(x, y, x + 0.01, y) == 1.0
    curve = few_shot_curve(x, y, x, y, [1, 2], seeds=3)
    assert set(curve) == {1, 2} and all(0.9 <= mean <= 1.0 for mean, _ in curve.values())


def test_few_shot_curve_takes_any_scorer():
    x, y = _separable()
    calls = []

    def spy(train_x, train_y, test_x, test_y):
        calls.append(len(train_y))
        return nearest_neighbour_accuracy(train_x, train_y, test_x, test_y)

    curve = few_shot_curve(x, y, x, y, [1, 3], seeds=2, score=spy)
    assert calls == [3, 3, 9, 9] and curve[3][0] == 1.0
