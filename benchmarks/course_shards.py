"""Shared set-up for the benchmarks: the course corpus as packed token shards (Shakespeare, byte-level BPE)."""

from __future__ import annotations

from pathlib import Path


def shakespeare_shards(out_dir: str | Path, vocab_size: int, block: int) -> tuple[Path, object]:
    """Train a `vocab_size` BPE on the 77 Shakespeare texts, pack them into `block`-token shards in `out_dir`.
    Returns (shard folder, transformers tokenizer)."""
    from utils import assets, loaders
    from utils.bpe import as_transformers_tokenizer, train_bpe

    texts = list(assets.shakespeare_texts().values())
    tokenizer = as_transformers_tokenizer(train_bpe(texts, vocab_size))
    loaders.write_text_shards(texts, tokenizer, out_dir, block, vocab_size, blocks_per_shard=256)
    return Path(out_dir), tokenizer
