"""Byte-level BPE training and compression measurement."""

import pytest

from utils.bpe import EOS, MASK, PAD, as_transformers_tokenizer, bytes_per_token, train_bpe

CORPUS = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer"] * 50


def test_round_trips_any_text_including_unseen_bytes():
    tokenizer = train_bpe(CORPUS, 300)
    for text in ["To be, or not to be", "naïve café — 数学 🎭", "\ttabs\nand newlines  "]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_vocabulary_size_and_special_tokens():
    tokenizer = train_bpe(CORPUS, 300)
    assert tokenizer.get_vocab_size() <= 300
    assert [tokenizer.token_to_id(t) for t in (EOS, PAD, MASK)] == [0, 1, 2]
    with pytest.raises(ValueError, match="256 byte tokens"):
        train_bpe(CORPUS, 200)


def test_bigger_vocabulary_compresses_at_least_as_well():
    small, large = train_bpe(CORPUS, 260), train_bpe(CORPUS, 320)
    assert bytes_per_token(small, CORPUS[:2]) < bytes_per_token(large, CORPUS[:2])
    assert bytes_per_token(small, ["abc"]) == pytest.approx(1.0)  # no merges learned for unseen text: one byte each


def test_transformers_wrapper_carries_the_special_tokens():
    wrapped = as_transformers_tokenizer(train_bpe(CORPUS, 300))
    assert (wrapped.eos_token, wrapped.pad_token, wrapped.mask_token) == (EOS, PAD, MASK)
    assert wrapped.decode(wrapped("the question").input_ids) == "the question"
