"""Benchmark for notebook 06: is the packed-shard loader fast enough? Prints ratios measured in one run.

Targets (issue 5): the packed memmap loader delivers at least 100x the tokens/s that a small GPT (4 layers, width
256, 4 heads, context 256, 8,192-token vocabulary, batch 16, fp32) consumes in training on this CPU, and at least 5x
the tokens/s of the naive path (a `datasets` dataset read one example at a time, padded per batch by the tokenizer).

    .venv/bin/python benchmarks/loader_throughput.py [--repeats 5] [--batches 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from utils.offline import enable_offline_mode

CONTEXT, BATCH, VOCAB = 256, 16, 8192


def tokens_per_second(loader: DataLoader, batches: int, count: str) -> float:
    """Tokens/s over the first `batches` batches; `count` is "all" (every position) or "real" (attention mask)."""
    start, tokens = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        tokens += batch["input_ids"].numel() if count == "all" else int(batch["attention_mask"].sum())
        if i + 1 == batches:
            break
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per path; medians are reported")
    parser.add_argument("--batches", type=int, default=40, help="batches per loader measurement")
    args = parser.parse_args()
    enable_offline_mode()
    import datasets
    from course_shards import shakespeare_shards
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    from utils import assets, loaders
    from utils.models import small_gpt

    datasets.disable_progress_bars()

    shard_dir, tokenizer = shakespeare_shards(tempfile.mkdtemp(prefix="loader-bench-"), VOCAB, CONTEXT)
    texts = list(assets.shakespeare_texts().values())
    blocks = loaders.PackedBlocks(shard_dir)
    sampler = loaders.ResumableDistributedSampler(blocks)
    packed = DataLoader(blocks, BATCH, sampler=sampler, collate_fn=loaders.causal_lm_batch)

    paragraphs = [p for text in texts for p in text.split("\n\n") if p.strip()]
    naive_data = Dataset.from_dict({"text": paragraphs}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=CONTEXT), batched=True, remove_columns=["text"]
    )
    naive = DataLoader(naive_data, BATCH, shuffle=True, collate_fn=DataCollatorWithPadding(tokenizer))

    torch.manual_seed(0)
    model = small_gpt(VOCAB, CONTEXT, layers=4, width=256, heads=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = next(iter(packed))

    def train_step() -> None:
        model(**batch).loss.backward()
        optimizer.step(), optimizer.zero_grad(set_to_none=True)

    train_step(), train_step()  # warm-up
    rates: dict[str, list[float]] = {"packed": [], "naive": [], "gpt": []}
    for _ in range(args.repeats):
        rates["packed"].append(tokens_per_second(packed, args.batches, "all"))
        rates["naive"].append(tokens_per_second(naive, args.batches, "real"))
        start = time.perf_counter()
        train_step()
        rates["gpt"].append(BATCH * CONTEXT / (time.perf_counter() - start))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} repeats")
    for name, label in [
        ("packed", "packed memmap loader"),
        ("naive", "naive datasets + padding (real tokens)"),
        ("gpt", "GPT 4x256 training step consumes"),
    ]:
        print(f"{label:40} {median[name]:>14,.0f} tokens/s")
    print(f"packed / GPT consumption: {median['packed'] / median['gpt']:8.0f}x   (target >= 100x)")
    print(f"packed / naive:           {median['packed'] / median['naive']:8.1f}x   (target >= 5x)")


if __name__ == "__main__":
    main()
