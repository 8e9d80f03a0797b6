"""Preference pairs on disk, the labelling session (headless and through its widget's buttons), the judges, the
DPO loss by hand and as trl's DPOTrainer computes it, reward scores and the KL estimate."""

import json
import math

import pytest
import tiny_models
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from utils import assets
from utils import preference as pref
from utils.finetuning import lora_config


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.smollm2_tokenizer()


def tiny_llama(tokenizer):
    return tiny_models.tiny_llama(tokenizer, eos_token_id=tokenizer.eos_token_id)


PAIRS = [
    {
        "prompt": "Next line?\n\nNow is the winter of our discontent",
        "chosen": "Made glorious summer by this sun",
        "rejected": "Sure! Here is the next line.",
    },
    {
        "prompt": "Next line?\n\nIf music be the food of love, play on;",
        "chosen": "Give me excess of it",
        "rejected": "I am not sure.",
    },
]


def test_dpo_loss_by_hand():
    # margin = (-10 - -11) - (-12 - -11) = 2; loss = -log sigmoid(0.5 * 2) = log(1 + e^-1)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = torch.tensor([[-10.0], [-12.0], [-11.0], [-11.0]])
    loss = pref.dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    same = pref.dpo_loss(torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-3.0]), torch.tensor([-4.0]))
    assert same.item() == pytest.approx(math.log(2))  # policy == reference: no preference yet
    with pytest.raises(ValueError, match="beta"):
        pref.dpo_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0)


def test_dpo_loss_equals_trl(tokenizer, tmp_path):
    config = lora_config(rank=4)
    config.init_lora_weights = False  # the policy differs from the reference from the start
    trainer = pref.dpo_trainer(
        tiny_llama(tokenizer), tokenizer, PAIRS, tmp_path, steps=1, beta=0.3, batch_size=2, lora=config
    )
    assert not trainer.args.bf16 or torch.cuda.is_available()  # fp32 on CPUs, where trl would default to bf16
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
    policy = trainer.model.eval()
    prompts = [p["prompt"] for p in PAIRS]
    kinds = ("chosen", "rejected")
    logps = {k: pref.sequence_logprobs(policy, tokenizer, prompts, [p[k] for p in PAIRS]) for k in kinds}
    with policy.disable_adapter():
        ref = {k: pref.sequence_logprobs(policy, tokenizer, prompts, [p[k] for p in PAIRS]) for k in kinds}
    ours = pref.dpo_loss(logps["chosen"], logps["rejected"], ref["chosen"], ref["rejected"], beta=0.3).mean()
    assert ours.item() == pytest.approx(trl_loss, abs=1e-4)
    assert ours.item() != pytest.approx(math.log(2), abs=1e-3)


def test_pairs_round_trip_and_bad_records_write_nothing(tmp_path):
    path = tmp_path / "pairs.jsonl"
    assert pref.append_pairs(path, PAIRS) == 2
    assert pref.read_pairs(path) == PAIRS
    with pytest.raises(pref.PreferenceError, match=r"record 1: fields \['chosen'\]"):
        pref.append_pairs(path, [PAIRS[0], {"prompt": "x", "chosen": "", "rejected": "y"}])
    with pytest.raises(pref.PreferenceError, match="same text"):
        pref.validate_pair({"prompt": "x", "chosen": "y", "rejected": "y"})
    assert len(pref.read_pairs(path)) == 2  # nothing appended by the failed call
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(pref.PreferenceError, match=r"pairs.jsonl:3: not JSON"):
        pref.read_pairs(path)
    with pytest.raises(FileNotFoundError, match="label some pairs"):
        pref.read_pairs(tmp_path / "missing.jsonl")


def test_labelling_headless_and_by_buttons_write_the_same_format(tmp_path):
    items = [{"prompt": p["prompt"], "first": p["chosen"], "second": p["rejected"]} for p in PAIRS] * 3
    session = pref.LabellingSession(items, tmp_path / "scripted.jsonl", rater="script", seed=1)
    assert {item["swapped"] for item in session.items} == {True, False}  # both display orders occur
    labels = session.run_scripted(["first", "first", "second", "tie", "first", "first"])
    assert labels == ["first", "first", "second", "tie", "first", "first"]
    written = pref.read_pairs(tmp_path / "scripted.jsonl")
    assert len(written) == 5 and written[2]["chosen"] == PAIRS[0]["rejected"]
    assert all(
        r["chosen"] == PAIRS[i % 2]["chosen"]
        for i, r in zip([0, 1, 4, 5], [written[k] for k in (0, 1, 3, 4)], strict=True)
    )
    with pytest.raises(pref.PreferenceError, match="already labelled"):
        session.answer("A")
    clicked = pref.LabellingSession(items[:1], tmp_path / "clicked.jsonl", rater="human", seed=1)
    panel = clicked.widget()
    a, _ = clicked.shown(0)
    panel.children[1].children[0].click()  # the "A is better" button
    record = json.loads((tmp_path / "clicked.jsonl").read_text())
    assert record["chosen"] == a and record["rater"] == "human" and "Done" in panel.children[0].value
    with pytest.raises(pref.PreferenceError, match="choice must be"):
        pref.LabellingSession(items[:1], tmp_path / "x.jsonl", "r").answer("C")
    with pytest.raises(pref.PreferenceError, match="scripted answers"):
        pref.LabellingSession(items[:2], tmp_path / "x.jsonl", "r").run_scripted(["first"])


def test_verse_rule_scores_verse_above_chat():
    assert pref.verse_rule("Made glorious summer by this sun of York;") == 3  # metre, no chat, new; no archaic word
    assert pref.verse_rule("O, what a rogue and peasant slave art thou!") == 4
    assert pref.verse_rule("O, what a rogue and peasant slave art thou!", prompt="what a rogue and peasant") == 3
    assert pref.verse_rule("Sure! Here is the next line:\nThe sun") == 1  # only "new words"
    assert pref.verse_rule("") == 0
    assert [pref.syllables(w) for w in ("summer", "discontent", "the", "time")] == [2, 3, 1, 1]


def test_rule_reward_is_the_verse_rule_against_each_prompt_in_either_format():
    prompt, line = "Next line?\n\nO, what a rogue and peasant", "O, what a rogue and peasant slave art thou!"
    plain = pref.rule_reward([prompt, prompt], [line, "Sure! Here is the next line:\nThe sun"])
    chat = pref.rule_reward([pref.chat(prompt)], [[{"role": "assistant", "content": line}]])
    assert plain == [3.0, 1.0] and chat == [3.0]  # the copied run "what a rogue and peasant" costs the point
    with pytest.raises(ValueError, match="1 prompts but 2 completions"):
        pref.rule_reward([prompt], [line, line])


def test_reward_scores_and_pairwise_accuracy(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=1
    )
    bert = BertForSequenceClassification(config)
    rm_tokenizer = AutoTokenizer.from_pretrained(assets.verify("minilm"))
    bert.resize_token_embeddings(len(rm_tokenizer))
    prompts = [p["prompt"] for p in PAIRS]
    scores = pref.reward_scores(bert, rm_tokenizer, prompts, [p["chosen"] for p in PAIRS], batch_size=1)
    assert scores.shape == (2,)
    assert torch.allclose(scores, pref.reward_scores(bert, rm_tokenizer, prompts, [p["chosen"] for p in PAIRS]))
    reward = pref.reward_function(bert, rm_tokenizer)
    assert reward(
        [pref.chat(p) for p in prompts], [[{"role": "assistant", "content": p["chosen"]}] for p in PAIRS]
    ) == pytest.approx(scores.tolist(), abs=1e-6)
    assert pref.pairwise_accuracy(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 3.0, 0.0, 1.0])) == 0.5
    with pytest.raises(ValueError, match="one chosen and one rejected"):
        pref.pairwise_accuracy(torch.zeros(2), torch.zeros(3))


def test_kl_estimate_and_sequence_logprobs(tokenizer):
    model = tiny_llama(tokenizer)
    prompts, replies = [p["prompt"] for p in PAIRS], [p["chosen"] for p in PAIRS]
    logps = pref.sequence_logprobs(model, tokenizer, prompts, replies, batch_size=1)
    assert logps.shape == (2,) and (logps < 0).all()
    assert torch.allclose(logps, pref.sequence_logprobs(model, tokenizer, prompts, replies))  # padding changes nothing
    assert pref.kl_estimate(logps, logps) == (0.0, 0.0)
    mean, error = pref.kl_estimate(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0]))
    assert mean == 2.0 and error == pytest.approx(1.0)
