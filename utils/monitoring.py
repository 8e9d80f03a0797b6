"""Watching a deployed model: data drift, embedding drift, quality drift once labels arrive, and a human audit queue.

Defined for notebook 14 (book chapter 14, *MLOps for vision and language*). Standalone: numpy, scipy, scikit-learn,
river (streaming drift detectors), and ipywidgets for the audit widget.

- **Data drift** on a feature of incoming requests against a reference sample: the population stability index
  (`psi`, on the reference's quantile bins), the two-sample Kolmogorov-Smirnov test (`scipy.stats.ks_2samp`) for a
  number, Pearson's chi-squared test of homogeneity (`scipy.stats.chi2_contingency`) for a category.
  PSI = sum_i (a_i - e_i) ln(a_i / e_i) over bins, e_i the reference's fraction and a_i the current one; the rule
  of thumb below 0.1 no shift, 0.1-0.25 a moderate one, above 0.25 a major one is from credit scoring (Siddiqi,
  *Credit Risk Scorecards*, 2006), a convention rather than a test.
- **Embedding drift** (`embedding_drift`): the cosine distance between the mean embeddings of the two samples, with
  a permutation p-value, and the cross-validated ROC AUC of a classifier that tries to tell the samples apart (0.5:
  it cannot; the classifier two-sample test of Lopez-Paz and Oquab, ICLR 2017).
- **Quality drift with delayed labels** (`DelayedLabels`): predictions are recorded when served; labels arrive
  later (a reviewer, a user's correction); each label is joined to its prediction, and the stream of correct/wrong
  feeds a `river` ADWIN detector (Bifet and Gavalda, SDM 2007), which flags a change in the error rate.
- **Human-in-the-loop audit** (`AuditQueue`): a seeded random sample of predictions (an unbiased estimate of
  accuracy) plus every low-confidence one (where errors concentrate; a biased sample, reported apart), reviewed in
  an ipywidgets panel whose buttons call `review` - the same design as chapter 10's `LabellingSession`, so a
  script or test reviews exactly as a person does (`run_scripted`). Each verdict is appended to a JSON-lines file
  at once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

PSI_EMPTY_BIN = 1e-4  # fraction given to an empty bin so ln(a/e) stays finite (a common choice; any small value)
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25  # Siddiqi (2006) rule of thumb


def _numbers(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError(f"{what} is empty: drift needs at least one value on each side")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} holds NaN or infinite values; drop or impute them before measuring drift")
    return array


def psi_from_fractions(expected: Sequence[float], actual: Sequence[float], empty: float = PSI_EMPTY_BIN) -> float:
    """PSI of two binned distributions given as fractions per bin (each summing to 1): sum (a - e) ln(a / e), with
    empty bins raised to `empty`."""
    e, a = np.asarray(expected, dtype=float), np.asarray(actual, dtype=float)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"expected and actual need the same bins, got shapes {e.shape} and {a.shape}")
    if (e < 0).any() or (a < 0).any() or not np.isclose(e.sum(), 1) or not np.isclose(a.sum(), 1):
        raise ValueError("fractions must be non-negative and sum to 1 on each side")
    e, a = np.maximum(e, empty), np.maximum(a, empty)
    return float(np.sum((a - e) * np.log(a / e)))


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """PSI of a numeric feature: bins at the reference's quantiles (deciles by default, so each holds about a tenth
    of the reference), the current sample counted in the same bins, values outside the reference's range in the
    end bins."""
    ref, cur = _numbers(reference, "reference"), _numbers(current, "current")
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1))[1:-1])
    count = len(edges) + 1
    expected = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=count) / ref.size
    actual = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=count) / cur.size
    return psi_from_fractions(expected, actual)


def psi_categorical(reference: Sequence[Any], current: Sequence[Any]) -> float:
    """PSI of a categorical feature: one bin per category seen on either side."""
    categories = sorted(set(reference) | set(current), key=str)
    if not len(reference) or not len(current):
        raise ValueError("reference and current must both hold at least one value")
    ref, cur = np.array([str(x) for x in reference]), np.array([str(x) for x in current])
    expected = np.array([(ref == str(c)).mean() for c in categories])
    actual = np.array([(cur == str(c)).mean() for c in categories])
    return psi_from_fractions(expected, actual)


def severity(value: float) -> str:
    """The PSI rule of thumb: "none" below 0.1, "moderate" to 0.25, "major" above."""
    return "none" if value < PSI_MODERATE else "moderate" if value <= PSI_MAJOR else "major"


def ks_test(reference: Sequence[float], current: Sequence[float]) -> dict[str, float]:
    """Two-sample Kolmogorov-Smirnov test: the largest gap between the two empirical CDFs and its p-value."""
    result = stats.ks_2samp(_numbers(reference, "reference"), _numbers(current, "current"))
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue)}


def chi_squared_test(reference: Sequence[Any], current: Sequence[Any]) -> dict[str, float]:
    """Pearson's chi-squared test that two samples of a category come from one distribution (a 2 x k table of
    counts; categories seen on neither side are absent). Needs at least two categories in all."""
    if not len(reference) or not len(current):
        raise ValueError("reference and current must both hold at least one value")
    categories = sorted(set(map(str, reference)) | set(map(str, current)))
    if len(categories) < 2:
        raise ValueError(f"only one category ({categories[0]!r}) on both sides: there is nothing to compare")
    table = np.array([[sum(str(x) == c for x in side) for c in categories] for side in (reference, current)])
    result = stats.chi2_contingency(table, correction=False)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue), "dof": int(result.dof)}


def drift_report(reference: Sequence[float], current: Sequence[float]) -> dict[str, Any]:
    """PSI (with its severity) and the KS test of one numeric feature."""
    value = psi(reference, current)
    return {"psi": value, "severity": severity(value), **{f"ks_{k}": v for k, v in ks_test(reference, current).items()}}


def embedding_drift(reference: np.ndarray, current: np.ndarray, permutations: int = 200, seed: int = 0) -> dict:
    """Drift between two samples of embeddings (rows): `distance`, the cosine distance between their means;
    `p_value`, the share of `permutations` random re-splits of the pooled rows whose distance is at least as large
    (with the +1 correction, so never 0); `auc`, the 5-fold cross-validated ROC AUC of a logistic regression telling
    current from reference (0.5: indistinguishable)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError(f"embeddings must be 2-D with the same width, got {ref.shape} and {cur.shape}")
    if min(len(ref), len(cur)) < 5:
        raise ValueError(f"need at least 5 embeddings on each side, got {len(ref)} and {len(cur)}")

    def distance(a: np.ndarray, b: np.ndarray) -> float:
        ma, mb = a.mean(0), b.mean(0)
        return float(1 - ma @ mb / (np.linalg.norm(ma) * np.linalg.norm(mb)))

    observed = distance(ref, cur)
    pooled, rng = np.concatenate([ref, cur]), np.random.default_rng(seed)
    null = [
        distance(pooled[order[: len(ref)]], pooled[order[len(ref) :]])
        for order in (rng.permutation(len(pooled)) for _ in range(permutations))
    ]
    p_value = (1 + sum(d >= observed for d in null)) / (1 + permutations)
    labels = np.r_[np.zeros(len(ref)), np.ones(len(cur))]
    auc = cross_val_score(LogisticRegression(max_iter=1000), pooled, labels, cv=5, scoring="roc_auc").mean()
    return {"distance": observed, "p_value": float(p_value), "auc": float(auc)}


# ------------------------------------------------------------------------------------ quality with delayed labels


@dataclass
class DelayedLabels:
    """Predictions recorded when served, labels joined when they arrive; the correct/wrong stream, in label
    arrival order, feeds river's ADWIN (`delta`: its confidence parameter, river's default 0.002)."""

    delta: float = 0.002
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: list[tuple[str, bool]] = field(default_factory=list)  # (prediction id, correct) in arrival order
    drifts: list[int] = field(default_factory=list)  # positions in `outcomes` where ADWIN flagged a change

    def __post_init__(self) -> None:
        from river import drift

        self.detector = drift.ADWIN(delta=self.delta)

    def predicted(self, prediction_id: str, label: str, confidence: float) -> None:
        """Record a served prediction (its id is what the label will come back with)."""
        if prediction_id in self.predictions:
            raise ValueError(f"prediction {prediction_id!r} is already recorded; ids must be unique")
        if not 0 <= confidence <= 1:
            raise ValueError(f"confidence must be in [0, 1], got {confidence}")
        self.predictions[prediction_id] = {"label": label, "confidence": confidence, "truth": None}

    def labelled(self, prediction_id: str, truth: str) -> bool:
        """Join a label that arrived to its prediction; returns whether the prediction was right."""
        if prediction_id not in self.predictions:
            raise KeyError(f"no prediction {prediction_id!r} was recorded; a label must name a served prediction")
        record = self.predictions[prediction_id]
        if record["truth"] is not None:
            raise ValueError(f"prediction {prediction_id!r} already has the label {record['truth']!r}")
        record["truth"] = truth
        correct = record["label"] == truth
        self.outcomes.append((prediction_id, correct))
        self.detector.update(0.0 if correct else 1.0)
        if self.detector.drift_detected:
            self.drifts.append(len(self.outcomes) - 1)
        return correct

    def accuracy(self, window: int) -> np.ndarray:
        """Accuracy over the last `window` labels, after each label (NaN until `window` labels arrived)."""
        correct = np.array([c for _, c in self.outcomes], dtype=float)
        out = np.full(len(correct), np.nan)
        sums = np.convolve(correct, np.ones(window), mode="valid") / window
        out[window - 1 :] = sums
        return out

    @property
    def waiting(self) -> int:
        """Predictions still without a label."""
        return sum(r["truth"] is None for r in self.predictions.values())


# ------------------------------------------------------------------------------------------------ audit queue


class AuditQueue:
    """Predictions sampled for a person to check: each with probability `rate` (seeded), and every one whose
    confidence is below `low_confidence`. `review(verdict)` records the verdict on the next queued item and
    appends it to `path` (JSON lines) at once; `widget()` shows the item with one button per verdict."""

    VERDICTS = ("correct", "wrong", "unsure")

    def __init__(self, path: str | Path, rate: float = 0.05, low_confidence: float = 0.5, seed: int = 0) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.path, self.rate, self.low_confidence = Path(path), rate, low_confidence
        self.rng = random.Random(seed)
        self.queue: list[dict[str, Any]] = []
        self.reviewed: list[dict[str, Any]] = []

    def offer(self, item: dict[str, Any]) -> str | None:
        """Consider a served prediction ({"id", "input", "label", "confidence"}); returns why it was queued
        ("random" or "low confidence") or None."""
        if not {"id", "input", "label", "confidence"} <= set(item):
            raise ValueError(f"an audit item needs id, input, label and confidence; got {sorted(item)}")
        reason = "random" if self.rng.random() < self.rate else None
        if reason is None and item["confidence"] < self.low_confidence:
            reason = "low confidence"
        if reason:
            self.queue.append(dict(item, reason=reason))
        return reason

    def review(self, verdict: str, reviewer: str = "reviewer") -> dict[str, Any]:
        """Record the verdict on the oldest unreviewed item and append it to the file."""
        if verdict not in self.VERDICTS:
            raise ValueError(f"verdict must be one of {self.VERDICTS}, got {verdict!r}")
        if len(self.reviewed) >= len(self.queue):
            raise IndexError("nothing left to review: every queued prediction has a verdict")
        record = dict(self.queue[len(self.reviewed)], verdict=verdict, reviewer=reviewer)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.reviewed.append(record)
        return record

    def run_scripted(self, verdicts: Sequence[str], reviewer: str = "script") -> list[dict[str, Any]]:
        """Review headless, one verdict per queued item still open, exactly as the buttons would."""
        if len(verdicts) != len(self.queue) - len(self.reviewed):
            raise ValueError(f"{len(verdicts)} verdicts for {len(self.queue) - len(self.reviewed)} open items")
        return [self.review(verdict, reviewer) for verdict in verdicts]

    def estimate(self, reason: str = "random") -> dict[str, float]:
        """Accuracy among reviewed items queued for `reason` ("unsure" left out), with their count. Only the random
        sample estimates the accuracy of all traffic; the low-confidence one is biased towards errors."""
        judged = [r for r in self.reviewed if r["reason"] == reason and r["verdict"] != "unsure"]
        accuracy = sum(r["verdict"] == "correct" for r in judged) / len(judged) if judged else float("nan")
        return {"reviewed": len(judged), "accuracy": accuracy}

    def widget(self) -> Any:
        """An ipywidgets panel: the input, the model's label and confidence, and one button per verdict."""
        import ipywidgets as w

        text = w.HTML()
        buttons = [w.Button(description=verdict) for verdict in self.VERDICTS]

        def refresh() -> None:
            if len(self.reviewed) >= len(self.queue):
                text.value = f"<b>Done</b>: {len(self.reviewed)} verdicts appended to {self.path.name}"
                return
            item = self.queue[len(self.reviewed)]
            model = f"<b>model:</b> {item['label']} ({item['confidence']:.0%})"
            text.value = f"<p>{len(self.reviewed) + 1}/{len(self.queue)} ({item['reason']})</p><p>{item['input']}</p>"
            text.value += f"<p>{model}</p>"

        for button, verdict in zip(buttons, self.VERDICTS, strict=True):
            button.on_click(lambda _, v=verdict: (self.review(v), refresh()))
        refresh()
        return w.VBox([text, w.HBox(buttons)])
