"""Drift statistics against hand-worked values, the delayed-label join and ADWIN, the audit queue, bad input."""

import json
import math

import numpy as np
import pytest

from utils import monitoring as M


def test_psi_matches_a_hand_worked_case():
    # (0.1-0.25)ln(0.4) + (0.2-0.25)ln(0.8) + (0.3-0.25)ln(1.2) + (0.4-0.25)ln(1.6)
    hand = 0.15 * math.log(2.5) + 0.05 * math.log(1.25) + 0.05 * math.log(1.2) + 0.15 * math.log(1.6)
    assert M.psi_from_fractions([0.25] * 4, [0.1, 0.2, 0.3, 0.4]) == pytest.approx(hand, abs=1e-12)
    assert hand == pytest.approx(0.228218, abs=1e-6) and M.severity(hand) == "moderate"


def test_psi_on_quartile_bins_counts_values_as_worked_by_hand():
    reference = np.arange(1, 9)  # quartile edges 2.75, 4.5, 6.25: two values per bin, 0.25 each
    current = [1, 1, 3, 5, 7, 8, 8, 8, 8, 8]  # bins: 2, 1, 1, 6 of 10
    hand = sum((a - 0.25) * math.log(a / 0.25) for a in (0.2, 0.1, 0.1, 0.6))
    assert M.psi(reference, current, bins=4) == pytest.approx(hand, abs=1e-12)
    assert M.psi(reference, reference, bins=4) == 0


def test_psi_of_categories_and_an_empty_bin():
    hand = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - M.PSI_EMPTY_BIN) * math.log(0.5 / M.PSI_EMPTY_BIN)
    assert M.psi_categorical(["a"] * 4, ["a", "b"]) == pytest.approx(hand)


def test_ks_and_chi_squared_against_hand_worked_values():
    ks = M.ks_test([1, 2, 3, 4], [3, 4, 5, 6])  # the CDFs differ most (by 2/4) between 2 and 3
    assert ks["statistic"] == pytest.approx(0.5)
    chi = M.chi_squared_test(["a"] * 10 + ["b"] * 10, ["a"] * 15 + ["b"] * 5)
    # expected counts 12.5 (a) and 7.5 (b) per row, every cell off by 2.5: 2 x 6.25 / 12.5 + 2 x 6.25 / 7.5 = 8/3
    assert chi["statistic"] == pytest.approx(8 / 3) and chi["dof"] == 1
    assert chi["p_value"] == pytest.approx(math.erfc(math.sqrt(8 / 3 / 2)), abs=1e-9)  # chi2(1) survival function


def test_embedding_drift_sees_a_shift_and_not_its_absence():
    rng = np.random.default_rng(0)
    reference, same = rng.normal(size=(40, 8)) + 2, rng.normal(size=(40, 8)) + 2
    shifted = same + np.r_[1.5, np.zeros(7)]
    calm, moved = M.embedding_drift(reference, same, 60), M.embedding_drift(reference, shifted, 60)
    assert moved["distance"] > calm["distance"] and moved["p_value"] < 0.05 < calm["p_value"]
    assert moved["auc"] > 0.7 and abs(calm["auc"] - 0.5) < 0.2


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: M.psi([], [1.0]), "reference is empty"),
        (lambda: M.psi([1.0, float("nan")], [1.0]), "NaN"),
        (lambda: M.psi([1.0, 2.0], [1.0], bins=1), "bins must be at least 2"),
        (lambda: M.psi_from_fractions([0.5, 0.5], [1.0]), "same bins"),
        (lambda: M.psi_from_fractions([0.5, 0.6], [0.5, 0.5]), "sum to 1"),
        (lambda: M.chi_squared_test(["a"], ["a"]), "only one category"),
        (lambda: M.embedding_drift(np.zeros((10, 3)), np.zeros((10, 4))), "same width"),
        (lambda: M.embedding_drift(np.zeros((3, 3)), np.zeros((10, 3))), "at least 5"),
    ],
)
def test_bad_input_gets_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_delayed_labels_join_late_and_adwin_flags_a_rise_in_errors():
    tracker = M.DelayedLabels()
    for i in range(400):
        tracker.predicted(f"r{i}", "comedy", 0.9)
    assert tracker.waiting == 400
    rng = np.random.default_rng(0)
    for i in range(400):  # labels arrive later; the error rate rises from 10% to 60% at the 200th
        tracker.labelled(f"r{i}", "comedy" if rng.random() > (0.1 if i < 200 else 0.6) else "tragedy")
    assert tracker.waiting == 0 and tracker.drifts and 200 <= tracker.drifts[0] < 300
    assert np.nanmean(tracker.accuracy(50)[:200]) > 0.8 > np.nanmean(tracker.accuracy(50)[300:])
    with pytest.raises(KeyError, match="no prediction"):
        tracker.labelled("unknown", "comedy")
    with pytest.raises(ValueError, match="already has the label"):
        tracker.labelled("r0", "comedy")
    with pytest.raises(ValueError, match="already recorded"):
        tracker.predicted("r0", "comedy", 0.5)


def test_audit_queue_samples_reviews_and_writes_each_verdict_at_once(tmp_path):
    queue = M.AuditQueue(tmp_path / "audit.jsonl", rate=0.5, low_confidence=0.4, seed=1)
    reasons = [
        queue.offer({"id": i, "input": f"text {i}", "label": "comedy", "confidence": c})
        for i, c in enumerate([0.9, 0.2, 0.9, 0.9, 0.3, 0.95])
    ]
    assert "low confidence" in reasons or all(r == "random" for r in (reasons[1], reasons[4]))
    assert reasons[1] and reasons[4]  # every low-confidence prediction is queued
    open_items = len(queue.queue)
    queue.review("wrong", "ada")
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 1
    queue.run_scripted(["correct"] * (open_items - 1))
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(lines) == open_items and lines[0]["verdict"] == "wrong" and lines[0]["reviewer"] == "ada"
    assert queue.estimate("random")["reviewed"] + queue.estimate("low confidence")["reviewed"] == open_items
    with pytest.raises(IndexError, match="nothing left"):
        queue.review("correct")
    with pytest.raises(ValueError, match="verdict must be one of"):
        M.AuditQueue(tmp_path / "b.jsonl").review("maybe")
    with pytest.raises(ValueError, match="needs id, input, label and confidence"):
        queue.offer({"id": 1})
