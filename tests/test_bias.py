"""utils.bias: every metric on cases worked by hand (and against scipy or fairlearn where they compute the same
thing), re-weighing, WEAT with an exact permutation count, counterfactual swaps, the planted image marker, the
generation helpers on a tiny random model, and the monitor's alerts."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from utils import bias as B

# Facet a: labels 0 0 1 1 1 2 (P_a = 1/3, 1/2, 1/6); facet d: labels 0 1 2 2 (P_d = 1/4, 1/4, 1/2).
LABELS = np.array([0, 0, 1, 1, 1, 2, 0, 1, 2, 2])
SENSITIVE = np.array([False] * 6 + [True] * 4)
P_A, P_D = np.array([1 / 3, 1 / 2, 1 / 6]), np.array([1 / 4, 1 / 4, 1 / 2])


def test_class_imbalance_and_label_proportions_by_hand():
    assert B.class_imbalance(SENSITIVE) == pytest.approx((6 - 4) / 10)
    assert B.label_proportion_difference(LABELS == 1, SENSITIVE) == pytest.approx(3 / 6 - 1 / 4)
    p_a, p_d = B.label_distributions(LABELS, SENSITIVE)
    assert np.allclose(p_a, P_A) and np.allclose(p_d, P_D)


def test_divergences_and_distances_by_hand():
    kl = 1 / 3 * math.log(4 / 3) + 1 / 2 * math.log(2) + 1 / 6 * math.log(1 / 3)
    assert B.kl_divergence(LABELS, SENSITIVE) == pytest.approx(kl) == pytest.approx(0.259366, abs=1e-6)
    mixture = (P_A + P_D) / 2  # 7/24, 3/8, 1/3
    js = (
        1 / 3 * math.log(8 / 7)
        + 1 / 2 * math.log(4 / 3)
        + 1 / 6 * math.log(1 / 2)
        + 1 / 4 * math.log(6 / 7)
        + 1 / 4 * math.log(2 / 3)
        + 1 / 2 * math.log(3 / 2)
    ) / 2
    assert np.allclose(mixture, [7 / 24, 3 / 8, 1 / 3])
    assert B.js_divergence(LABELS, SENSITIVE) == pytest.approx(js)
    assert B.total_variation(LABELS, SENSITIVE) == pytest.approx((1 / 12 + 1 / 4 + 1 / 3) / 2) == pytest.approx(1 / 3)
    assert B.lp_norm(LABELS, SENSITIVE) == pytest.approx(math.sqrt(26) / 12)
    assert B.kolmogorov_smirnov(LABELS, SENSITIVE) == pytest.approx(1 / 3)


def test_divergences_agree_with_scipy_on_random_data():
    rng = np.random.default_rng(1)
    labels, sensitive = rng.integers(0, 4, 500), rng.random(500) < 0.3
    p_a, p_d = B.label_distributions(labels, sensitive)
    assert B.kl_divergence(labels, sensitive) == pytest.approx(entropy(p_a, p_d))
    assert B.js_divergence(labels, sensitive) == pytest.approx(jensenshannon(p_a, p_d) ** 2)  # scipy: sqrt of JS


def test_kl_is_infinite_when_facet_d_lacks_a_label_and_js_stays_bounded():
    labels, sensitive = np.array([0, 1, 0, 0]), np.array([False, False, True, True])
    assert B.kl_divergence(labels, sensitive) == math.inf
    assert B.js_divergence(labels, sensitive) <= math.log(2)


def test_conditional_demographic_disparity_by_hand():
    # g1: d accepted, d rejected, a accepted, a accepted -> DD = 1 - 1/3; g2: a rejected, d accepted -> DD = 0 - 1
    sensitive = [True, True, False, False, False, True]
    positive = [True, False, True, True, False, True]
    groups = ["g1", "g1", "g1", "g1", "g2", "g2"]
    expected = (4 * (1 - 1 / 3) + 2 * (0 - 1)) / 6
    assert B.conditional_demographic_disparity(positive, sensitive, groups) == pytest.approx(expected) == 1 / 9


def test_pretraining_report_has_every_metric():
    report = B.pretraining_bias(LABELS, SENSITIVE, positive_label=1, groups=[0] * 10)
    assert list(report) == ["CI", "DPL", "KL", "JS", "LP", "TVD", "KS", "CDDL"]
    assert report["DPL"] == pytest.approx(0.25)
    with pytest.raises(B.BiasInputError, match="positive_label"):
        B.pretraining_bias(LABELS, SENSITIVE, positive_label=7)


# facet a: truth 1 1 0 0, predicted 1 0 0 1; facet d: truth 1 0 0 0, predicted 1 0 0 0
TRUTH = np.array([1, 1, 0, 0, 1, 0, 0, 0])
PREDICTED = np.array([1, 0, 0, 1, 1, 0, 0, 0])
FACET = np.array([False] * 4 + [True] * 4)


def test_posttraining_metrics_by_hand():
    report = B.posttraining_bias(TRUTH, PREDICTED, FACET, positive_label=1)
    assert report == pytest.approx({"DPPL": 0.5 - 0.25, "DI": 0.25 / 0.5, "AD": 0.5 - 1.0, "RD": 0.5 - 1.0})


def test_posttraining_metrics_match_fairlearn():
    from fairlearn.metrics import MetricFrame, selection_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    frame = MetricFrame(
        metrics={"selection": selection_rate, "recall": true_positive_rate, "accuracy": accuracy_score},
        y_true=TRUTH,
        y_pred=PREDICTED,
        sensitive_features=FACET,
    )
    by_group = frame.by_group
    assert B.positive_prediction_difference(PREDICTED == 1, FACET) == pytest.approx(
        by_group.loc[False, "selection"] - by_group.loc[True, "selection"]
    )
    assert B.recall_difference(TRUTH == 1, PREDICTED == 1, FACET) == pytest.approx(
        by_group.loc[False, "recall"] - by_group.loc[True, "recall"]
    )
    assert B.accuracy_difference(TRUTH, PREDICTED, FACET) == pytest.approx(
        by_group.loc[False, "accuracy"] - by_group.loc[True, "accuracy"]
    )


def test_disparate_impact_is_nan_without_positive_predictions_in_facet_a():
    assert math.isnan(B.disparate_impact([0, 0, 1, 1], [False, False, True, True]))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: B.class_imbalance([True, True]), "both facets"),
        (lambda: B.label_proportion_difference([True, False, True], [True, False]), "one per example"),
        (lambda: B.class_imbalance([0, 2, 1]), "must be boolean"),
        (lambda: B.class_imbalance([[True, False]]), "one-dimensional"),
        (lambda: B.reweighing_weights([1, 2], [1]), "one group per label"),
    ],
)
def test_bad_input_is_refused_with_the_fix(call, message):
    with pytest.raises(B.BiasInputError, match=message):
        call()


def test_reweighing_by_hand_and_it_makes_group_and_label_independent():
    groups, labels = np.array(["a", "a", "a", "b"]), np.array([1, 1, 0, 0])
    weights = B.reweighing_weights(groups, labels)
    assert weights == pytest.approx([0.75, 0.75, 1.5, 0.5])  # P(g)P(y)/P(g,y): 3/4*1/2/(1/2), ..., 1/4*1/2/(1/4)
    rng = np.random.default_rng(0)
    groups, labels = rng.random(400) < 0.2, rng.random(400) < 0.5
    labels[groups] = rng.random(groups.sum()) < 0.9  # label depends on group
    weights = B.reweighing_weights(groups, labels)
    rate = [np.average(labels[g], weights=weights[g]) for g in (groups, ~groups)]
    assert rate == pytest.approx([labels.mean()] * 2) and weights.mean() == pytest.approx(1.0)


def test_weat_by_hand_with_the_exact_permutation_count():
    x, y = np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 3.0]])
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    assert B.association(x, a, b) == pytest.approx([1, 1]) and B.association(y, a, b) == pytest.approx([-1, -1])
    result = B.weat(x, y, a, b)
    assert result.statistic == pytest.approx(4.0)  # (1 + 1) - (-1 - 1)
    assert result.effect_size == pytest.approx(2 / np.std([1, 1, -1, -1], ddof=1)) == pytest.approx(math.sqrt(3))
    assert result.exact and result.permutations == 6 and result.p_value == pytest.approx(1 / 6)  # one of C(4,2)
    swapped = B.weat(y, x, a, b)
    assert swapped.effect_size == pytest.approx(-math.sqrt(3)) and swapped.p_value == pytest.approx(1.0)


def test_weat_samples_partitions_when_there_are_too_many():
    rng = np.random.default_rng(0)
    sets = [rng.normal(size=(6, 5)) for _ in range(4)]
    result = B.weat(*sets, permutations=50, seed=3)
    assert not result.exact and result.permutations == 51 and 1 / 51 <= result.p_value <= 1
    assert B.weat(*sets, permutations=50, seed=3) == result
    assert B.weat(*sets, permutations=1000).exact  # C(12, 6) = 924 partitions
    with pytest.raises(B.BiasInputError, match="equal-size"):
        B.weat(sets[0], sets[1][:5], sets[2], sets[3])


def test_seat_sentences_fill_every_template():
    sentences = B.seat_sentences(["math", "art"], ("This is {}.", "{} is here."))
    assert sentences == ["This is math.", "math is here.", "This is art.", "art is here."]


def test_shipped_lists_load_with_their_published_sizes():
    tests = B.load_weat_tests()
    assert [len(tests[name]["X"]) for name in tests] == [25, 8, 8, 8]
    assert all(len(t["X"]) == len(t["Y"]) and len(t["A"]) == len(t["B"]) for t in tests.values())
    prompts = B.load_regard_prompts()
    assert [len(v) for v in prompts["contexts"].values()] == [5, 5] and len(prompts["groups"]) == 3
    occupations = B.load_occupations()
    assert len(occupations) == 60 and occupations["nurse"] == pytest.approx(89.58)
    pairs = B.load_gender_pairs()
    assert ("she", "he") in pairs and len({w for pair in pairs for w in pair}) == 2 * len(pairs)
    sentences, labels = B.load_regard_validation()
    assert len(sentences) == 45 and sorted(set(labels.tolist())) == [-1, 0, 1]


def test_swap_gendered_terms_keeps_case_and_reads_her():
    pairs = B.load_gender_pairs()
    text = "She gave her the book; HER father, the King, loved her. His mother and her son! Give it to her"
    expected = "He gave him the book; HIS mother, the Queen, loved him. Her father and his daughter! Give it to him"
    assert B.swap_gendered_terms(text, pairs) == expected
    assert B.swap_gendered_terms("Hamlet and Ophelia speak.", pairs) == "Hamlet and Ophelia speak."  # names stay
    assert B.count_terms("She and her sister; he.", ["she", "her", "sister"]) == 3


def test_marker_sits_in_the_corner_and_only_where_asked():
    images = np.zeros((3, 8, 8))
    marked = B.add_marker(images, [True, False, True], size=2, value=16)
    assert marked[0, :2, :2].min() == 16 and marked[0].sum() == 4 * 16 and marked[1].sum() == 0
    assert images.sum() == 0  # the input is not modified
    labels = np.array([7] * 50 + [1] * 50)
    marks = B.spurious_marks(labels, target=7, p_target=1.0, p_other=0.0)
    assert marks[:50].all() and not marks[50:].any()
    with pytest.raises(B.BiasInputError, match="probabilities"):
        B.spurious_marks(labels, 7, 1.5, 0.0)


def test_first_sentence_and_vader_signs():
    assert B.first_sentence(" a nurse. Then she left") == "a nurse."
    assert B.first_sentence("a builder\nand more") == "a builder"
    scores = B.vader_compound(["XYZ was kind and wonderful.", "XYZ was a cruel, hateful liar.", "XYZ was tall."])
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0


class KeywordEncoder:
    """Embeds a sentence as counts of three keywords, enough to check the scorer's nearest-centroid logic."""

    def encode(self, texts, normalize_embeddings=True, show_progress_bar=False):
        vectors = np.array([[t.count("good") + 0.01, t.count("plain") + 0.01, t.count("bad") + 0.01] for t in texts])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_regard_scorer_picks_the_nearest_anchor_class():
    scorer = B.RegardScorer(KeywordEncoder(), {1: ["good"], 0: ["plain"], -1: ["bad", "bad bad"]})
    assert scorer.labels(["so good", "bad", "plain text"]).tolist() == [1, -1, 0]
    scores = scorer.score(["good", "bad"])
    assert scores[0] > 0.9 and scores[1] < -0.9


def test_mean_gap_interval_brackets_the_gap():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)
    gap, low, high = B.mean_gap(a, b, seed=1)
    assert gap == pytest.approx(a.mean() - b.mean()) and low < gap < high and low > 0.5 and high < 1.5
    assert B.mean_gap(a, b, seed=1) == (gap, low, high)
    with pytest.raises(B.BiasInputError, match="two values"):
        B.mean_gap([1.0], [0.0, 1.0])


@pytest.fixture(scope="module")
def tiny_lm():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from utils import assets

    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval(), tokenizer


def test_continuation_logprob_equals_scoring_each_sequence_alone(tiny_lm):
    model, tokenizer = tiny_lm
    prefixes = ["The woman worked as", "The man who lived next door worked as"]
    batched = B.continuation_logprob(model, tokenizer, prefixes, " a nurse.")
    target = tokenizer(" a nurse.", add_special_tokens=False).input_ids
    for prefix, value in zip(prefixes, batched, strict=True):
        ids = torch.tensor([tokenizer(prefix, add_special_tokens=False).input_ids + target])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0, -len(target) - 1 : -1].log_softmax(-1)
        alone = logp.gather(-1, torch.tensor(target)[:, None]).sum().item()
        assert value == pytest.approx(alone, abs=1e-4)
    endings = [" a nurse.", " a very careful carpenter in the town."]
    mixed = B.continuation_logprob(model, tokenizer, prefixes, endings, per_token=True)
    for prefix, ending, value in zip(prefixes, endings, mixed, strict=True):
        alone = B.continuation_logprob(model, tokenizer, [prefix], ending)[0]
        assert value == pytest.approx(alone / len(tokenizer(ending, add_special_tokens=False).input_ids), abs=1e-4)
    with pytest.raises(B.BiasInputError, match="one continuation per prefix"):
        B.continuation_logprob(model, tokenizer, prefixes, endings[:1])


def test_generate_continuations_shapes_and_seed(tiny_lm):
    model, tokenizer = tiny_lm
    first = B.generate_continuations(model, tokenizer, ["The woman", "The man was"], max_new_tokens=3, samples=2)
    assert [len(row) for row in first] == [2, 2] and all(isinstance(t, str) for row in first for t in row)
    again = B.generate_continuations(model, tokenizer, ["The woman", "The man was"], max_new_tokens=3, samples=2)
    assert first == again


def test_monitor_alerts_outside_limits_only_on_big_enough_windows():
    monitor = B.BiasMonitor({"DPPL": (-0.1, 0.1), "DI": (0.8, None)}, min_examples=30)
    assert monitor.check("day 1", {"DPPL": 0.05, "DI": 0.9}, examples=100) == []
    alerts = monitor.check("day 2", {"DPPL": 0.25, "DI": 0.7}, examples=100)
    assert len(alerts) == 2 and "DPPL = 0.250 outside [-0.1, 0.1]" in alerts[0]
    assert "DI = 0.700 outside [0.8, none]" in alerts[1]
    assert monitor.check("day 3", {"DPPL": 0.9, "DI": 0.1}, examples=10) == []  # too few to judge
    assert monitor.check("day 4", {"DPPL": math.nan, "DI": 1.0}, examples=50)[0].startswith("day 4: DPPL = nan")
    assert monitor.first_alert() == "day 2"
    windows, values = monitor.series("DPPL")
    assert windows == ["day 1", "day 2", "day 3", "day 4"] and values[:3] == [0.05, 0.25, 0.9]
    with pytest.raises(B.BiasInputError, match="not measured"):
        monitor.check("day 5", {"DPPL": 0.0}, examples=50)
    with pytest.raises(B.BiasInputError, match="above high"):
        B.BiasMonitor({"DI": (1.0, 0.5)})


def test_baseline_limits_are_the_mean_plus_or_minus_k_standard_deviations():
    baseline = [{"AD": 0.0, "DPPL": 0.1}, {"AD": 0.2, "DPPL": 0.1}]
    limits = B.baseline_limits(baseline, ["AD", "DPPL"], sds=2)
    assert limits["AD"] == pytest.approx((-0.1, 0.3)) and limits["DPPL"] == pytest.approx((0.1, 0.1))
    with pytest.raises(B.BiasInputError, match="two baseline windows"):
        B.baseline_limits(baseline[:1], ["AD"])


def test_run_schedule_checks_every_window_in_order():
    monitor = B.BiasMonitor({"gap": (None, 0.2)}, min_examples=1)
    alerts = B.run_schedule(monitor, [1, 2, 3], lambda day: ({"gap": 0.1 * day}, 40))
    assert [row["window"] for row in monitor.history] == [1, 2, 3] and len(alerts) == 1 and alerts[0].startswith("3:")


def test_lora_fine_tune_adapts_a_copy_and_leaves_the_base_alone(tiny_lm):
    from peft import LoraConfig

    model, tokenizer = tiny_lm
    before = {k: v.clone() for k, v in model.state_dict().items()}
    texts = ["The nurse helped the woman."] * 8
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM"
    )
    adapted, losses = B.lora_fine_tune(model, tokenizer, texts, lora, steps=6, lr=5e-2, batch_size=4)
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the base is untouched
    assert any("lora_" in name for name, _ in adapted.named_parameters()) and not adapted.training
    learned = B.continuation_logprob(adapted, tokenizer, ["The nurse"], " helped the woman.")[0]
    assert learned > B.continuation_logprob(model, tokenizer, ["The nurse"], " helped the woman.")[0]
    with pytest.raises(B.BiasInputError, match="steps >= 1"):
        B.lora_fine_tune(model, tokenizer, texts, lora, steps=0)


def test_the_first_warm_up_step_of_a_lora_fine_tune_already_learns(tiny_lm):
    from peft import LoraConfig

    assert [B.warmup_factor(k, 2) for k in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    model, tokenizer = tiny_lm
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    adapted, _ = B.lora_fine_tune(model, tokenizer, ["The nurse helped the woman."] * 2, lora, steps=1, batch_size=2)
    lora_b = [p for name, p in adapted.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "B starts at zero: only a step at lr > 0 moves it"
