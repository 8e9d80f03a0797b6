"""Benchmark for notebooks 05 and 09: what do the training program's features cost? Prints ratios from one run.

Reference setup (issue 6): a 4-layer, width-256, 4-head GPT, context 256, 8,192-token vocabulary, batch 16, fp32,
on this CPU. Targets: `python -m utils.train` reaches at least 0.95x the steady-state tokens/s of a minimal
hand-written loop on the same model and batches, and an MFU of at least 60% of the fp32 matmul peak measured in the
same run (FLOPs per token as in the PaLM paper). The transformers `Trainer` on the same setup is printed for
comparison.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from utils.offline import enable_offline_mode

CONTEXT, BATCH, VOCAB, LAYERS, WIDTH, HEADS = 256, 16, 8192, 4, 256, 4
WARMUP = 3  # steps excluded from every rate


def minimal_loop(dataset, steps: int) -> list[float]:
    """The baseline: model, AdamW, loss.backward(), step, nothing else. Returns seconds per step."""
    from utils.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt(VOCAB, CONTEXT, LAYERS, WIDTH, HEADS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    times = []
    for step in range(steps):
        x = torch.stack([dataset[(step * BATCH + i) % len(dataset)] for i in range(BATCH)])
        start = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[WARMUP:]


def training_program(shards: Path, steps: int, out: Path) -> list[float]:
    """`utils.train` as `python -m utils.train` runs it (in this process, so runs can alternate with the
    baseline), logging every step; returns its tokens/s per step after the warm-up."""
    from utils import train

    flags = ["--data", str(shards), "--output", str(out), "--steps", str(steps), "--layers", str(LAYERS),
             "--width", str(WIDTH), "--heads", str(HEADS), "--batch-size", str(BATCH), "--log-every", "1",
             "--checkpoint-every", "0", "--peak-flops", "1e11"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        train.train(train.parse_settings(flags, env={}))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["tokens_per_s"] for row in rows[WARMUP:]]


def hf_trainer(dataset, steps: int, out: Path) -> list[float]:
    """transformers' Trainer on the same model and batches; seconds per step from a callback."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from utils.loaders import causal_lm_batch
    from utils.models import small_gpt

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.start)

    torch.manual_seed(0)
    timer = StepTimer()
    arguments = TrainingArguments(output_dir=str(out), per_device_train_batch_size=BATCH, max_steps=steps,
                                  learning_rate=3e-4, report_to=[], save_strategy="no", logging_strategy="no",
                                  use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)  # fmt: skip
    Trainer(model=small_gpt(VOCAB, CONTEXT, LAYERS, WIDTH, HEADS), args=arguments, train_dataset=dataset,
            data_collator=causal_lm_batch, callbacks=[timer]).train()  # fmt: skip
    return timer.times[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first 3 are warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each program")
    args = parser.parse_args()
    enable_offline_mode()
    from course_shards import shakespeare_shards

    from utils.loaders import PackedBlocks
    from utils.machine import measure_matmul_throughput
    from utils.sizing import TransformerShape, training_flops_per_token

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    shards, _ = shakespeare_shards(work / "shards", VOCAB, CONTEXT)
    dataset = PackedBlocks(shards)
    peak = measure_matmul_throughput(2048)["gflops"] * 1e9
    flops_per_token = training_flops_per_token(
        TransformerShape(VOCAB, WIDTH, LAYERS, HEADS, 4 * WIDTH, CONTEXT), CONTEXT
    )
    tokens = BATCH * CONTEXT
    samples: dict[str, list[float]] = {"minimal loop": [], "python -m utils.train": [], "transformers Trainer": []}
    for repeat in range(args.repeats):  # alternate the three so that machine noise hits them alike
        samples["minimal loop"] += [tokens / t for t in minimal_loop(dataset, args.steps)]
        samples["python -m utils.train"] += training_program(shards, args.steps, work / f"run{repeat}")
        samples["transformers Trainer"] += [tokens / t for t in hf_trainer(dataset, args.steps, work / "trainer")]
    rates = {name: statistics.median(values) for name, values in samples.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, rate in rates.items():
        print(f"{name:24} {rate:8,.0f} tokens/s  MFU {rate * flops_per_token / peak:5.1%}")
    base = rates["minimal loop"]
    print(f"utils.train / minimal loop:   {rates['python -m utils.train'] / base:.3f}x  (target >= 0.95x)")
    print(
        f"utils.train MFU / peak:       {rates['python -m utils.train'] * flops_per_token / peak:.1%}  (target >= 60%)"
    )
    print(f"Trainer / minimal loop:       {rates['transformers Trainer'] / base:.3f}x")


if __name__ == "__main__":
    main()
