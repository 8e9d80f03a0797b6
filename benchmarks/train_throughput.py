"""Benchmark for notebooks 05 and 09: is the course's model + training program as fast as a plain PyTorch decoder?

Reference setup (issues 6 and 14): a 4-layer, width-256, 4-head decoder, context 256, 8,192-token vocabulary, batch
16, fp32, on this CPU. The baseline is a plain PyTorch decoder of the same shape written the way nanoGPT writes one
(fused QKV projection, `scaled_dot_product_attention`, tanh-GELU, tied output projection) trained by a minimal loop
(AdamW, backward, step). Against it: `python -m utils.train` (transformers' GPT-2 with `gelu_pytorch_tanh` and SDPA,
plus everything the program does per step: gradient norm and clipping, schedule, non-finite guard, logging), read
from its own per-step tokens/s, with the data read in the training process (`workers=0`) and by one DataLoader
worker (`workers=1`). Runs alternate so that machine noise hits them alike; medians and the interquartile range of
the per-step rates are printed.

Targets: the program reaches at least 0.95x the baseline's tokens/s, and an MFU of at least 60%. MFU divides model
FLOPs (`utils.sizing.training_flops_per_token`: every matrix multiply, the output projection included) by the fp32
peak measured in the same run (median of a 2048 x 2048 matmul, `utils.machine.measure_matmul_throughput`).

    .venv/bin/python benchmarks/train_throughput.py [--steps 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.offline import enable_offline_mode

CONTEXT, BATCH, VOCAB, LAYERS, WIDTH, HEADS = 256, 16, 8192, 4, 256, 4
WARMUP = 3  # steps excluded from every rate


class PlainBlock(nn.Module):
    """A pre-norm transformer block as nanoGPT writes it: one fused QKV projection, SDPA with a causal mask,
    a tanh-GELU MLP of width 4 x."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.qkv(self.ln_1(x)).split(c, 2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln_2(x)), approximate="tanh"))


class PlainGPT(nn.Module):
    """Token and position embeddings, blocks, a final LayerNorm and the output projection tied to the token
    embedding (GPT-2's layout), returning the next-token cross-entropy."""

    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(PlainBlock(WIDTH, HEADS) for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1))


def plain_loop(dataset, steps: int) -> list[float]:
    """The baseline: the plain decoder, AdamW, backward, step, nothing else. Returns tokens/s per step."""
    torch.manual_seed(0)
    model = PlainGPT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    rates = []
    for step in range(steps):
        start = time.perf_counter()
        ids = torch.stack([dataset[(step * BATCH + i) % len(dataset)] for i in range(BATCH)])
        model(ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rates.append(BATCH * CONTEXT / (time.perf_counter() - start))
    return rates[WARMUP:]


def training_program(shards: Path, steps: int, out: Path, workers: int) -> list[float]:
    """`python -m utils.train` run in this process (so runs alternate with the baseline), logging every step;
    returns its own tokens/s per step after the warm-up."""
    from utils import train
    from utils.train_settings import TrainSettings, command_line
    from utils.training_runs import read_metrics

    settings = TrainSettings(
        data=str(shards),
        output=str(out),
        steps=steps,
        layers=LAYERS,
        width=WIDTH,
        heads=HEADS,
        batch_size=BATCH,
        log_every=1,
        checkpoint_every=0,
        peak_flops=1e11,
        workers=workers,
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(command_line(settings)) == 0
    return [row["tokens_per_s"] for row in read_metrics(out)[WARMUP:]]


def spread(values: list[float]) -> str:
    """Median and interquartile range."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:8,.0f} tokens/s (IQR {q1:,.0f}-{q3:,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run (the first 3 are warm-up)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating runs of each")
    args = parser.parse_args()
    enable_offline_mode()
    from course_shards import shakespeare_shards

    from utils.loaders import PackedBlocks
    from utils.machine import measure_matmul_throughput
    from utils.models import small_gpt
    from utils.sizing import TransformerShape, training_flops_per_token

    work = Path(tempfile.mkdtemp(prefix="train-bench-"))
    shards, _ = shakespeare_shards(work / "shards", VOCAB, CONTEXT)
    dataset = PackedBlocks(shards)
    course = small_gpt(VOCAB, CONTEXT, LAYERS, WIDTH, HEADS, activation="gelu_pytorch_tanh")
    assert sum(p.numel() for p in course.parameters()) == sum(p.numel() for p in PlainGPT().parameters())
    flops_per_token = training_flops_per_token(
        TransformerShape(VOCAB, WIDTH, LAYERS, HEADS, 4 * WIDTH, CONTEXT), CONTEXT
    )
    names = ("plain PyTorch decoder", "utils.train, workers=0", "utils.train, workers=1")
    samples: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names[1:]}
    peaks = []
    for repeat in range(args.repeats):  # alternate, so that machine noise hits every contender alike
        peaks.append(measure_matmul_throughput(2048, min_run_time=0.5)["gflops"] * 1e9)
        runs = {names[0]: plain_loop(dataset, args.steps)}
        for workers, name in enumerate(names[1:]):
            runs[name] = training_program(shards, args.steps, work / f"run{repeat}-{workers}", workers)
        for name, rates in runs.items():
            samples[name] += rates
        for name in names[1:]:
            ratios[name].append(statistics.median(runs[name]) / statistics.median(runs[names[0]]))
    peak = statistics.median(peaks)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; course GPT attention: "
        f"{course.config._attn_implementation}, activation {course.config.activation_function}"
    )
    print(
        f"fp32 matmul peak (2048 x 2048, median of {len(peaks)}): {peak / 1e9:.0f} GFLOP/s "
        f"(range {min(peaks) / 1e9:.0f}-{max(peaks) / 1e9:.0f}); {flops_per_token / 1e6:.1f} MFLOP per token"
    )
    for name, values in samples.items():
        print(f"{name:24} {spread(values)}  MFU {statistics.median(values) * flops_per_token / peak:5.1%}")
    for name, values in ratios.items():
        print(
            f"{name} / plain decoder: {statistics.median(values):.3f}x (per repeat {min(values):.3f}-"
            f"{max(values):.3f}; target >= 0.95x)"
        )
    best = max(statistics.median(samples[name]) for name in names[1:])
    print(f"utils.train MFU: {best * flops_per_token / peak:.1%} of the measured fp32 peak (target >= 60%)")


if __name__ == "__main__":
    main()
