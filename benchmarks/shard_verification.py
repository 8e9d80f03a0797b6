"""Benchmark for issue 15: what does checking token shards cost, next to a short training run? Prints seconds and
ratios measured in one run (medians).

Checks timed: `read_index` (the fast path every `PackedBlocks` open runs: index, sizes, dtype, vocabulary, two
blocks per shard) and `verify_shards` (every byte against its SHA-256 and every id against the vocabulary), next to
plain reading of every byte (the I/O floor) and a short run of the training program (`python -m utils.train`, its
default 4-layer GPT, `--steps` steps, fp32 on CPU). Data: the course's Shakespeare shards (8,192-token BPE, 256-token
blocks) and a synthetic set of `--synthetic-gib` GiB (uint16 ids, 1,024-token blocks, 2 MiB shards). Page cache warm
(the files were just written), which is the case right after writing or copying the data.

    .venv/bin/python benchmarks/shard_verification.py [--repeats 5] [--steps 20] [--synthetic-gib 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from utils import loaders

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_every_byte(folder: Path) -> None:
    for path in sorted(folder.glob("shard-*.bin")):
        with open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass


def synthetic_shards(folder: Path, gib: float) -> Path:
    """`gib` GiB of random uint16 tokens (a 50,257-token vocabulary), written by write_token_shards."""
    rng = np.random.default_rng(0)
    tokens = int(gib * 2**30) // 2
    documents = (rng.integers(0, 50_257, 2**20, dtype=np.int64) for _ in range(tokens // 2**20))
    loaders.write_token_shards(documents, folder, block=1024, vocab_size=50_257, blocks_per_shard=1024)
    return folder


def short_run_seconds(shards: Path, steps: int, output: Path) -> float:
    """Wall time of `python -m utils.train` for `steps` steps on `shards`, start-up included."""
    env = os.environ | {"TQDM_DISABLE": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "utils.train",
            "--data",
            str(shards),
            "--output",
            str(output),
            "--steps",
            str(steps),
            "--checkpoint-every",
            "0",
            "--peak-flops",
            "1e11",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"training run failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per check; medians are reported")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of the short training run")
    parser.add_argument("--synthetic-gib", type=float, default=1.0, help="size of the synthetic shard set")
    args = parser.parse_args()
    from course_shards import shakespeare_shards

    work = Path(tempfile.mkdtemp(prefix="shard-verification-"))
    course, _ = shakespeare_shards(work / "shakespeare", vocab_size=8192, block=256)
    run = short_run_seconds(course, args.steps, work / "run")
    print(f"short run: python -m utils.train, {args.steps} steps, default model: {run:.1f} s wall")
    synthetic = synthetic_shards(work / "synthetic", args.synthetic_gib)
    print(
        f"{'data':>12} {'MB':>8} {'shards':>6} {'fast path':>10} {'read bytes':>10} {'full check':>10} "
        f"{'GB/s':>5} {'full / run':>10}"
    )
    for name, folder in [("shakespeare", course), ("synthetic", synthetic)]:
        index = loaders.read_index(folder)
        size = sum((folder / s["file"]).stat().st_size for s in index["shards"])
        fast = median_seconds(lambda folder=folder: loaders.read_index(folder), args.repeats)
        read = median_seconds(lambda folder=folder: read_every_byte(folder), args.repeats)
        full = median_seconds(lambda folder=folder: loaders.verify_shards(folder), args.repeats)
        print(
            f"{name:>12} {size / 1e6:8.1f} {len(index['shards']):6} {fast * 1e3:8.2f}ms {read:9.3f}s {full:9.3f}s "
            f"{size / full / 1e9:5.2f} {full / run:9.2%}"
        )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
