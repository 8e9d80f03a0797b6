"""utils.tuning: the learning-rate range test, the gradient noise scale against a case with a known answer, the
scaling rules, search-space checks and their translation to SageMaker and back, and Optuna studies whose trials are
child processes: one real run of the training program, then a stand-in program (a short script that prints the same
metric lines) for crashes, NaN, timeouts, pruning and a study interrupted with Ctrl-C and resumed from SQLite."""

import dataclasses
import math
import signal
import sys
import textwrap
from types import SimpleNamespace

import optuna
import pytest
import torch
from conftest import PROGRAM_ENV

from utils import tuning as T
from utils.models import small_gpt
from utils.training_runs import read_metrics

optuna.logging.set_verbosity(optuna.logging.ERROR)

# A stand-in for `python -m utils.train`: reads the flags, prints the program's metric lines. The validation loss
# is lowest at lr = 1e-3 and falls with the step; FAKE_MODE makes it crash, print NaN, hang, or press Ctrl-C on its
# parent (the notebook's kernel, here pytest) in the trial whose output folder ends with FAKE_INTERRUPT.
STAND_IN = textwrap.dedent(
    """
    import math, os, signal, sys, time
    flags = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    lr, steps = float(flags.get("--lr", 3e-4)), int(flags.get("--steps", 100))
    every, mode = int(flags.get("--eval-every", 50)), os.environ.get("FAKE_MODE", "ok")
    if mode == "crash":
        sys.exit("error: --width (30) must be a multiple of --heads (4)")
    if flags.get("--output", "").endswith(os.environ.get("FAKE_INTERRUPT", "none")):
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(30)
    for step in range(every, steps + 1, every):
        loss = (math.log10(lr) + 3) ** 2 + 1 + 1 / step
        if mode == "hang":
            time.sleep(30)
        print(f"step={step}; loss={loss + 0.1:.6g}; lr={lr:.6g};", flush=True)
        print(f"step={step}; val_loss={float('nan') if mode == 'nan' else loss:.6g}; val_tokens=100;", flush=True)
    """
)


@pytest.fixture
def stand_in(tmp_path):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    return (sys.executable, str(script))


@pytest.fixture
def base(tiny, validation_shards, tmp_path):
    return tiny(
        validation_data=str(validation_shards), steps=6, eval_every=2, checkpoint_every=0, output=str(tmp_path / "out")
    )


SPACE = [T.Dimension("lr", 1e-4, 1e-2, log=True), T.Dimension("warmup", 0, 4)]


def gpt_batches(count, batch, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(count):
        start = torch.randint(0, 90, (batch, 1), generator=generator)
        ids = (start + torch.arange(16)) % 99 + 1  # the counting sequences of the test shards
        yield {"input_ids": ids, "labels": ids}


def test_lr_range_test_rises_exponentially_and_stops_when_the_loss_diverges():
    torch.manual_seed(0)
    model = small_gpt(100, 16, 1, 32, 2)
    found = T.lr_range_test(model, gpt_batches(30, 4), lr_min=1e-4, lr_max=100.0, steps=30)
    lrs = found["lrs"]
    assert len(lrs) < 30, "an lr of 100 must diverge before the end"
    assert all(math.isclose(b / a, (100 / 1e-4) ** (1 / 29), rel_tol=1e-9) for a, b in zip(lrs, lrs[1:], strict=False))
    assert min(found["smoothed"]) < found["smoothed"][0] - 0.25, "the loss must fall at some rate before diverging"
    assert lrs[0] < found["minimum_over_10"] < found["steepest"] * 10 and lrs[0] < found["steepest"] < lrs[-1]
    with pytest.raises(ValueError, match="lr_min < lr_max"):
        T.lr_range_test(model, gpt_batches(2, 2), lr_min=1e-2, lr_max=1e-3)


def test_gradient_noise_scale_recovers_a_known_noise_scale():
    """loss = mean_i(w . x_i) with x_i ~ N(mu, I) in d dimensions: the gradient of a batch is the mean of its x_i, so
    |G|^2 = |mu|^2 and tr(Sigma) = d; with d = 50 and mu = 0.1 everywhere, B_simple = 50 / 0.5 = 100."""
    d, mu = 50, torch.full((50,), 0.1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(d, dtype=torch.float64))

        def forward(self, x):
            return SimpleNamespace(loss=(x @ self.w).mean())

    model = Linear()

    def norms(batch):
        draws = [mu + torch.randn(batch, d, dtype=torch.float64, generator=generator) for _ in range(300)]
        return [T.squared_gradient_norm(model, {"x": x}) for x in draws]

    found = T.gradient_noise_scale(norms(16), 16, norms(256), 256)
    assert found["gradient_sq"] == pytest.approx(0.5, rel=0.1) and found["trace_sigma"] == pytest.approx(50, rel=0.1)
    assert found["noise_scale"] == pytest.approx(100, rel=0.15)
    assert T.gradient_noise_scale([1.0], 1, [0.1], 4)["noise_scale"] == math.inf  # |G|^2 <= 0: all noise
    with pytest.raises(ValueError, match="small_batch < big_batch"):
        T.gradient_noise_scale([1.0], 8, [1.0], 8)


def test_scaling_rules():
    assert T.scaled_learning_rate(1e-3, 16, 64, "linear") == pytest.approx(4e-3)
    assert T.scaled_learning_rate(1e-3, 16, 64, "sqrt") == pytest.approx(2e-3)
    assert T.noise_scale_learning_rate(1e-2, batch=100, noise_scale=100) == pytest.approx(5e-3)
    with pytest.raises(ValueError, match="rule must be one of linear, sqrt"):
        T.scaled_learning_rate(1e-3, 16, 64, "cubic")


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ([], "empty"),
        ([T.Dimension("lr", 1e-2, 1e-4)], "need low < high"),
        ([T.Dimension("lr", 0.0, 1e-2, log=True)], "log scale needs low > 0"),
        ([T.Dimension("lr", 1e-4, 2.0)], r"--lr must be in \(0, 1\]"),
        ([T.Dimension("warmup", 0, 2.5)], "integer setting"),
        ([T.Dimension("output", choices=("a", "b"))], "not a searchable setting"),
        ([T.Dimension("lr", 1e-4, 1e-2), T.Dimension("lr", 1e-4, 1e-3)], "named twice"),
        ([T.Dimension("width", choices=(30, 34))], "multiple of --heads"),
    ],
)
def test_an_empty_or_contradictory_space_is_refused_with_its_reason(tiny, space, message):
    with pytest.raises(ValueError, match=message):
        T.check_space(space, tiny(heads=4))


def test_space_translates_to_sagemaker_ranges_and_back():
    space = [*SPACE, T.Dimension("width", choices=(64, 128)), T.Dimension("weight_decay", 0.0, 0.2)]
    ranges = T.validate_parameter_ranges(T.parameter_ranges(space))
    assert ranges["ContinuousParameterRanges"][0] == {
        "Name": "lr",
        "MinValue": "0.0001",
        "MaxValue": "0.01",
        "ScalingType": "Logarithmic",
    }
    assert ranges["CategoricalParameterRanges"] == [{"Name": "width", "Values": ["64", "128"]}]
    assert set(T.space_from_parameter_ranges(ranges)) == set(space)
    with pytest.raises(ValueError, match="ScalingType 'Exponential'"):
        T.validate_parameter_ranges(
            {"ContinuousParameterRanges": [ranges["ContinuousParameterRanges"][0] | {"ScalingType": "Exponential"}]}
        )
    with pytest.raises(ValueError, match="MaxValue"):
        T.validate_parameter_ranges({"IntegerParameterRanges": [{"Name": "warmup", "MinValue": "0"}]})
    assert T.hyperband_max_resource(T.TrainSettings(steps=100, eval_every=30)) == 4  # 30, 60, 90 and 100


def test_a_real_trial_reports_the_validation_losses_the_program_logged(base):
    seen = []
    result = T.run_trial(base, 120, lambda step, loss: seen.append((step, loss)) or False, env=PROGRAM_ENV)
    assert result.failure is None and result.returncode == 0 and result.steps_trained == 6
    logged = {row["step"]: row["val_loss"] for row in read_metrics(base.output) if "val_loss" in row}
    assert list(logged) == [2, 4, 6] and seen == [(s, pytest.approx(v, rel=1e-5)) for s, v in logged.items()]
    assert result.final_val_loss == pytest.approx(logged[6], rel=1e-5)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("crash", "exit code 1: error: --width"), ("nan", "validation loss not finite at step 2"), ("hang", "timed out")],
)
def test_a_crash_nan_or_timeout_fails_the_trial_with_its_reason_and_the_study_goes_on(
    base, stand_in, tmp_path, mode, reason
):
    objective = T.trial_objective(
        SPACE,
        dataclasses.replace(base, steps=4),
        tmp_path / "runs",
        timeout_s=1.5,
        program=stand_in,
        env={"FAKE_MODE": mode},
    )
    study = T.run_study(T.open_study(tmp_path / "study.db"), objective, trials=2)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all(t.user_attrs["failure"].startswith(reason) for t in study.trials)
    summary = T.study_summary(study)
    assert summary["best"] is None and summary["fail"] == 2 and reason in summary["message"]


def test_the_pruner_stops_bad_trials_and_the_best_is_scored_on_validation_loss(base, stand_in, tmp_path):
    space = [T.Dimension("lr", choices=(1e-5, 1e-3, 1e-1))]  # the stand-in's optimum is 1e-3
    settings = dataclasses.replace(base, steps=40, eval_every=10)
    objective = T.trial_objective(space, settings, tmp_path / "runs", program=stand_in)
    study = T.open_study(tmp_path / "study.db")
    for lr in (1e-3, 1e-3, 1e-1, 1e-5):
        study.enqueue_trial({"lr": lr})
    summary = T.study_summary(T.run_study(study, objective, trials=4))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert [t.user_attrs["steps_trained"] for t in study.trials] == [40, 40, 10, 10]
    assert summary["best"]["value"] == pytest.approx(1 + 1 / 40) and summary["steps_trained"] == 100
    assert study.trials[2].intermediate_values == {10: pytest.approx(4 + 1 + 1 / 10)}


def test_a_study_interrupted_with_ctrl_c_resumes_from_sqlite_with_the_same_trials(base, stand_in, tmp_path):
    settings = dataclasses.replace(base, steps=4)
    objective = T.trial_objective(SPACE, settings, tmp_path / "runs", program=stand_in, env={"FAKE_INTERRUPT": "0002"})
    study = T.open_study(tmp_path / "study.db", name="resumable", seed=3, pruner=optuna.pruners.NopPruner())
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            T.run_study(study, objective, trials=5)
    finally:
        signal.signal(signal.SIGINT, previous)
    before = [(t.number, t.state.name, t.params, t.value) for t in study.trials]
    assert [state for _, state, _, _ in before] == ["COMPLETE", "COMPLETE", "FAIL"]

    resumed = T.open_study(tmp_path / "study.db", "resumable", 3, optuna.pruners.NopPruner())  # only the file is shared
    again = T.trial_objective(SPACE, settings, tmp_path / "runs", program=stand_in)
    T.run_study(resumed, again, trials=5)
    after = resumed.trials
    assert [(t.number, t.state.name, t.params, t.value) for t in after[:3]] == before  # nothing rerun or lost
    assert after[3].params == before[2][2] and after[3].user_attrs["retry_of"] == 2  # the cut trial, rerun first
    assert [t.state.name for t in after[3:]] == ["COMPLETE"] * 3 and len(after) == 6
    summary = T.study_summary(resumed)
    assert summary["complete"] == 5 and summary["best"]["value"] == min(t.value for t in after if t.value is not None)
    T.run_study(T.open_study(tmp_path / "study.db", name="resumable"), again, trials=5)  # finished: nothing more runs
    assert len(T.open_study(tmp_path / "study.db", name="resumable").trials) == 6


def test_log_parabola_minimum_reads_the_best_rate_between_grid_points():
    grid = [1e-4, 1e-3, 1e-2, 1e-1]
    losses = [(math.log10(lr) + 2.7) ** 2 for lr in grid]  # lowest at lr = 10**-2.7, between two grid points
    assert T.log_parabola_minimum(grid, losses) == pytest.approx(10**-2.7, rel=1e-6)
    assert T.log_parabola_minimum(grid, [4.0, 3.0, 2.0, 1.0]) == 1e-1  # best at the edge: the grid point itself
    assert T.log_parabola_minimum([1e-3, 1e-2, 1e-1], [1.0, 1.0, 1.0]) in (1e-3, 1e-2, 1e-1)  # flat: a grid point
    with pytest.raises(ValueError, match="positive learning rates"):
        T.log_parabola_minimum([0.0, 1e-3], [1.0, 2.0])
