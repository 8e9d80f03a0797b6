"""Time training steps honestly on a noisy machine: alternate the variants being compared, keep every step's time,
and report a speed-up with its spread rather than one ratio of two medians.

Defined for notebook 09 (book chapter 9: profiling a fix, `torch.compile`, bf16 and batch size); any comparison of
two ways to run the same step can use it. Works with any model whose forward takes `input_ids` and `labels` and
returns an object with a `.loss` (transformers' causal language models). Needs torch only.

Why alternate: on a shared machine the load drifts over seconds, so timing all steps of A and then all steps of B
charges the drift to one of them. Round-robin steps (A, B, A, B, ...) expose both to the same conditions, and the
ratio of the two steps of one round is a paired measurement whose spread over rounds says how far to trust it.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch


def training_step(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, float]:
    """One optimizer step of causal language modelling on `input_ids` (batch x tokens, the labels too); returns
    (wall seconds, loss). With `autocast_dtype` (e.g. torch.bfloat16) the forward runs under CPU autocast; the
    weights and the optimizer stay in fp32, as in mixed-precision training."""
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be batch x tokens, got shape {tuple(input_ids.shape)}")
    start = time.perf_counter()
    context = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    with context:
        loss = model(input_ids=input_ids, labels=input_ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, loss.item()


def alternated_step_times(
    models: dict[str, torch.nn.Module],
    input_ids: torch.Tensor | dict[str, torch.Tensor],
    rounds: int,
    warmup: int = 1,
    autocast: dict[str, torch.dtype] | None = None,
    lr: float = 3e-4,
) -> dict[str, list[float]]:
    """Seconds per training step of each named model, measured round-robin: `warmup` untimed steps each (first
    calls allocate memory and, for compiled models, finish compiling), then `rounds` rounds of one timed step per
    model in turn. Each model trains with its own AdamW at `lr` on `input_ids`, or on `input_ids[name]` when it is a
    dict (to compare batch sizes); `autocast` maps a name to its autocast dtype."""
    if rounds < 1 or warmup < 0 or not models:
        raise ValueError("need at least one model, one round and a non-negative warm-up")
    autocast = autocast or {}
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=lr) for name, model in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(warmup + rounds):
        for name, model in models.items():
            batch = input_ids[name] if isinstance(input_ids, dict) else input_ids
            seconds, _ = training_step(model, batch, optimizers[name], autocast.get(name))
            if step >= warmup:
                times[name].append(seconds)
    return times


def paired_speedup(baseline: list[float], candidate: list[float]) -> dict[str, float]:
    """Speed-up of `candidate` over `baseline` from step times taken in the same rounds (`alternated_step_times`):
    the per-round ratios baseline / candidate, summarised by their median, quartiles and extremes. A quartile range
    that straddles 1.0 means the run cannot tell the two apart."""
    if len(baseline) != len(candidate) or len(baseline) < 2:
        raise ValueError("need two equally long lists of at least two step times, one per round")
    ratios = [b / c for b, c in zip(baseline, candidate, strict=True)]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return {"median": median, "q1": q1, "q3": q3, "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """(first quartile, median, third quartile) of at least two values: the spread a figure's error bar shows."""
    if len(values) < 2:
        raise ValueError("need at least two values for quartiles")
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3
