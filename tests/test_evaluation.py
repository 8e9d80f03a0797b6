"""Measured cost of a block (time, peak resident memory), classification metrics, the bootstrap interval, the
contamination check, Cohen's kappa and win rates."""

import sys

import numpy as np
import pytest

from utils import evaluation as ev


def test_measure_sees_a_temporary_allocation():
    with ev.measure(interval=0.005) as usage:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched so it is resident
        del block
    assert usage.seconds > 0
    assert usage.added_mb > 150, usage  # the peak saw the array even though it was freed before the end
    assert usage.peak_rss_mb >= usage.start_rss_mb


def test_run_measured_reads_the_child_not_the_parent():
    held = np.ones(300 * 2**20 // 8)  # 300 MiB resident in this process, which a forked child starts out sharing
    child = "import numpy as np; x = np.ones(100 * 2**20 // 8); print(x.sum() > 0)"
    done, usage = ev.run_measured([sys.executable, "-c", child], interval=0.005)
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr
    assert 90 < usage.peak_rss_mb < 250 < held.nbytes / 2**20, usage  # its 100 MiB and numpy, not our 300
    assert usage.seconds > 0 and ev.run_measured([sys.executable, "-c", "raise SystemExit(3)"])[0].returncode == 3


def test_classification_metrics():
    truth = ["comedy", "comedy", "history", "tragedy"]
    labels = ["comedy", "history", "tragedy"]
    metrics = ev.classification_metrics(truth, ["comedy", "history", "history", "tragedy"], labels)
    assert metrics["accuracy"] == 0.75
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert metrics["confusion"].tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="not in"):
        ev.classification_metrics(["x"], ["comedy"], ["comedy"])
    with pytest.raises(ValueError, match="equally many"):
        ev.classification_metrics(["comedy"], [], ["comedy"])


def test_accuracy_by_group():
    found = ev.accuracy_by_group(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["x", "x", "y", "y"])
    assert found == {"x": {"accuracy": 0.5, "correct": 1, "items": 2}, "y": {"accuracy": 1.0, "correct": 2, "items": 2}}
    with pytest.raises(ValueError, match="one truth, prediction and group"):
        ev.accuracy_by_group(["a"], ["a"], [])


def test_bootstrap_interval_brackets_the_accuracy():
    correct = [True] * 60 + [False] * 30
    low, high = ev.bootstrap_interval(correct)
    assert low < 2 / 3 < high and 0.1 < high - low < 0.3
    assert ev.bootstrap_interval([True] * 5) == (1.0, 1.0)
    with pytest.raises(ValueError, match="no outcomes"):
        ev.bootstrap_interval([])


def test_contamination_report_finds_planted_copies():
    train = [
        "Now is the winter of our discontent made glorious summer by this sun of York",
        "If music be the food of love, play on; give me excess of it",
    ]
    test = [
        "now is the WINTER of our discontent, made glorious summer by this sun of york",  # exact after normalising
        "If music be the food of love play on and on and on",  # shares an 8-gram, and most of its 8-grams
        "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar",
    ]  # clean
    report = ev.contamination_report(train, test, n=8)
    assert report["exact"]["indices"] == [0]
    assert report["ngram"]["indices"] == [0, 1]
    assert report["near"]["indices"] == [0]  # test 1 shares 1 of its 5 8-grams: not a near duplicate at 0.5
    assert ev.contamination_report(train, test, n=8, near=0.2)["near"]["indices"] == [0, 1]
    assert report["ngram"]["fraction"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="need training and test"):
        ev.contamination_report([], test)


def test_cohens_kappa():
    assert ev.cohens_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    # observed agreement 0.5, chance agreement 0.5 (both raters split 50/50): kappa 0
    assert ev.cohens_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="same items"):
        ev.cohens_kappa(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="undefined"):
        ev.cohens_kappa(["a", "a"], ["a", "a"])


def test_win_rate_counts_ties_as_half():
    result = ev.win_rate([3, 1, 2, 2], [1, 2, 2, 0])
    assert {k: result[k] for k in ("win_rate", "wins", "ties", "losses")} == {
        "win_rate": 0.625,
        "wins": 2,
        "ties": 1,
        "losses": 1,
    }
    assert result["low"] <= 0.625 <= result["high"]
    with pytest.raises(ValueError, match="one candidate and one baseline"):
        ev.win_rate([1, 2], [1])
    with pytest.raises(ValueError, match="level"):
        ev.win_rate([1, 2], [0, 1], level=95)


def test_win_rate_interval_agrees_with_wilson_and_shrinks_with_items():
    from scipy.stats import binomtest

    rng = np.random.default_rng(0)
    for n in (30, 300):
        wins = rng.random(n) < 0.7  # no ties: outcomes are 0/1, a binomial proportion
        result = ev.win_rate(wins.astype(float), np.full(n, 0.5))
        wilson = binomtest(int(wins.sum()), n).proportion_ci(0.95, method="wilson")
        assert result["low"] == pytest.approx(wilson.low, abs=0.04)
        assert result["high"] == pytest.approx(wilson.high, abs=0.04)
    assert result["high"] - result["low"] < 0.12  # 300 items: about +-5 points
    alike = ev.win_rate([2, 2, 2], [1, 1, 1])
    assert (alike["low"], alike["win_rate"], alike["high"]) == (1.0, 1.0, 1.0)


def test_method_result_row_and_table():
    truth = ["a", "b", "a", "b"]
    train, test = ev.Usage(2.0, 100.0, 300.0), ev.Usage(0.5, 100.0, 250.0)
    row = ev.method_result(truth, ["a", "b", "b", "b"], ["a", "b"], 10, train, 400, test)
    assert row["accuracy"] == 0.75 and row["low"] <= 0.75 <= row["high"]
    assert row["train_tok_s"] == 200.0 and row["peak_mb"] == 300.0 and row["test_s"] == 0.5
    assert row["confusion"].tolist() == [[1, 1], [0, 2]]
    untrained = ev.method_result(truth, truth, ["a", "b"], test=test)
    assert untrained["train_s"] == 0.0 and np.isnan(untrained["train_tok_s"]) and untrained["peak_mb"] == 250.0
    assert ev.describe_result("m", row).startswith("m: accuracy 75.0% (95% CI")
    table = ev.comparison_table({"trained": row, "zero-shot": untrained}).splitlines()
    assert len(table) == 3 and table[0].startswith("method") and "75.0%" in table[1] and "nan" in table[2]
    with pytest.raises(ValueError, match="test run"):
        ev.method_result(truth, truth, ["a", "b"])
