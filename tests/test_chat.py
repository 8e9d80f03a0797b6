"""Generation throughput against batch size, on a tiny random GPT-2 (the chat helper itself is tested on the real
SmolLM2 in test_assets.py)."""

import pytest
import torch

from utils.bpe import EOS, as_transformers_tokenizer, train_bpe
from utils.chat import continue_text, generation_throughput
from utils.models import small_gpt


@pytest.fixture(scope="module")
def tiny_lm():
    tokenizer = train_bpe(["the quick brown fox jumps over the lazy dog " * 20], 300)
    torch.manual_seed(0)
    model = small_gpt(300, context=32, layers=1, width=16, heads=2, eos_token_id=tokenizer.token_to_id(EOS))
    return model.eval(), as_transformers_tokenizer(tokenizer)


def test_generation_throughput_counts_every_sequence_of_the_batch(tiny_lm):
    model, tokenizer = tiny_lm
    rows = generation_throughput(model, tokenizer, "the quick brown", [1, 3], new_tokens=4, repeats=2)
    assert [r["batch"] for r in rows] == [1, 3]
    for row in rows:
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * 4 / row["seconds"])
        assert row["per_sequence_tokens_per_s"] == pytest.approx(4 / row["seconds"])
        assert row["relative_spread"] >= 0


def test_generation_throughput_rejects_empty_or_zero_sizes(tiny_lm):
    model, tokenizer = tiny_lm
    for sizes, tokens in (([], 4), ([0], 4), ([1], 0)):
        with pytest.raises(ValueError, match="batch sizes"):
            generation_throughput(model, tokenizer, "the", sizes, new_tokens=tokens)


def test_continue_text_is_greedy_and_returns_only_the_new_text(tiny_lm):
    model, tokenizer = tiny_lm
    first = continue_text(model, tokenizer, "the quick brown", max_new_tokens=3)
    assert first == continue_text(model, tokenizer, "the quick brown", max_new_tokens=3)  # greedy: deterministic
    ids = tokenizer("the quick brown").input_ids
    out = model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert first == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
