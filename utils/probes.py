"""Adapting frozen features to a labelled task without touching the encoder: a linear probe (logistic
regression), few-shot sampling, and nearest neighbours.

Defined for notebook 01 (the lecture's "four ways to adapt a foundation model"; Radford et al., 2021, section
3.2 compares zero-shot CLIP with few-shot linear probes). Works on any feature matrix; needs numpy and
scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of `shots` randomly chosen examples of every class in `labels` (all of a class if it has fewer)."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.concatenate(picked)


def linear_probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, c: float = 10.0
) -> float:
    """Test accuracy of an L2-regularised logistic regression fitted on the frozen features (inverse strength c)."""
    probe = LogisticRegression(C=c, max_iter=2000)
    return float(probe.fit(train_x, train_y).score(test_x, test_y))


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], float]


def few_shot_curve(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    shots: list[int],
    seeds: int = 5,
    score: Scorer | None = None,
) -> dict[int, tuple[float, float]]:
    """Test accuracy for each number of labelled examples per class: {shots: (mean, std over seeds)}.

    `score(train_x, train_y, test_x, test_y)` fits and scores one adaptation method on the drawn examples (default
    `linear_probe_accuracy`; pass e.g. `nearest_neighbour_accuracy`). Few-shot results swing with which examples
    are drawn, so each point averages `seeds` random draws.
    """
    score = score or linear_probe_accuracy
    curve = {}
    for k in shots:
        accs = [
            score(train_x[idx], train_y[idx], test_x, test_y)
            for idx in (few_shot_indices(train_y, k, seed) for seed in range(seeds))
        ]
        curve[k] = (float(np.mean(accs)), float(np.std(accs)))
    return curve


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, k: int = 5) -> float:
    """Test accuracy of a k-nearest-neighbour vote under cosine distance on the frozen features."""
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine")
    return float(knn.fit(train_x, train_y).score(test_x, test_y))


def nearest_neighbour_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """`knn_accuracy` with one neighbour: the few-shot form, usable from one labelled example per class."""
    return knn_accuracy(train_x, train_y, test_x, test_y, k=1)
