"""Evaluating adapted models honestly: what a run cost (wall time, peak resident memory read from the process while
it runs), classification quality with a bootstrap interval, contamination between fine-tuning and test data, rater
agreement (Cohen's kappa) and win rates.

Defined for notebook 10 (book chapter 10, *Fine-Tuning and Evaluating*); chapters 11 and 14 reuse the metrics.
Metrics come from scikit-learn (`evaluate.load` needs the model hub for every metric, so the course does not use
it). Needs numpy, psutil and scikit-learn.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import psutil
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

# ------------------------------------------------------------------------------------------- cost of a run


@dataclass
class Usage:
    """What a block of code cost: wall seconds, and the process's resident memory (MB) before it and at its peak
    (sampled every `interval` seconds by a background thread, so a spike shorter than that can be missed)."""

    seconds: float = 0.0
    start_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0

    @property
    def added_mb(self) -> float:
        """Peak resident memory above what the process held when the block started."""
        return self.peak_rss_mb - self.start_rss_mb


@contextmanager
def measure(interval: float = 0.01) -> Iterator[Usage]:
    """Time a block and track the peak resident set size (RSS) of this process while it runs:

        with measure() as usage:
            trainer.train()
        print(usage.seconds, usage.peak_rss_mb, usage.added_mb)

    RSS is what the operating system reports the process holds in RAM (psutil), so it counts every allocator:
    PyTorch's tensors, Python objects and libraries alike."""
    process = psutil.Process()
    usage = Usage(start_rss_mb=process.memory_info().rss / 2**20)
    usage.peak_rss_mb = usage.start_rss_mb
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            usage.peak_rss_mb = max(usage.peak_rss_mb, process.memory_info().rss / 2**20)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield usage
    finally:
        usage.seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        usage.peak_rss_mb = max(usage.peak_rss_mb, process.memory_info().rss / 2**20)


def run_measured(command: Sequence[str], interval: float = 0.01) -> tuple[subprocess.CompletedProcess, Usage]:
    """Run `command` in a fresh process (stdout and stderr captured as text) and measure it from outside: wall
    seconds, and its peak resident memory in MB (with any processes it starts), sampled every `interval` seconds.

    From outside, because on Linux a process's own `ru_maxrss` also counts the pages it shared with its parent at
    fork: `benchmarks/lora_vs_full.py`'s LoRA child (and a rank-32 copy of it), started from a notebook kernel holding
    5 GB, reported 5,098 MB both times, and 2,839 MB when started from a shell. `start_rss_mb` is 0."""
    process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watched, usage, streams = psutil.Process(process.pid), Usage(), {}
    reader = threading.Thread(target=lambda: streams.update(zip(("out", "err"), process.communicate(), strict=True)))
    start = time.perf_counter()
    reader.start()
    while reader.is_alive():
        try:
            rss = sum(p.memory_info().rss for p in [watched, *watched.children(recursive=True)])
            usage.peak_rss_mb = max(usage.peak_rss_mb, rss / 2**20)
        except psutil.Error:  # it ended between the check and the read
            pass
        reader.join(interval)
    usage.seconds = time.perf_counter() - start
    return subprocess.CompletedProcess(process.args, process.returncode, streams["out"], streams["err"]), usage


# ------------------------------------------------------------------------------------------- classification


def classification_metrics(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy, macro-averaged F1 (each class counts equally) and the confusion matrix (rows: truth, columns:
    prediction, in `labels` order), from scikit-learn. Raises ValueError for unequal lengths or unknown labels."""
    if len(truth) != len(predicted) or not truth:
        raise ValueError(f"need equally many, non-zero truths and predictions, got {len(truth)} and {len(predicted)}")
    unknown = (set(truth) | set(predicted)) - set(labels)
    if unknown:
        raise ValueError(f"labels {sorted(unknown)} are not in {list(labels)}")
    return {
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, labels=list(labels), average="macro", zero_division=0)),
        "confusion": confusion_matrix(truth, predicted, labels=list(labels)),
    }


def bootstrap_interval(correct: Sequence[bool], samples: int = 2000, level: float = 0.95, seed: int = 0):
    """Percentile bootstrap interval (low, high) of the accuracy of 0/1 outcomes `correct`: the test set is
    resampled with replacement `samples` times (Efron & Tibshirani, 1993). With 90 test examples the interval
    is about +-10 points wide, which is what separates a real difference from noise."""
    values = np.asarray(correct, dtype=float)
    if values.size == 0:
        raise ValueError("no outcomes to bootstrap")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (samples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def method_result(
    truth: Sequence[str],
    predicted: Sequence[str],
    labels: Sequence[str],
    trainable: int = 0,
    train: Usage | None = None,
    train_tokens: int = 0,
    test: Usage | None = None,
) -> dict:
    """One method's row of a comparison table: test accuracy with its bootstrap interval (`low`, `high`), macro F1,
    the confusion matrix and the predictions, next to what it trained (`trainable` parameters) and what it cost:
    training seconds and tokens per second (`train_tokens` over `train.seconds`; NaN without training), peak
    resident memory (MB) over training and testing, and test seconds (notebook 10's table)."""
    if test is None:
        raise ValueError("need the test run's Usage (from `measure()`) to report its time and memory")
    metrics = classification_metrics(truth, predicted, labels)
    low, high = bootstrap_interval([p == t for p, t in zip(predicted, truth, strict=True)])
    return {
        "accuracy": metrics["accuracy"],
        "low": low,
        "high": high,
        "macro_f1": metrics["macro_f1"],
        "trainable": trainable,
        "train_s": train.seconds if train else 0.0,
        "train_tok_s": train_tokens / train.seconds if train and train.seconds > 0 else float("nan"),
        "peak_mb": max(u.peak_rss_mb for u in (train, test) if u),
        "test_s": test.seconds,
        "confusion": metrics["confusion"],
        "predicted": list(predicted),
    }


def accuracy_by_group(truth: Sequence[str], predicted: Sequence[str], groups: Sequence[str]) -> dict[str, dict]:
    """Accuracy within each group of items (for instance each test play), where a leak or a shift helps some items
    and not others: {group: {"accuracy", "correct", "items"}}, groups in order of first appearance."""
    if not len(truth) == len(predicted) == len(groups) or not truth:
        raise ValueError(
            f"need one truth, prediction and group per item, got {len(truth)}, {len(predicted)}, {len(groups)}"
        )
    out: dict[str, dict] = {}
    for t, p, g in zip(truth, predicted, groups, strict=True):
        row = out.setdefault(g, {"correct": 0, "items": 0})
        row["correct"] += int(t == p)
        row["items"] += 1
    return {g: {"accuracy": r["correct"] / r["items"], **r} for g, r in out.items()}


def describe_result(name: str, result: dict) -> str:
    """One line: a `method_result`'s accuracy with its 95% interval and macro F1."""
    return (
        f"{name}: accuracy {result['accuracy']:.1%} (95% CI {result['low']:.0%}-{result['high']:.0%}), "
        f"F1 {result['macro_f1']:.2f}"
    )


def comparison_table(results: dict[str, dict]) -> str:
    """`method_result` rows, by method name, as a fixed-width text table (notebook 10's one table)."""
    header = ["accuracy", "95% CI", "F1", "trainable", "train s", "tok/s", "peak MB", "test s"]
    widths = [8, 10, 5, 12, 8, 7, 8, 7]
    lines = [f"{'method':27} " + " ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True))]
    for name, r in results.items():
        lines.append(
            f"{name:27} {r['accuracy']:8.1%} {r['low']:5.0%}-{r['high']:<4.0%} {r['macro_f1']:5.2f} "
            f"{r['trainable']:12,} {r['train_s']:8.1f} {r['train_tok_s']:7,.0f} {r['peak_mb']:8,.0f} {r['test_s']:7.1f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- contamination


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower())


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of lower-cased word n-grams of `text` (punctuation and line breaks ignored)."""
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def contamination_report(train: Sequence[str], test: Sequence[str], n: int = 8, near: float = 0.5) -> dict:
    """How much of the test set the fine-tuning data already contains, three ways:

    - `exact`: test texts identical to a training text after lower-casing and dropping punctuation;
    - `near`: test texts with at least `near` of their word n-grams found in one single training text;
    - `ngram`: test texts sharing at least one word n-gram with the training data (GPT-3's contamination check,
      Brown et al., 2020, appendix C, used 13-grams over documents; 8-grams suit passages of a few dozen words).

    Returns the counts, the fractions of the test set and the indices of the flagged test texts."""
    if not train or not test:
        raise ValueError("need training and test texts to compare")
    if n < 1 or not 0 < near <= 1:
        raise ValueError(f"need n >= 1 and 0 < near <= 1, got n={n}, near={near}")
    key = [hashlib.sha1(" ".join(_words(t)).encode()).hexdigest() for t in train]
    seen = set(key)
    index: dict[tuple[str, ...], set[int]] = {}
    for i, text in enumerate(train):
        for gram in word_ngrams(text, n):
            index.setdefault(gram, set()).add(i)
    exact, near_dups, shared = [], [], []
    for j, text in enumerate(test):
        if hashlib.sha1(" ".join(_words(text)).encode()).hexdigest() in seen:
            exact.append(j)
        grams = word_ngrams(text, n)
        hits = Counter(i for gram in grams for i in index.get(gram, ()))
        if hits:
            shared.append(j)
            if grams and max(hits.values()) / len(grams) >= near:
                near_dups.append(j)
    found = {"exact": exact, "near": near_dups, "ngram": shared}
    return {kind: {"count": len(ids), "fraction": len(ids) / len(test), "indices": ids} for kind, ids in found.items()}


# ---------------------------------------------------------------------------------------- raters and judges


def cohens_kappa(rater_a: Sequence[str], rater_b: Sequence[str]) -> float:
    """Cohen's kappa (1960) between two raters' labels of the same items: agreement beyond what their label
    frequencies would give by chance; 1 is perfect, 0 is chance level, below 0 worse than chance (scikit-learn).
    By Landis & Koch's (1977) reading, 0.41-0.60 is moderate and 0.61-0.80 substantial agreement."""
    if len(rater_a) != len(rater_b) or len(rater_a) < 2:
        raise ValueError(f"need the same items rated by both raters (at least 2), got {len(rater_a)}, {len(rater_b)}")
    if len(set(rater_a) | set(rater_b)) < 2:
        raise ValueError("both raters gave one and the same label to every item: kappa is undefined")
    return float(cohen_kappa_score(rater_a, rater_b))


def win_rate(
    candidate: Sequence[float], baseline: Sequence[float], level: float = 0.95, samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Share of items where the candidate's score beats the baseline's, ties counted as half a win (as in
    AlpacaEval and Chatbot Arena tables), with the raw wins, ties and losses, and a `level` percentile bootstrap
    interval (`low`, `high`) over the items (scipy.stats.bootstrap, `samples` resamples): each item's outcome is
    1, 0.5 or 0, and the items are resampled with replacement. With 24 items the interval is about +-20 points."""
    from scipy.stats import bootstrap

    a, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"need one candidate and one baseline score per item, got {a.shape} and {b.shape}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    outcome = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    wins, ties = int((a > b).sum()), int((a == b).sum())
    rate = float(outcome.mean())
    if np.ptp(outcome) == 0:  # every item alike: no resample differs, the interval is the point
        low = high = rate
    else:
        found = bootstrap(
            (outcome,),
            np.mean,
            confidence_level=level,
            n_resamples=samples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(found.confidence_interval.low), float(found.confidence_interval.high)
    return {"win_rate": rate, "low": low, "high": high, "wins": wins, "ties": ties, "losses": a.size - wins - ties}
