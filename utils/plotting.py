"""Readable figures for the course: logarithmic axes with exactly the ticks asked for, and training curves.

Defined for notebook 00 (the matmul-throughput plot) and used by every notebook that plots against a size, a
vocabulary or a number of examples on a log scale; `plot_history` draws the training runs of notebook 01 onward
(histories as returned by `utils.pretraining.train`), `attention_map` the attention weights of notebook 01, and
`plot_shares` and `plot_schedule` notebook 05's (book chapter 5) pictures of what each device holds and of a
pipeline's schedule. Needs matplotlib.

Why it exists: `ax.set_xticks(values, labels)` on a log axis replaces only the *major* ticks. Matplotlib's log
scale also places minor ticks (at 2, 3, ... 9 times each power of the base) and, when the axis spans less than
about one and a half decades, labels a subset of them with its `LogFormatterSciNotation` ("2×10^2", "3×10^2", ...).
Those minor labels land between and on top of the chosen labels and read as garbled text. `log_axis` sets the
major ticks and their labels and removes the minor ticks, so the axis shows exactly the values given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.axes import Axes
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator


def log_axis(
    ax: Axes, ticks: Sequence[float], axis: str = "x", labels: Sequence[str] | None = None, base: float = 10
) -> None:
    """Put `axis` ("x" or "y") of `ax` on a log scale with ticks exactly at `ticks` and no minor ticks.

    `labels` default to the tick values with thousands separators ("8,192"; "0.5" for fractions). `base` only
    changes where matplotlib would put its own ticks, not the spacing of the data: any base draws the same curve.
    Raises ValueError for an unknown axis, a non-positive tick (a log axis has no place for it) or a label count
    that differs from the tick count.
    """
    if axis not in ("x", "y"):
        raise ValueError(f'axis must be "x" or "y", got {axis!r}')
    ticks = [float(t) for t in ticks]
    if not ticks or min(ticks) <= 0:
        raise ValueError(f"a log axis needs positive tick values, got {ticks}")
    if labels is None:
        labels = [f"{t:,.0f}" if t == int(t) else f"{t:g}" for t in ticks]
    if len(labels) != len(ticks):
        raise ValueError(f"got {len(labels)} labels for {len(ticks)} ticks")
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=base)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(FixedFormatter(list(labels)))
    target.set_minor_locator(NullLocator())


def plot_history(
    ax: Axes, history: list[dict[str, float]], train_label: str = "train", val_label: str = "validation"
) -> list[dict[str, float]]:
    """Draw a training history on `ax`: the per-step training loss, faint, and the evaluations as markers.

    `history` holds one row per step with `step` and `train_loss`, plus `val_loss` where evaluated (step 0 is an
    evaluation only). Returns the evaluated rows, so the caller can read the last validation loss.
    """
    steps = [row for row in history if "train_loss" in row]
    evals = [row for row in history if "val_loss" in row]
    if not evals:
        raise ValueError("the history has no evaluated rows (no `val_loss`): nothing to mark")
    ax.plot([r["step"] for r in steps], [r["train_loss"] for r in steps], alpha=0.4, label=train_label)
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", label=val_label)
    return evals


def attention_map(ax: Axes, weights: Any, tokens: Sequence[str], title: str) -> None:
    """Draw one head's attention weights on `ax`: row i (a query) shows how much token i attends to each token j.

    `weights` is a (T, T) array or tensor of weights in [0, 1] (a softmax output, rows summing to one) and `tokens`
    the T token strings that label both axes, keys along x, queries along y. Raises ValueError when the shape does
    not match the number of tokens. Defined for notebook 01 (unmasked versus causal attention of a real encoder).
    """
    shape = tuple(weights.shape)
    if shape != (len(tokens), len(tokens)):
        raise ValueError(f"weights of shape {shape} do not match {len(tokens)} tokens; pass one head's (T, T) matrix")
    ax.imshow(weights, cmap="Blues", vmin=0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90)
    ax.set_yticks(range(len(tokens)), tokens)
    ax.set(title=title, xlabel="attends to (key)", ylabel="query")


def plot_shares(
    ax: Axes, shares: dict[str, Sequence[float]], parts: Sequence[str], notes: dict[str, str] | None = None
) -> None:
    """Draw what one device holds of each part of the training state (notebook 05, "who holds what"): one row per
    strategy in `shares`, one box per part in `parts` (e.g. parameters, gradients, optimizer state), filled to the
    share of the full tensor that device keeps (1: all of it, 0.5: half on two ranks). `notes` adds text to a row."""
    if any(len(row) != len(parts) for row in shares.values()):
        raise ValueError(f"every row of shares needs one value per part ({len(parts)})")
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")
    for row, (name, values) in enumerate(shares.items()):
        for part, share in enumerate(values):
            ax.barh(row, share, left=part * 1.1, color=colours[part % len(colours)], height=0.6)
            ax.barh(row, 1, left=part * 1.1, fill=False, edgecolor="grey", height=0.6)
        ax.text(len(parts) * 1.1 + 0.05, row, (notes or {}).get(name, ""), va="center", fontsize=8)
    ax.set_yticks(range(len(shares)), list(shares))
    ax.invert_yaxis()
    ax.set_xticks([0.5 + 1.1 * i for i in range(len(parts))], list(parts))
    ax.set_xlim(0, len(parts) * 1.1 + 1.5)


def plot_schedule(ax: Axes, schedule: Sequence[tuple[int, str, int, int]]) -> None:
    """Draw a pipeline schedule as a timeline (notebook 05): one row per stage, one box per (stage, phase,
    micro-batch, slot) piece of work, forward passes blue and backward passes orange, each labelled with its
    micro-batch; the empty slots are the pipeline's bubble. `utils.parallelism.gpipe_schedule` makes one."""
    colours = {"forward": "tab:blue", "backward": "tab:orange"}
    for stage, phase, microbatch, slot in schedule:
        ax.barh(stage, 1, left=slot, color=colours[phase], edgecolor="white", height=0.8)
        ax.text(slot + 0.5, stage, str(microbatch), ha="center", va="center", color="white", fontsize=9)
    stages = sorted({piece[0] for piece in schedule})
    ax.set_yticks(stages, [f"stage {s}" for s in stages])
    ax.invert_yaxis()
    ax.set_xlim(0, max(piece[3] for piece in schedule) + 1)
    ax.set_xlabel("time slot (one micro-batch through one stage)")
