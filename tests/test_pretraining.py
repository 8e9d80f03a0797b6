"""Token streams, baselines, losses and the training loop."""

import math

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutput

from utils.bpe import EOS, train_bpe
from utils.models import small_gpt
from utils.pretraining import (
    bits_per_byte,
    causal_lm_loss,
    encode_texts,
    masked_prediction_report,
    masked_token_rank,
    random_windows,
    train,
    unigram_cross_entropy,
)


def test_encode_texts_ends_every_text_with_eos():
    tokenizer = train_bpe(["abc abc abd"] * 20, 270)
    eos = tokenizer.token_to_id(EOS)
    ids = encode_texts(tokenizer, ["abc", "abd abc"], eos)
    assert ids.dtype == torch.long and (ids == eos).sum() == 2 and ids[-1] == eos


def test_random_windows_are_reproducible_slices():
    ids = torch.arange(100)
    a = random_windows(ids, 4, 10, torch.Generator().manual_seed(1))
    b = random_windows(ids, 4, 10, torch.Generator().manual_seed(1))
    assert a.shape == (4, 10) and torch.equal(a, b)
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # consecutive tokens
    with pytest.raises(ValueError, match="shorter than one window"):
        random_windows(torch.arange(5), 1, 10, torch.Generator())


def test_unigram_cross_entropy_by_hand():
    train_ids, eval_ids = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 1])
    # add-one counts over a vocabulary of 3: [4, 2, 1] / 7
    expected = -(math.log(4 / 7) + math.log(2 / 7)) / 2
    assert unigram_cross_entropy(train_ids, eval_ids, 3) == pytest.approx(expected)


def test_causal_lm_loss_equals_cross_entropy_computed_by_hand():
    torch.manual_seed(0)
    model = small_gpt(50, 16, 1, 16, 2).eval()
    ids = torch.randint(0, 50, (40,))
    blocks = ids[:32].view(2, 16)
    logits = model(input_ids=blocks).logits
    by_hand = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 50), blocks[:, 1:].reshape(-1)).item()
    assert causal_lm_loss(model, ids, 16, batch=1) == pytest.approx(by_hand, rel=1e-5)
    with pytest.raises(ValueError, match="at least 16 tokens"):
        causal_lm_loss(model, ids[:5], 16)


def test_bits_per_byte():
    assert bits_per_byte(math.log(2), n_tokens=10, n_bytes=20) == pytest.approx(0.5)


def test_training_loop_learns_a_repeating_pattern():
    torch.manual_seed(0)
    model = small_gpt(20, 16, 1, 32, 2)
    stream = torch.arange(10).repeat(50)
    gen = torch.Generator().manual_seed(0)

    def batch(step):
        x = random_windows(stream, 8, 16, gen)
        return {"input_ids": x, "labels": x}

    seen = []
    history = train(model, batch, 60, 3e-3, lambda: causal_lm_loss(model, stream, 16), 30, lambda s, v: seen.append(s))
    assert seen == [0, 30, 60] and [h["step"] for h in history] == list(range(61))
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    assert history[-1]["lr"] < history[10]["lr"]  # cosine decay


def test_training_stops_with_a_clear_error_on_a_non_finite_loss():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return CausalLMOutput(loss=self.w * float("nan"))

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train(Broken(), lambda step: {"x": None}, 5, 1e-3, lambda: 0.0, 5)


def test_masked_token_rank_counts_better_scored_tokens():
    from utils.bpe import as_transformers_tokenizer
    from utils.models import small_bert

    tokenizer = as_transformers_tokenizer(train_bpe(["the question is the answer"] * 30, 280))
    model = small_bert(tokenizer.vocab_size, 16, 1, 16, 2, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        model.cls.predictions.decoder.bias.zero_()
        model.cls.predictions.bias.zero_()
        answer = tokenizer(" question", add_special_tokens=False).input_ids[0]
        model.cls.predictions.bias[answer] = 100.0  # make the answer the top guess everywhere
    assert masked_token_rank(model, tokenizer, "the<mask> is", " question") == 1
    with pytest.raises(ValueError, match="one-token answer"):
        masked_token_rank(model, tokenizer, "the<mask> is", " question answer")
    with pytest.raises(ValueError, match="exactly one"):
        masked_token_rank(model, tokenizer, "the question", " question")


def test_masked_prediction_report_scores_only_labelled_positions():
    from utils.models import small_bert

    model = small_bert(10, 8, 1, 16, 2, dropout=0.0)
    with torch.no_grad():
        model.cls.predictions.decoder.bias.zero_()
        model.cls.predictions.bias.zero_()
        model.cls.predictions.bias[4] = 100.0  # token 4 is the top guess everywhere
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    labels = torch.tensor([[-100, 4, -100, 7, -100, 4]])  # three scored positions: 4, 7, 4
    names = {4: "Ġbe", 5: "ing", 7: ","}  # tokens 4 and 5 are words, 7 is punctuation

    class Tokenizer:
        def convert_ids_to_tokens(self, ids):
            return [names.get(i, "\n") for i in ids]

    report = masked_prediction_report(model, [{"input_ids": ids, "labels": labels}], Tokenizer())
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["word_accuracy"] == 1.0  # targets 4 and 4 are words, both guessed
    assert report["guesses_that_are_words"] == 1.0  # every guess is token 4, a word
    with pytest.raises(ValueError, match="nothing was masked"):
        masked_prediction_report(model, [{"input_ids": ids, "labels": torch.full_like(ids, -100)}], Tokenizer())
