"""Benchmark for notebook 10: LoRA against full fine-tuning of SmolLM2-135M-Instruct on the same batches. Prints
step time, peak resident memory and training loss of each, and the ratios, from one run.

Reference setup (issue 17): the genre task's chat-formatted examples (prompt masked), batch 8, AdamW at 1e-4, on
this CPU; LoRA rank 8 on every attention and MLP projection. Full fine-tuning is the fp32 baseline. LoRA runs with
its frozen base in fp32 (as chapter 10 trains) and, with `--base-dtype bf16` or `both`, in bf16 (the adapters,
their gradients and AdamW's moments stay fp32: `utils.finetuning.lora_model`), the low-precision frozen base QLoRA
trains against; a bf16 base also makes the base layers' activations bf16. Each run is a fresh process, so its peak
resident set size (Linux's VmHWM: model, gradients, optimizer state, activations, libraries) is its own (not
ru_maxrss, which after fork and exec also keeps the parent's: started from a notebook kernel holding 5 GB, a child read
5 GB whatever it trained);
the methods alternate `--repeats` times and the medians are compared, with and without activation checkpointing
(recomputing each block's activations in the backward pass, which QLoRA pairs with LoRA). LoRA removes the memory
that grows with the trainable weights (gradients, AdamW's two moments), not the activations, so the ratio depends
on how the two compare. Target: LoRA's peak memory at most 0.6x full fine-tuning's, with checkpointing (checked for
the lowest-memory LoRA base that ran). The loss lines show what a bf16 base does to training: the first step's loss
(before any update), the mean loss over the same batches after the last step, and that loss with the adapters the
bf16 base trained put on the fp32 base (which tells the adapters' learning from the bf16 forward pass).

    .venv/bin/python benchmarks/lora_vs_full.py [--steps 5] [--batch-size 8] [--repeats 2] [--checkpointing both]
        [--base-dtype both]
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
#: The methods: full fine-tuning (fp32) and LoRA with its frozen base in each dtype of `--base-dtype`.
LORA_BASES = {"lora": "fp32", "lora-bf16": "bf16"}


def peak_resident_mb() -> float:
    """This process's peak resident memory in MB: VmHWM from /proc/self/status (this program's own high-water mark),
    else getrusage's ru_maxrss (kilobytes on Linux, bytes on macOS), which may include the parent's at fork."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def child(method: str, steps: int, batch_size: int, checkpointing: bool) -> dict[str, float | list[float]]:
    """One method in this process: load the model, train `steps` steps on the first batches, report."""
    import psutil
    import torch

    from utils.offline import enable_offline_mode

    enable_offline_mode()
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
    if method in LORA_BASES:
        base_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[LORA_BASES[method]]
        model = finetuning.lora_model(model, finetuning.lora_config(), base_dtype)
    model.train()
    loaded_mb = psutil.Process().memory_info().rss / 2**20
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times, losses = [], []
    for batch in batches:
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    peak_mb = peak_resident_mb()
    with torch.no_grad():  # after the peak is read: evaluation holds less than a training step
        after = statistics.mean(model(**batch).loss.item() for batch in batches)
    on_fp32 = after
    if method in LORA_BASES and LORA_BASES[method] != "fp32":  # the same adapters on the fp32 base
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        fp32_model = finetuning.lora_model(assets.load_smollm2()[0], finetuning.lora_config())
        set_peft_model_state_dict(fp32_model, get_peft_model_state_dict(model))
        with torch.no_grad():
            on_fp32 = statistics.mean(fp32_model(**batch).loss.item() for batch in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    return {
        "step_s": times[1:],
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
        "tokens": tokens,
        "trainable": finetuning.count_trainable(model),
        "losses": losses,
        "loss_after": after,
        "loss_after_on_fp32": on_fp32,
    }


def run(method: str, steps: int, batch_size: int, checkpointing: bool) -> dict:
    command = [sys.executable, __file__, "--child", method, "--steps", str(steps), "--batch-size", str(batch_size)]
    command += ["--checkpointing", "on" if checkpointing else "off"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{method} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(methods: list[str], steps: int, batch_size: int, repeats: int, checkpointing: bool) -> dict[str, float]:
    """Alternate `methods` `repeats` times, print each run and the ratios to full fine-tuning; returns each LoRA
    method's peak-memory ratio."""
    label = "with activation checkpointing" if checkpointing else "without activation checkpointing"
    print(f"\n{label}:", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for repeat in range(repeats):
        for method in methods[::-1] if repeat % 2 else methods:
            results[method].append(run(method, steps, batch_size, checkpointing))
            r = results[method][-1]
            print(
                f"  {method:9}: median step {statistics.median(r['step_s']):6.2f} s, peak RSS {r['peak_mb']:7.0f} MB "
                f"(after loading {r['loaded_mb']:5.0f} MB), {r['trainable']:,} trainable, "
                f"loss {r['losses'][0]:.4f} at the first step, {r['loss_after']:.4f} after {steps}",
                flush=True,
            )
    step = {m: statistics.median(s for r in rs for s in r["step_s"]) for m, rs in results.items()}
    peak = {m: statistics.median(r["peak_mb"] for r in rs) for m, rs in results.items()}
    spread = {m: (min(r["peak_mb"] for r in rs), max(r["peak_mb"] for r in rs)) for m, rs in results.items()}
    ratios = {}
    for method in (m for m in methods if m != "full"):
        ratios[method] = peak[method] / peak["full"]
        name = f"{method} / full:"
        print(
            f"  {name:17} step time {step[method] / step['full']:.2f}x ({step[method]:.2f} vs {step['full']:.2f} s), "
            f"peak RSS {ratios[method]:.2f}x ({peak[method]:.0f} vs {peak['full']:.0f} MB; runs "
            f"{spread[method][0]:.0f}-{spread[method][1]:.0f} vs {spread['full'][0]:.0f}-{spread['full'][1]:.0f})"
        )
    if "lora" in results and "lora-bf16" in results:  # the runs are seeded: the same numbers every repeat
        first = {m: results[m][0]["losses"][0] for m in ("lora", "lora-bf16")}
        after = {m: results[m][0]["loss_after"] for m in ("lora", "lora-bf16")}
        print(
            f"  loss, bf16 base - fp32 base: {first['lora-bf16'] - first['lora']:+.4f} at the first step "
            f"({first['lora-bf16']:.4f} vs {first['lora']:.4f}), {after['lora-bf16'] - after['lora']:+.4f} after "
            f"{steps} steps; drop over training {first['lora-bf16'] - after['lora-bf16']:.4f} vs "
            f"{first['lora'] - after['lora']:.4f}; the bf16-trained adapters on the fp32 base: "
            f"{results['lora-bf16'][0]['loss_after_on_fp32']:.4f} after {steps} steps"
        )
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs of each method")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--base-dtype",
        choices=["fp32", "bf16", "both"],
        default="both",
        help="dtype of LoRA's frozen base weights (adapters and optimizer state stay fp32; full fine-tuning: fp32)",
    )
    parser.add_argument("--child", choices=["full", *LORA_BASES], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is a warm-up")
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch_size, args.checkpointing == "on")))
        return 0
    lora = {"fp32": ["lora"], "bf16": ["lora-bf16"], "both": ["lora", "lora-bf16"]}[args.base_dtype]
    print(
        f"SmolLM2-135M-Instruct, {args.steps} batches of {args.batch_size} genre examples (the same in every run), "
        f"medians of {args.repeats} alternating runs per method; full fine-tuning fp32, LoRA's frozen base "
        f"{' and '.join(LORA_BASES[m] for m in lora)} (adapters fp32)"
    )
    settings = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    ratios = {on: compare([*lora, "full"], args.steps, args.batch_size, args.repeats, on) for on in settings}
    checked = ratios.get(True, ratios.get(False))
    best = min(checked, key=checked.get)
    print(
        f"\ntarget: LoRA peak memory <= {TARGET}x full fine-tuning's: "
        f"{'met' if checked[best] <= TARGET else 'NOT met'} ({checked[best]:.2f}x, {best}, "
        f"{'with' if True in ratios else 'without'} activation checkpointing)"
    )
    return 0 if checked[best] <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
