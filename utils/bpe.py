"""Train a byte-level BPE tokenizer with the `tokenizers` library and measure how well it compresses text.

Defined for notebook 01 (book chapter 1; chapter 6 builds its data loader on it). Byte-level BPE, as in GPT-2
(Radford et al., 2019), starts from the 256 byte values, so any input can be encoded with no unknown token, then
learns merges of frequent adjacent pairs until the vocabulary reaches `vocab_size`. Needs tokenizers and
transformers.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

#: Special tokens every course tokenizer reserves: end of text (separates documents), padding, and the mask
#: token masked-language modelling replaces words with.
EOS, PAD, MASK = "<|endoftext|>", "<pad>", "<mask>"


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """A byte-level BPE tokenizer with `vocab_size` entries (256 bytes + special tokens + learned merges)."""
    if vocab_size < 256 + 3:
        raise ValueError(f"vocab_size {vocab_size} is below the 256 byte tokens plus 3 special tokens")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD, MASK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def bytes_per_token(tokenizer: Tokenizer, texts: list[str]) -> float:
    """UTF-8 bytes of `texts` divided by the number of tokens they encode to (higher = better compression)."""
    n_tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(texts))
    return sum(len(text.encode("utf-8")) for text in texts) / n_tokens


def as_transformers_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Wrap a trained tokenizer for transformers (data collators, `generate`), with its special tokens set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS, bos_token=EOS, pad_token=PAD, mask_token=MASK
    )
