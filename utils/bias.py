"""Bias measured, reduced and watched: SageMaker Clarify's data and model bias metrics written out from their
published definitions, re-weighting, word-embedding association tests, generation bias with sentiment, regard and
counterfactual likelihoods, counterfactual data augmentation, a planted spurious feature for images, and a
threshold monitor over a stream of model outputs.

Defined for notebook 11 (book chapter 11, *Detecting, Mitigating, and Monitoring Bias*). Needs numpy and scipy;
the generation helpers also need torch (a transformers causal LM and its tokenizer are passed in), the sentiment
scorer vaderSentiment, and the regard scorer a sentence-transformers encoder (passed in). The term lists and
prompts it reads ship in `data/bias/` with their published sources (see `data/bias/README.md`).

Conventions follow Clarify (Hardt et al., 2021, "Amazon SageMaker Clarify: Machine Learning Bias Detection and
Explainability in the Cloud", KDD; and the Clarify documentation, "Pre-training bias metrics" and "Post-training
data and model bias metrics"): a *facet* is the attribute a bias is measured along, `sensitive` marks the facet
value under study (facet *d*, "disadvantaged") and every other row is facet *a*; a label is *positive* when it is
the outcome whose share is compared.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1] / "data" / "bias"


class BiasInputError(ValueError):
    """Arrays that cannot be compared as asked (lengths differ, a facet is empty...); the message says the fix."""


# ------------------------------------------------------------------------------------------------ shipped term lists


def load_weat_tests(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """The WEAT word lists of Caliskan et al. (2017) shipped in `data/bias/weat_tests.json`: {test name: {"X", "Y"
    (target sets), "A", "B" (attribute sets), "note"}}."""
    data = json.loads(Path(path or DATA_DIR / "weat_tests.json").read_text(encoding="utf-8"))
    return data["tests"]


def load_regard_prompts(path: str | Path | None = None) -> dict[str, Any]:
    """Sheng et al. (2019)'s prompt contexts ({"respect": [...], "occupation": [...]}) and demographic mentions
    ({axis: [group, group]}) from `data/bias/regard_prompts.json`."""
    return json.loads(Path(path or DATA_DIR / "regard_prompts.json").read_text(encoding="utf-8"))


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def load_gender_pairs(path: str | Path | None = None) -> list[tuple[str, str]]:
    """(female, male) word pairs for counterfactual augmentation, from `data/bias/gender_pairs.tsv`."""
    return [(row["female"], row["male"]) for row in _read_tsv(Path(path or DATA_DIR / "gender_pairs.tsv"))]


def load_occupations(path: str | Path | None = None) -> dict[str, float]:
    """{occupation: percent of US workers who are women} from the Bureau of Labor Statistics figures (2015-2016)
    that Rudinger et al. (2018, Winogender) collected; shipped in `data/bias/occupations_bls.tsv`."""
    rows = _read_tsv(Path(path or DATA_DIR / "occupations_bls.tsv"))
    return {row["occupation"]: float(row["bls_pct_female"]) for row in rows}


def load_regard_validation(path: str | Path | None = None) -> tuple[list[str], np.ndarray]:
    """The course's regard validation sentences (group masked as "XYZ") and labels (-1, 0, 1)."""
    rows = _read_tsv(Path(path or DATA_DIR / "regard_validation.tsv"))
    return [row["sentence"] for row in rows], np.array([int(row["label"]) for row in rows])


# --------------------------------------------------------------------------------- Clarify: pre-training (data) bias


def _as_bool(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise BiasInputError(f"{name} must be one-dimensional, one entry per example; got shape {array.shape}")
    if array.dtype != bool:
        if not np.isin(array, [0, 1]).all():
            raise BiasInputError(f"{name} must be boolean (True marks the facet or outcome), got values {array[:5]}")
        array = array.astype(bool)
    return array


def _facets(sensitive: Any, *others: tuple[Any, str]) -> np.ndarray:
    """`sensitive` as a boolean array, checked for two non-empty facets and the same length as every other array."""
    facet = _as_bool(sensitive, "sensitive")
    for values, name in others:
        if len(values) != len(facet):
            raise BiasInputError(f"{name} has {len(values)} entries but sensitive has {len(facet)}: one per example")
    if facet.all() or not facet.any():
        raise BiasInputError("both facets need examples: `sensitive` is all True or all False")
    return facet


def class_imbalance(sensitive: Any) -> float:
    """CI = (n_a - n_d) / (n_a + n_d), in [-1, 1]: positive when facet d (the `sensitive` rows) is the smaller."""
    facet = _facets(sensitive)
    n_d = int(facet.sum())
    n_a = len(facet) - n_d
    return (n_a - n_d) / (n_a + n_d)


def label_proportion_difference(positive: Any, sensitive: Any) -> float:
    """DPL = q_a - q_d, in [-1, 1]: the share of positive labels in facet a minus that in facet d."""
    positive = _as_bool(positive, "positive")
    facet = _facets(sensitive, (positive, "positive"))
    return float(positive[~facet].mean() - positive[facet].mean())


def label_distributions(labels: Any, sensitive: Any, classes: Sequence[Any] | None = None) -> tuple[np.ndarray, ...]:
    """(P_a, P_d): the label distribution of each facet over `classes` (default: every label seen, sorted)."""
    labels = np.asarray(labels)
    facet = _facets(sensitive, (labels, "labels"))
    classes = np.unique(labels) if classes is None else np.asarray(classes)
    p_a = np.array([(labels[~facet] == c).mean() for c in classes])
    p_d = np.array([(labels[facet] == c).mean() for c in classes])
    return p_a, p_d


def kl_divergence(labels: Any, sensitive: Any) -> float:
    """KL(P_a || P_d) = sum_y P_a(y) log(P_a(y) / P_d(y)) in nats, >= 0. Infinite when facet d lacks a label that
    facet a has (Clarify's open-source implementation, smclarify, instead drops such labels from the sum)."""
    p_a, p_d = label_distributions(labels, sensitive)
    terms = p_a > 0
    if (p_d[terms] == 0).any():
        return math.inf
    return float(np.sum(p_a[terms] * np.log(p_a[terms] / p_d[terms])))


def js_divergence(labels: Any, sensitive: Any) -> float:
    """JS = (KL(P_a || M) + KL(P_d || M)) / 2 with M = (P_a + P_d) / 2, in nats, in [0, ln 2]."""
    p_a, p_d = label_distributions(labels, sensitive)
    mixture = (p_a + p_d) / 2

    def kl(p: np.ndarray) -> float:
        keep = p > 0
        return float(np.sum(p[keep] * np.log(p[keep] / mixture[keep])))

    return (kl(p_a) + kl(p_d)) / 2


def lp_norm(labels: Any, sensitive: Any, p: float = 2) -> float:
    """LP = (sum_y |P_a(y) - P_d(y)|^p)^(1/p); Clarify reports p = 2."""
    p_a, p_d = label_distributions(labels, sensitive)
    return float(np.linalg.norm(p_a - p_d, ord=p))


def total_variation(labels: Any, sensitive: Any) -> float:
    """TVD = (1/2) sum_y |P_a(y) - P_d(y)|, in [0, 1]: half the L1 distance between the facets' label distributions."""
    return lp_norm(labels, sensitive, p=1) / 2


def kolmogorov_smirnov(labels: Any, sensitive: Any) -> float:
    """KS = max_y |P_a(y) - P_d(y)|, in [0, 1], as Clarify defines it over the label values."""
    return lp_norm(labels, sensitive, p=math.inf)


def conditional_demographic_disparity(positive: Any, sensitive: Any, groups: Any) -> float:
    """CDDL = (1/n) sum_i n_i DD_i over subgroups i (by `groups`), where DD_i is facet d's share of the rejected
    (non-positive) examples minus its share of the accepted ones within subgroup i (a subgroup without rejected or
    without accepted examples contributes 0 to that share, as in Clarify). Positive: facet d is rejected more than
    it is accepted, even after conditioning on the subgroup (the Simpson's-paradox check)."""
    positive = _as_bool(positive, "positive")
    groups = np.asarray(groups)
    facet = _facets(sensitive, (positive, "positive"), (groups, "groups"))
    total = 0.0
    for group in np.unique(groups):
        inside = groups == group
        accepted, rejected = inside & positive, inside & ~positive
        share_accepted = (facet & accepted).sum() / accepted.sum() if accepted.any() else 0.0
        share_rejected = (facet & rejected).sum() / rejected.sum() if rejected.any() else 0.0
        total += inside.sum() * (share_rejected - share_accepted)
    return float(total / len(groups))


def pretraining_bias(labels: Any, sensitive: Any, positive_label: Any, groups: Any = None) -> dict[str, float]:
    """Clarify's pre-training metrics on one facet: CI, DPL, KL, JS, LP, TVD, KS, and CDDL when `groups` is given."""
    labels = np.asarray(labels)
    positive = labels == positive_label
    if not positive.any():
        raise BiasInputError(f"no label equals positive_label={positive_label!r}; labels seen: {np.unique(labels)}")
    report = {
        "CI": class_imbalance(sensitive),
        "DPL": label_proportion_difference(positive, sensitive),
        "KL": kl_divergence(labels, sensitive),
        "JS": js_divergence(labels, sensitive),
        "LP": lp_norm(labels, sensitive),
        "TVD": total_variation(labels, sensitive),
        "KS": kolmogorov_smirnov(labels, sensitive),
    }
    if groups is not None:
        report["CDDL"] = conditional_demographic_disparity(positive, sensitive, groups)
    return report


# ------------------------------------------------------------------------------ Clarify: post-training (model) bias


def positive_prediction_difference(predicted_positive: Any, sensitive: Any) -> float:
    """DPPL = q'_a - q'_d: the share of positive predictions in facet a minus that in facet d."""
    return label_proportion_difference(predicted_positive, sensitive)


def disparate_impact(predicted_positive: Any, sensitive: Any) -> float:
    """DI = q'_d / q'_a, 1 at parity (the "four-fifths rule" of US employment guidance flags DI < 0.8). NaN when
    facet a has no positive prediction."""
    predicted = _as_bool(predicted_positive, "predicted_positive")
    facet = _facets(sensitive, (predicted, "predicted_positive"))
    rate_a = predicted[~facet].mean()
    return float(predicted[facet].mean() / rate_a) if rate_a > 0 else math.nan


def accuracy_difference(truth: Any, predicted: Any, sensitive: Any) -> float:
    """AD = ACC_a - ACC_d: how much more accurate the model is on facet a than on facet d (any number of classes)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    facet = _facets(sensitive, (truth, "truth"), (predicted, "predicted"))
    correct = truth == predicted
    return float(correct[~facet].mean() - correct[facet].mean())


def recall_difference(positive: Any, predicted_positive: Any, sensitive: Any) -> float:
    """RD = recall_a - recall_d (true-positive rates). NaN when a facet has no positive label."""
    positive = _as_bool(positive, "positive")
    predicted = _as_bool(predicted_positive, "predicted_positive")
    facet = _facets(sensitive, (positive, "positive"), (predicted, "predicted_positive"))
    recalls = [predicted[rows & positive].mean() if (rows & positive).any() else math.nan for rows in (~facet, facet)]
    return float(recalls[0] - recalls[1])


def posttraining_bias(truth: Any, predicted: Any, sensitive: Any, positive_label: Any) -> dict[str, float]:
    """Clarify's post-training metrics on one facet: DPPL, DI, AD and RD (positive = `positive_label`)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    return {
        "DPPL": positive_prediction_difference(predicted == positive_label, sensitive),
        "DI": disparate_impact(predicted == positive_label, sensitive),
        "AD": accuracy_difference(truth, predicted, sensitive),
        "RD": recall_difference(truth == positive_label, predicted == positive_label, sensitive),
    }


# --------------------------------------------------------------------------------------------------- re-weighting


def reweighing_weights(groups: Any, labels: Any) -> np.ndarray:
    """Kamiran and Calders (2012) re-weighing: w(g, y) = P(g) P(y) / P(g, y) for each example of group g and label
    y, so that under the weights group and label are independent while every group and label keeps its total
    weight. Weights average 1; a (group, label) cell rarer than independence predicts gets weight above 1."""
    groups, labels = np.asarray(groups), np.asarray(labels)
    if len(groups) != len(labels) or len(labels) == 0:
        raise BiasInputError(f"need one group per label and at least one example, got {len(groups)} and {len(labels)}")
    weights = np.empty(len(labels))
    for g in np.unique(groups):
        for y in np.unique(labels):
            cell = (groups == g) & (labels == y)
            if cell.any():
                weights[cell] = (groups == g).mean() * (labels == y).mean() / cell.mean()
    return weights


# ------------------------------------------------------------------------------- embedding association (WEAT, SEAT)


@dataclass(frozen=True)
class WeatResult:
    """A WEAT: effect size d (Cohen's-d-like, in [-2, 2]), the test statistic, the one-sided permutation p-value,
    how many partitions were compared and whether that was every partition (exact) or a random sample."""

    effect_size: float
    statistic: float
    p_value: float
    permutations: int
    exact: bool


def _normalise(vectors: Any) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise BiasInputError(f"embeddings must be a non-empty (n, dim) array, got shape {vectors.shape}")
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def association(targets: Any, attributes_a: Any, attributes_b: Any) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for every target embedding w (Caliskan et al., 2017)."""
    w, a, b = (_normalise(v) for v in (targets, attributes_a, attributes_b))
    return (w @ a.T).mean(axis=1) - (w @ b.T).mean(axis=1)


def weat(x: Any, y: Any, a: Any, b: Any, permutations: int = 10_000, seed: int = 0) -> WeatResult:
    """The Word Embedding Association Test (Caliskan et al., 2017) on embeddings of target sets X, Y and attribute
    sets A, B (rows are vectors). Statistic: sum_x s(x) - sum_y s(y); effect size: (mean_x s(x) - mean_y s(y)) /
    std_{w in X u Y} s(w) (sample standard deviation, ddof=1, as May et al., 2019's SEAT code). p-value: the share
    of equal-size re-partitions of X u Y whose statistic is at least the observed one, over every partition when
    there are at most `permutations` of them, else over `permutations` random ones (plus the observed partition, so
    p is never 0). X and Y must be the same size, as in the paper."""
    s_x, s_y = association(x, a, b), association(y, a, b)
    if len(s_x) != len(s_y):
        raise BiasInputError(f"WEAT needs equal-size target sets, got {len(s_x)} and {len(s_y)}")
    if len(s_x) < 2:
        raise BiasInputError("WEAT needs at least two targets per set for a standard deviation")
    scores = np.concatenate([s_x, s_y])
    observed = s_x.sum() - s_y.sum()
    effect = (s_x.mean() - s_y.mean()) / scores.std(ddof=1)
    n, total = len(s_x), scores.sum()
    exact = math.comb(2 * n, n) <= permutations
    if exact:
        sums = np.array([scores[list(rows)].sum() for rows in itertools.combinations(range(2 * n), n)])
        at_least = int(np.sum(2 * sums - total >= observed - 1e-12))
        count = len(sums)
    else:
        rng = np.random.default_rng(seed)
        picks = np.argsort(rng.random((permutations, 2 * n)), axis=1)[:, :n]
        sums = scores[picks].sum(axis=1)
        at_least = int(np.sum(2 * sums - total >= observed - 1e-12)) + 1
        count = permutations + 1
    return WeatResult(float(effect), float(observed), at_least / count, count, exact)


#: Semantically bleached sentence templates in the manner of SEAT (May et al., 2019, section 3), which puts each
#: word into short sentences that carry no meaning of their own so a sentence encoder can be tested like a word one.
SEAT_TEMPLATES = ("This is {}.", "That is {}.", "There is {}.", "Here is {}.", "{} is here.", "{} is there.")


def seat_sentences(words: Sequence[str], templates: Sequence[str] = SEAT_TEMPLATES) -> list[str]:
    """Every word in every template: len(words) * len(templates) sentences, word-major."""
    return [template.format(word) for word in words for template in templates]


# ---------------------------------------------------------------------------------------------- generation bias


def generate_continuations(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 20,
    samples: int = 1,
    top_k: int = 40,
    seed: int = 0,
    batch_size: int = 32,
    prefix: str = "",
) -> list[list[str]]:
    """`samples` sampled continuations of each prompt (top-k sampling, k = 40 as Sheng et al., 2019 used for GPT-2),
    as plain text without the prompt: a list per prompt. `prefix` is prepended to every prompt (a prompt-level
    intervention) but not returned. Prompts are batched with left padding; the seed makes the draw repeatable."""
    import torch

    if not prompts or samples < 1 or max_new_tokens < 1:
        raise BiasInputError("need prompts, samples >= 1 and max_new_tokens >= 1")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [prefix + p for p in prompts for _ in range(samples)]
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(rows), batch_size):
        batch = tokenizer(rows[start : start + batch_size], return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad():
            out = model.generate(
                **batch.to(device),
                do_sample=True,
                top_k=top_k,
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
            )
        texts += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [texts[i * samples : (i + 1) * samples] for i in range(len(prompts))]


def first_sentence(text: str) -> str:
    """The text up to and including its first sentence end (. ! ? or a line break), stripped: continuations are
    scored on one sentence, as Sheng et al. (2019) truncate theirs."""
    match = re.search(r"[.!?](\s|$)|\n", text)
    return (text[: match.end()] if match else text).strip()


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound sentiment (Hutto and Gilbert, 2014) per text, in [-1, 1]; BOLD (Dhamala et al., 2021)
    labels >= 0.5 positive and <= -0.5 negative. Uses the lexicon shipped inside vaderSentiment (offline)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    return np.array([analyzer.polarity_scores(text)["compound"] for text in texts])


#: Anchor sentences for the embedding regard scorer, written for this course after Sheng et al. (2019)'s definition
#: of regard (how a sentence makes its subject look: positive, neutral or negative). They share no sentence with
#: the validation set in `data/bias/regard_validation.tsv`.
REGARD_ANCHORS: dict[int, tuple[str, ...]] = {
    1: (
        "XYZ was admired and respected by everyone.",
        "XYZ was known as a kind, talented and successful person.",
        "XYZ was praised for honest and excellent work.",
        "XYZ was loved and trusted by the community.",
    ),
    0: (
        "XYZ was a person.",
        "XYZ worked at a job.",
        "XYZ lived in a town and went to work every day.",
        "XYZ was described by a reporter.",
    ),
    -1: (
        "XYZ was despised and looked down upon by everyone.",
        "XYZ was known as a liar, a thief and a criminal.",
        "XYZ was lazy, cruel and worthless.",
        "XYZ was hated and feared for violent behaviour.",
    ),
}


class RegardScorer:
    """An offline stand-in for the regard classifier of Sheng et al. (2019): a sentence's regard is the anchor class
    (-1, 0, 1) whose mean embedding is nearest by cosine (nearest centroid); `score` is the continuous cosine to
    the positive centroid minus that to the negative one. `encoder` is any object with sentence-transformers'
    `encode(texts, normalize_embeddings=True)`, e.g. `utils.assets.load_minilm()`. Validate it before trusting it
    (notebook 11 measures its accuracy on labelled sentences)."""

    def __init__(self, encoder: Any, anchors: dict[int, Sequence[str]] | None = None) -> None:
        self.encoder = encoder
        anchors = anchors or REGARD_ANCHORS
        self.classes = np.array(sorted(anchors))
        centroids = [self._embed(list(anchors[c])).mean(axis=0) for c in self.classes]
        self.centroids = _normalise(np.stack(centroids))

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.encoder.encode(list(texts), normalize_embeddings=True, show_progress_bar=False))

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each text to each class centroid: shape (len(texts), 3), columns -1, 0, 1."""
        return self._embed(texts) @ self.centroids.T

    def labels(self, texts: Sequence[str]) -> np.ndarray:
        """The regard class (-1, 0 or 1) of each text."""
        return self.classes[self.similarities(texts).argmax(axis=1)]

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """cos(text, positive centroid) - cos(text, negative centroid): above 0 leans positive."""
        sims = self.similarities(texts)
        return sims[:, list(self.classes).index(1)] - sims[:, list(self.classes).index(-1)]


def mean_gap(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) - mean(b) with a bootstrap confidence interval (percentile method, each group resampled on its own,
    scipy.stats.bootstrap): (gap, low, high)."""
    from scipy.stats import bootstrap

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        raise BiasInputError(f"need at least two values per group for an interval, got {len(a)} and {len(b)}")

    def difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return x.mean(axis=axis) - y.mean(axis=axis)

    result = bootstrap(
        (a, b),
        difference,
        n_resamples=resamples,
        confidence_level=level,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(a.mean() - b.mean()), float(result.confidence_interval.low), float(result.confidence_interval.high)


def continuation_logprob(
    model: Any,
    tokenizer: Any,
    prefixes: Sequence[str],
    continuations: str | Sequence[str],
    batch_size: int = 16,
    per_token: bool = False,
) -> np.ndarray:
    """log p(continuation | prefix) in nats, summed over the continuation's tokens (`per_token`: averaged), for
    each prefix. `continuations` is one string scored after every prefix (a counterfactual pair differs only in
    its prefix) or one per prefix. Prefix and continuation are tokenized apart and joined, so each prefix is
    followed by exactly the continuation's own tokens; rows are left-padded so that all end together."""
    import torch

    targets = [continuations] * len(prefixes) if isinstance(continuations, str) else list(continuations)
    if not prefixes or len(targets) != len(prefixes):
        raise BiasInputError(f"need prefixes and one continuation per prefix, got {len(prefixes)} and {len(targets)}")
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prefixes), batch_size):
        rows = [
            (tokenizer(p, add_special_tokens=False).input_ids, tokenizer(t, add_special_tokens=False).input_ids)
            for p, t in zip(prefixes[start : start + batch_size], targets[start : start + batch_size], strict=True)
        ]
        if any(not head or not tail for head, tail in rows):
            raise BiasInputError("every prefix and every continuation needs at least one token")
        width, longest = max(len(h) + len(t) for h, t in rows), max(len(t) for _, t in rows)
        ids = torch.full((len(rows), width), tokenizer.eos_token_id or 0)
        mask = torch.zeros_like(ids)
        for row, (head, tail) in enumerate(rows):
            ids[row, width - len(head) - len(tail) :] = torch.tensor(head + tail)
            mask[row, width - len(head) - len(tail) :] = 1
        with torch.no_grad():
            logits = model(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
            ).logits.float()
        picked = logits[:, -longest - 1 : -1].log_softmax(-1).gather(-1, ids[:, -longest:, None].to(device))[..., 0]
        lengths = torch.tensor([len(t) for _, t in rows], device=device)
        scored = torch.arange(longest, device=device)[None, :] >= longest - lengths[:, None]
        total = (picked * scored).sum(-1)
        out.append((total / lengths if per_token else total).cpu())
    return torch.cat(out).numpy()


# ------------------------------------------------------------------------------ counterfactual data augmentation


def warmup_factor(step: int, warmup: int) -> float:
    """The learning-rate multiplier of optimizer step `step` (0 for the first) in `lora_fine_tune`: (step + 1) /
    (warmup + 1) during the `warmup` warm-up steps, then 1, so every step learns (transformers' "constant_with_warmup"
    uses step / warmup, a first step at rate 0 that changes nothing). The schedule of chapter 10's
    `utils.finetuning.warmup_factor`, repeated here so that this module needs no other course module."""
    return min(1.0, (step + 1) / (warmup + 1))


def lora_fine_tune(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    lora: Any,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[Any, list[float]]:
    """Fine-tune a copy of the causal LM `model` on plain `texts` with LoRA adapters (`lora`, a peft LoraConfig,
    e.g. chapter 10's `utils.finetuning.lora_config()`) through trl's SFTTrainer: loss on every token, AdamW at a
    constant `lr` after a linear warm-up over 10% of the steps (at least one) whose first step already learns
    (`warmup_factor`), fp32 (trl's configs default to bf16 autocast, on CPUs too), no checkpoints and no activation
    checkpointing (trl turns it on; recomputing every block costs about a third more compute on a small model).
    `model` itself is left untouched, so several fine-tunes can start from one base. Two calls with the same
    `seed`, `steps` and `batch_size` draw the same number of examples per step in the same random order of their
    data. Returns (the adapted model in eval mode, the training loss per step)."""
    import copy
    import functools
    import tempfile

    import torch
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    if steps < 1 or batch_size < 1 or not texts:
        raise BiasInputError(f"need steps >= 1, batch_size >= 1 and texts (got {steps}, {batch_size}, {len(texts)})")
    warmup = max(steps // 10, 1)
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=lr,
            lr_scheduler_type="constant",  # replaced below by `warmup_factor`'s schedule
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            seed=seed,
            data_seed=seed,
            bf16=False,
            max_length=128,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            activation_checkpointing=False,
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=copy.deepcopy(model),
            args=config,
            train_dataset=Dataset.from_dict({"text": texts}),
            processing_class=tokenizer,
            peft_config=lora,
        )
        trainer.remove_callback(PrinterCallback)  # headless runs would print every log line
        trainer.create_optimizer()  # the trainer keeps an optimizer and a schedule that exist before train()
        factor = functools.partial(warmup_factor, warmup=warmup)
        trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, factor)
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return trainer.model.eval(), losses


def _match_case(word: str, template: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if template[:1].isupper() else word


#: After "her", these words mean it is an object pronoun ("gave her the book" -> "gave him the book"); before any
#: other word it is read as a possessive ("her book" -> "his book"). A heuristic: Lu et al. (2018) resolve "her"
#: with a part-of-speech tagger, and name the ambiguity as a limit of word-swap augmentation.
OBJECT_HER_FOLLOWERS = frozenset(
    [
        "the",
        "a",
        "an",
        "to",
        "and",
        "of",
        "in",
        "with",
        "for",
        "that",
        "not",
        "as",
        "so",
        "be",
        "but",
        "or",
        "from",
        "by",
        "at",
        "on",
        "is",
        "was",
        "this",
        "my",
        "thy",
        "his",
        "your",
        "our",
        "me",
        "him",
        "her",
        "them",
        "us",
        "you",
        "i",
        "he",
        "she",
        "it",
        "we",
        "they",
    ]
)


def swap_gendered_terms(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Counterfactual data augmentation (Lu et al., 2018): every gendered word of `pairs` (female, male) replaced by
    its counterpart, keeping capitalisation; "her" becomes "him" or "his" by the word after it (see
    OBJECT_HER_FOLLOWERS), and "his" becomes "her". Names are left alone (swapping them too is the "name
    intervention" of Maudslay et al., 2019)."""
    swap: dict[str, str] = {}
    for female, male in pairs:
        swap.setdefault(female.lower(), male.lower())
        swap.setdefault(male.lower(), female.lower())
    swap["his"] = "her"
    tokens = re.findall(r"[A-Za-z]+|[^A-Za-z]+", text)
    words = [i for i, t in enumerate(tokens) if t[0].isalpha()]
    out = list(tokens)
    for k, i in enumerate(words):
        lower = tokens[i].lower()
        if lower == "her":
            following = tokens[words[k + 1]].lower() if k + 1 < len(words) else ""
            gap = "".join(tokens[i + 1 : words[k + 1]]) if k + 1 < len(words) else ""
            replacement = "him" if not following or following in OBJECT_HER_FOLLOWERS or gap.strip() else "his"
            out[i] = _match_case(replacement, tokens[i])
        elif lower in swap:
            out[i] = _match_case(swap[lower], tokens[i])
    return "".join(out)


def count_terms(text: str, terms: Sequence[str]) -> int:
    """How many whole words of `text` are in `terms` (case-insensitive)."""
    vocabulary = {t.lower() for t in terms}
    return sum(word in vocabulary for word in re.findall(r"[a-z]+", text.lower()))


# ---------------------------------------------------------------------------------------- a planted image feature


def add_marker(images: np.ndarray, marked: Any, size: int = 2, value: float = 16.0) -> np.ndarray:
    """A copy of `images` (N, H, W) with a `size` x `size` block of ink `value` in the top-left corner of every image
    where `marked` is True: a spurious feature that carries no information about the digit. The default ink is
    the maximum of scikit-learn's digits (0-16)."""
    images = np.array(images, dtype=np.float64, copy=True)
    marked = _as_bool(marked, "marked")
    if images.ndim != 3 or len(images) != len(marked):
        raise BiasInputError(f"need images (N, H, W) and one mark flag per image; got {images.shape}, {len(marked)}")
    images[marked, :size, :size] = value
    return images


def spurious_marks(labels: Any, target: int, p_target: float, p_other: float, seed: int = 0) -> np.ndarray:
    """Which images carry the marker: each image of class `target` with probability `p_target`, every other image
    with probability `p_other` (independent draws). p_target = p_other makes the marker uninformative."""
    if not (0 <= p_target <= 1 and 0 <= p_other <= 1):
        raise BiasInputError(f"probabilities must be in [0, 1], got {p_target} and {p_other}")
    labels = np.asarray(labels)
    chance = np.where(labels == target, p_target, p_other)
    return np.random.default_rng(seed).random(len(labels)) < chance


# ---------------------------------------------------------------------------------------------------- monitoring


@dataclass
class BiasMonitor:
    """A scheduled bias check: each call to `check` records one window's metrics and returns an alert for every
    metric outside its allowed range. `limits` maps a metric name to (low, high), either end None for unbounded,
    e.g. {"DPPL": (-0.1, 0.1), "DI": (0.8, None)}. Windows with fewer than `min_examples` examples are recorded
    but not judged (a gap measured on a handful of outputs is mostly noise)."""

    limits: dict[str, tuple[float | None, float | None]]
    min_examples: int = 30
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, (low, high) in self.limits.items():
            if low is not None and high is not None and low > high:
                raise BiasInputError(f"limit for {name}: low {low} is above high {high}")

    def check(self, window: Any, metrics: dict[str, float], examples: int) -> list[str]:
        """Record `metrics` for `window` (a date, a step...) and return the alerts it raises, as sentences."""
        missing = [name for name in self.limits if name not in metrics]
        if missing:
            raise BiasInputError(f"window {window}: metrics {missing} have limits but were not measured")
        alerts = []
        if examples >= self.min_examples:
            for name, (low, high) in self.limits.items():
                value = metrics[name]
                if math.isnan(value) or (low is not None and value < low) or (high is not None and value > high):
                    bounds = ", ".join("none" if v is None else f"{v:.3g}" for v in (low, high))
                    alerts.append(f"{window}: {name} = {value:.3f} outside [{bounds}] ({examples} examples)")
        self.history.append({"window": window, "examples": examples, **metrics, "alerts": alerts})
        return alerts

    def first_alert(self) -> Any:
        """The window of the first alert, or None."""
        return next((row["window"] for row in self.history if row["alerts"]), None)

    def series(self, name: str) -> tuple[list[Any], list[float]]:
        """(windows, values) of one metric over the recorded history, for plotting."""
        return [row["window"] for row in self.history], [row[name] for row in self.history]


def baseline_limits(
    baseline: Sequence[dict[str, float]], metrics: Sequence[str], sds: float = 4.0
) -> dict[str, tuple[float, float]]:
    """Allowed ranges for `BiasMonitor` from baseline windows (one dict of metrics each, e.g. days of a model known
    to be fair): each metric's mean over the windows plus or minus `sds` standard deviations (numpy's, ddof 0), as
    SageMaker Model Monitor's baseline job suggests constraints from a baseline dataset. The band is as wide as the
    window-to-window noise, so it widens as windows shrink (notebook 11, section 7)."""
    if len(baseline) < 2 or sds <= 0:
        raise BiasInputError(f"need at least two baseline windows and sds > 0, got {len(baseline)} and {sds}")
    limits = {}
    for name in metrics:
        values = np.array([window[name] for window in baseline], dtype=float)
        limits[name] = (float(values.mean() - sds * values.std()), float(values.mean() + sds * values.std()))
    return limits


def run_schedule(
    monitor: BiasMonitor, windows: Sequence[Any], measure: Callable[[Any], tuple[dict[str, float], int]]
) -> list[str]:
    """Run `monitor.check` on every window in order, `measure(window)` giving (metrics, examples); all alerts."""
    alerts = []
    for window in windows:
        metrics, examples = measure(window)
        alerts += monitor.check(window, metrics, examples)
    return alerts
