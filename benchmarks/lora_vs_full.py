"""Benchmark for notebook 10: LoRA against full fine-tuning of SmolLM2-135M-Instruct on the same batches. Prints
step time and peak resident memory of each, and their ratios, from one run.

Reference setup (issue 17): the genre task's chat-formatted examples (prompt masked), batch 8, AdamW, fp32 on this
CPU; LoRA rank 8 on every attention and MLP projection. Each method runs in a fresh process, so its peak resident
set size (the kernel's ru_maxrss: model, gradients, optimizer state, activations, libraries) is its own; the two
alternate `--repeats` times and the medians are compared, with and without activation checkpointing (recomputing
each block's activations in the backward pass, which QLoRA pairs with LoRA). LoRA removes the memory that grows
with the trainable weights (gradients, AdamW's two moments), not the activations, so the ratio depends on how the
two compare. Target: LoRA's peak memory at most 0.6x full fine-tuning's, with checkpointing.

    .venv/bin/python benchmarks/lora_vs_full.py [--steps 5] [--batch-size 8] [--repeats 2] [--checkpointing both]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.6  # LoRA peak memory / full fine-tuning peak memory, at most


def child(method: str, steps: int, batch_size: int, checkpointing: bool) -> dict[str, float | list[float]]:
    """One method in this process: load the model, train `steps` steps on the first batches, report."""
    import psutil
    import torch

    from utils.offline import enable_offline_mode

    enable_offline_mode()
    from peft import get_peft_model

    from utils import assets, finetuning

    torch.manual_seed(0)
    model, tokenizer = assets.load_smollm2()
    rows = finetuning.genre_dataset(words=24)["train"][: steps * batch_size]
    examples = [finetuning.tokenize_example(tokenizer, row["text"], row["label"]) for row in rows]
    batches = [
        finetuning.pad_batch(examples[i : i + batch_size], tokenizer.pad_token_id)
        for i in range(0, len(examples), batch_size)
    ]
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if method == "lora":
        model = get_peft_model(model, finetuning.lora_config())
    model.train()
    loaded_mb = psutil.Process().memory_info().rss / 2**20
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for batch in batches:
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kilobytes
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "step_s": times[1:],
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
        "tokens": tokens,
        "trainable": finetuning.count_trainable(model),
    }


def run(method: str, steps: int, batch_size: int, checkpointing: bool) -> dict:
    command = [sys.executable, __file__, "--child", method, "--steps", str(steps), "--batch-size", str(batch_size)]
    command += ["--checkpointing", "on" if checkpointing else "off"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{method} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(steps: int, batch_size: int, repeats: int, checkpointing: bool) -> float:
    """Alternate the two methods `repeats` times, print each run and the ratios; returns the memory ratio."""
    label = "with activation checkpointing" if checkpointing else "without activation checkpointing"
    print(f"\n{label}:", flush=True)
    results: dict[str, list[dict]] = {"lora": [], "full": []}
    for repeat in range(repeats):
        for method in ("full", "lora") if repeat % 2 else ("lora", "full"):
            results[method].append(run(method, steps, batch_size, checkpointing))
            r = results[method][-1]
            print(
                f"  {method:4}: median step {statistics.median(r['step_s']):6.2f} s, peak RSS {r['peak_mb']:7.0f} MB "
                f"(after loading {r['loaded_mb']:5.0f} MB), {r['trainable']:,} trainable",
                flush=True,
            )
    step = {m: statistics.median(s for r in rs for s in r["step_s"]) for m, rs in results.items()}
    peak = {m: statistics.median(r["peak_mb"] for r in rs) for m, rs in results.items()}
    lora, full = step["lora"], step["full"]
    print(f"  step time   LoRA / full: {lora / full:.2f}x ({lora:.2f} vs {full:.2f} s)")
    lora, full = peak["lora"], peak["full"]
    print(f"  peak RSS    LoRA / full: {lora / full:.2f}x ({lora:.0f} vs {full:.0f} MB)")
    return lora / full


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each method")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.checkpointing == "on")))
        return 0
    print(
        f"SmolLM2-135M-Instruct, {args.steps} batches of {args.batch_size} genre examples (the same in every run), "
        f"medians of {args.repeats} alternating runs per method"
    )
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    ratios = {on: compare(args.steps, args.batch_size, args.repeats, on) for on in settings}
    checked = ratios.get(True, ratios.get(False))
    print(
        f"\ntarget: LoRA peak memory <= {TARGET}x full fine-tuning's: {'met' if checked <= TARGET else 'NOT met'} "
        f"({checked:.2f}x, {'with' if True in ratios else 'without'} activation checkpointing)"
    )
    return 0 if checked <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
