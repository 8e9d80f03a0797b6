"""Log axes show exactly the ticks asked for, with no overlapping minor labels."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

from utils.parallelism import bubble_fraction, gpipe_schedule
from utils.plotting import attention_map, log_axis, plot_history, plot_schedule, plot_shares


def _visible_labels(axis):
    """The tick labels matplotlib actually draws (major and minor) after a render."""
    axis.figure.canvas.draw()
    major = [t.get_text() for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]
    minor = [t.get_text() for t in axis.get_ticklabels(minor=True) if t.get_visible() and t.get_text()]
    return major, minor


def test_set_xticks_alone_leaves_minor_labels_that_overlap_the_chosen_ones():
    """The defect log_axis fixes: on a log axis spanning about a decade, matplotlib labels minor ticks too."""
    fig, ax = plt.subplots()
    sizes = [128, 256, 512, 1024, 2048]
    ax.plot(sizes, sizes)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    _, minor = _visible_labels(ax.xaxis)
    plt.close(fig)
    assert minor, "matplotlib no longer labels minor log ticks; log_axis may be unnecessary"


@pytest.mark.parametrize("axis", ["x", "y"])
def test_log_axis_draws_only_the_given_ticks(axis):
    fig, ax = plt.subplots()
    sizes = [128, 256, 512, 1024, 2048]
    ax.plot(sizes, sizes)
    log_axis(ax, sizes, axis=axis, base=2)
    major, minor = _visible_labels(ax.xaxis if axis == "x" else ax.yaxis)
    plt.close(fig)
    assert major == ["128", "256", "512", "1,024", "2,048"] and minor == []
    assert (ax.get_xscale() if axis == "x" else ax.get_yscale()) == "log"


def test_log_axis_custom_labels_and_bad_input():
    fig, ax = plt.subplots()
    ax.plot([0.5, 1, 2], [1, 2, 3])
    log_axis(ax, [0.5, 1, 2], labels=["½", "1", "2"])
    assert _visible_labels(ax.xaxis) == (["½", "1", "2"], [])
    log_axis(ax, [0.5, 2])
    assert _visible_labels(ax.xaxis)[0] == ["0.5", "2"]
    with pytest.raises(ValueError, match="positive"):
        log_axis(ax, [0, 1])
    with pytest.raises(ValueError, match="labels"):
        log_axis(ax, [1, 2], labels=["1"])
    with pytest.raises(ValueError, match="axis"):
        log_axis(ax, [1, 2], axis="z")
    plt.close(fig)


def test_plot_history_draws_train_and_validation_and_returns_the_evaluations():
    history = [
        {"step": 0, "val_loss": 5.0},
        {"step": 1, "train_loss": 4.0},
        {"step": 2, "train_loss": 3.0, "val_loss": 3.5},
    ]
    fig, ax = plt.subplots()
    evals = plot_history(ax, history, val_label="held out")
    assert [r["step"] for r in evals] == [0, 2]
    (train, val) = ax.get_lines()
    assert list(train.get_xdata()) == [1, 2] and list(val.get_ydata()) == [5.0, 3.5] and val.get_label() == "held out"
    with pytest.raises(ValueError, match="no evaluated rows"):
        plot_history(ax, history[1:2])
    plt.close(fig)


def test_attention_map_labels_queries_and_keys_with_the_tokens():
    tokens = ["to", "be", "or"]
    weights = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]  # causal: row i spreads over the first i + 1
    fig, ax = plt.subplots()
    attention_map(ax, weights, tokens, "causal")
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == tokens == [t.get_text() for t in ax.get_yticklabels()]
    assert ax.get_images()[0].get_array().sum() == pytest.approx(3.0)  # every row sums to one
    with pytest.raises(ValueError, match="do not match 2 tokens"):
        attention_map(ax, weights, tokens[:2], "wrong")
    plt.close(fig)


def test_gpipe_schedule_respects_dependencies_and_its_bubble_matches_the_paper():
    schedule = gpipe_schedule(2, 4)
    slot = {(stage, phase, mb): t for stage, phase, mb, t in schedule}
    assert len(schedule) == 16 and len(set(slot.values())) == 10  # 2 x (4 + 2 - 1) slots
    for mb in range(4):
        path = ((0, "forward"), (1, "forward"), (1, "backward"), (0, "backward"))
        order = [slot[(s, phase, mb)] for s, phase in path]
        assert order == sorted(set(order))  # forward through the stages, then backward from the last
    assert len({(stage, t) for stage, _, _, t in schedule}) == len(schedule)  # one piece of work per stage and slot
    for stages, microbatches in [(2, 4), (4, 8), (3, 1)]:
        expected = (stages - 1) / (microbatches + stages - 1)  # Huang et al. (2019)
        assert bubble_fraction(gpipe_schedule(stages, microbatches)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        gpipe_schedule(0, 4)


def test_shares_and_schedule_draw_one_box_per_piece():
    fig, (top, bottom) = plt.subplots(2)
    plot_shares(top, {"DDP": (1, 1, 1), "FSDP": (0.5, 0.5, 0.5)}, ("parameters", "gradients", "optimizer"))
    assert len(top.patches) == 12 and [t.get_text() for t in top.get_yticklabels()] == ["DDP", "FSDP"]
    plot_schedule(bottom, gpipe_schedule(2, 4))
    assert len(bottom.patches) == 16 and bottom.get_xlim() == (0, 10)
    with pytest.raises(ValueError, match="one value per part"):
        plot_shares(top, {"DDP": (1, 1)}, ("parameters", "gradients", "optimizer"))
    plt.close(fig)
