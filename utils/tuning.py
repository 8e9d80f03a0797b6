"""Finding the hyperparameters of a pretraining run: the learning-rate range test, the gradient noise scale, batch-size
scaling rules, and an Optuna study whose trials are runs of the course's training program, with the same search space
written as a SageMaker tuning request.

Defined for notebook 07 (book chapter 7). Depends on `utils.train_settings` (the training program's settings and the
regexes of its metric lines); the SageMaker SDK and Optuna are imported only by the functions that need them.

- `lr_range_test` raises the learning rate exponentially over a short run of a model and records the loss (Smith,
  2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3).
- `log_parabola_minimum` reads the best learning rate between the points of a grid of full runs (a parabola in
  log lr through the best point and its neighbours): how far the best rate moves with width or batch size.
- `gradient_noise_scale` estimates B_simple = tr(Sigma) / |G|^2 from squared gradient norms measured at two batch
  sizes (McCandlish et al., 2018, "An Empirical Model of Large-Batch Training", section 2.2 and appendix A.1): the
  batch size beyond which doubling the batch no longer halves the steps (`squared_gradient_norm` measures them).
- `scaled_learning_rate` moves a learning rate found at one batch size to another: linear (Goyal et al., 2017) or
  square root (Krizhevsky, 2014; Malladi et al., 2022 for Adam); `noise_scale_learning_rate` is McCandlish's
  prediction eps_max / (1 + B_noise / B).
- `Dimension` and a search space (a list of them) name settings of `TrainSettings`; `check_space` refuses an empty
  or contradictory space. `open_study`, `trial_objective` and `run_study` run an Optuna study (TPE sampler, a
  pruner, SQLite storage so an interrupted study resumes) whose trials run `python -m utils.train` as child
  processes: each validation loss the program prints is reported to the pruner, the trial's score is its last
  validation loss (never the training loss), and a trial that crashes, times out, is refused or scores NaN is
  marked failed with its reason while the study goes on (`run_trial` is the runner).
- `parameter_ranges` / `space_from_parameter_ranges` translate the space to SageMaker's `ParameterRanges` (the JSON
  of a CreateHyperParameterTuningJob request) and back; `validate_parameter_ranges` checks it against botocore's API
  model. `utils.sagemaker_jobs.gpt_tuner(trainer, ranges=...)` builds the SDK v3 `HyperparameterTuner` from it (only
  that module imports the SageMaker SDK), and `hyperband_max_resource` says how long a full trial is for Hyperband.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from utils.train_settings import BOUNDS, METRIC_DEFINITIONS, TrainSettings, bound_problem, command_line

REPO = Path(__file__).resolve().parents[1]
PROGRAM = (sys.executable, "-m", "utils.train")  # the course's training program, run from the repository root
OBJECTIVE_METRIC = "validation:loss"  # the name utils.train_settings.METRIC_DEFINITIONS gives the val_loss line
STEP_PATTERN = re.compile(r"\bstep=(\d+);")  # every metric line starts with the step (utils.train_settings)
ADAMW_BETAS = (0.9, 0.95)  # the training program's (utils.train; GPT-3, Brown et al., 2020, appendix B)
# Searchable settings: those that change what is learned. Folders, logging and checkpoint cadence, and the settings
# that define the hardware layout (strategy, precision, workers...) are not hyperparameters.
SEARCHABLE = (
    "layers",
    "width",
    "heads",
    "batch_size",
    "grad_accum",
    "steps",
    "lr",
    "warmup",
    "min_lr_ratio",
    "weight_decay",
    "clip",
    "seed",
)
INTEGER_SETTINGS = {f.name for f in dataclasses.fields(TrainSettings) if f.type in ("int", int)}


# ---------------------------------------------------------------------------------------- learning-rate range test


def lr_range_test(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    lr_min: float = 1e-6,
    lr_max: float = 1.0,
    steps: int = 100,
    weight_decay: float = 0.1,
    smoothing: float = 0.98,
    diverge_factor: float = 4.0,
) -> dict[str, Any]:
    """Train `model` (a transformers model: `model(**batch).loss`) for up to `steps` AdamW steps on `batches`,
    raising the learning rate exponentially from `lr_min` to `lr_max`, and record the loss at each rate (Smith,
    2017, section 3.3). The loss is smoothed with an exponential moving average (`smoothing`, bias-corrected, as
    fastai's `lr_find`); the test stops early once the smoothed loss exceeds `diverge_factor` x its minimum.

    The model is trained in place: build a fresh one for the real runs. Returns `lrs`, `losses` (raw), `smoothed`,
    `steepest` (the rate where the smoothed loss falls fastest per decade) and `minimum_over_10` (the rate of the
    lowest smoothed loss divided by 10, a common, more cautious pick); both are candidates to validate with real
    runs, not answers."""
    if not 0 < lr_min < lr_max:
        raise ValueError(f"need 0 < lr_min < lr_max, got lr_min={lr_min:g}, lr_max={lr_max:g}")
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    optimizer = torch.optim.AdamW(model.parameters(), lr_min, ADAMW_BETAS, weight_decay=weight_decay)
    growth = (lr_max / lr_min) ** (1 / (steps - 1))
    lrs, raw, smoothed = [], [], []
    average, best = 0.0, math.inf
    model.train()
    for step, batch in enumerate(itertools.islice(batches, steps)):
        lr = lr_min * growth**step
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = smoothing * average + (1 - smoothing) * value
        current = average / (1 - smoothing ** (step + 1))
        lrs.append(lr), raw.append(value), smoothed.append(current)
        best = min(best, current)
        if current > diverge_factor * best:
            break
    if len(lrs) < 3:
        raise ValueError(f"the loss diverged after {len(lrs)} steps: lower lr_min (now {lr_min:g})")
    slopes = [(smoothed[i + 1] - smoothed[i - 1]) / math.log10(lrs[i + 1] / lrs[i - 1]) for i in range(1, len(lrs) - 1)]
    steepest = lrs[1 + min(range(len(slopes)), key=slopes.__getitem__)]
    lowest = lrs[min(range(len(smoothed)), key=smoothed.__getitem__)]
    return {"lrs": lrs, "losses": raw, "smoothed": smoothed, "steepest": steepest, "minimum_over_10": lowest / 10}


def log_parabola_minimum(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate of the lowest loss, read between grid points: a parabola in log10(lr) is put through the
    lowest grid point and its two neighbours, and its vertex is returned when the parabola opens upwards (it lies
    between those neighbours then); otherwise (the best point is at the edge of the grid, or the losses are flat)
    the best grid point itself."""
    if len(lrs) != len(losses) or len(lrs) < 1 or min(lrs) <= 0:
        raise ValueError(f"need as many positive learning rates as losses, got {len(lrs)} and {len(losses)}")
    pairs = sorted(zip(lrs, losses, strict=True))
    best = min(range(len(pairs)), key=lambda i: pairs[i][1])
    if best in (0, len(pairs) - 1):
        return pairs[best][0]
    near = pairs[best - 1 : best + 2]
    x = torch.tensor([math.log10(lr) for lr, _ in near], dtype=torch.float64)
    y = torch.tensor([loss for _, loss in near], dtype=torch.float64)
    a, b, _ = torch.linalg.solve(torch.stack([x * x, x, torch.ones_like(x)], dim=1), y).tolist()
    if a <= 0:
        return pairs[best][0]
    return 10 ** min(max(-b / (2 * a), float(x[0])), float(x[-1]))


# ------------------------------------------------------------------------------------ gradient noise scale


def squared_gradient_norm(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """|G_B|^2: the squared norm of the gradient of the batch's mean loss, over every parameter (the gradients are
    cleared afterwards; the parameters do not change)."""
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    total = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return total


def gradient_noise_scale(
    small_norms: Sequence[float], small_batch: int, big_norms: Sequence[float], big_batch: int
) -> dict[str, float]:
    """The simple noise scale B_simple = tr(Sigma) / |G|^2 of McCandlish et al. (2018, section 2.2 and appendix
    A.1), from squared gradient norms |G_B|^2 measured on independent batches of `small_batch` and of `big_batch`
    examples at the same parameters. Since E|G_B|^2 = |G|^2 + tr(Sigma) / B, two batch sizes give unbiased estimates
    of both:

        |G|^2     = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
        tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)

    Each is averaged over the measurements before dividing (the ratio of averages, as the paper does, is less biased
    than the average of ratios). The unit of the batch is the unit of the measurement (sequences of a fixed length
    for a language model; multiply by the context for tokens). B_simple approximates the critical batch size: below
    it, doubling the batch nearly halves the steps; above it, mostly adds compute. Returns `gradient_sq` (|G|^2),
    `trace_sigma`, `noise_scale` (B_simple; inf when the |G|^2 estimate is not positive, negative when the tr(Sigma)
    estimate is: either way the measurements are too few to separate the two terms, so measure more batches), and
    the two mean squared norms."""
    if not 0 < small_batch < big_batch:
        raise ValueError(f"need 0 < small_batch < big_batch, got {small_batch} and {big_batch}")
    if not small_norms or not big_norms:
        raise ValueError("measure at least one squared gradient norm at each batch size")
    small, big = sum(small_norms) / len(small_norms), sum(big_norms) / len(big_norms)
    gradient_sq = (big_batch * big - small_batch * small) / (big_batch - small_batch)
    trace_sigma = (small - big) / (1 / small_batch - 1 / big_batch)
    noise_scale = trace_sigma / gradient_sq if gradient_sq > 0 else math.inf
    return {
        "gradient_sq": gradient_sq,
        "trace_sigma": trace_sigma,
        "noise_scale": noise_scale,
        "small_mean_sq": small,
        "big_mean_sq": big,
    }


# ---------------------------------------------------------------------------------------- batch-size scaling


def scaled_learning_rate(lr: float, batch: int, new_batch: int, rule: Literal["linear", "sqrt"] = "sqrt") -> float:
    """The learning rate for `new_batch` given a good `lr` at `batch` (same unit for both, e.g. sequences per
    optimizer step over all ranks). `linear`: lr x k for k times the batch (Goyal et al., 2017, "Accurate, Large
    Minibatch SGD", for SGD with warm-up). `sqrt`: lr x sqrt(k), which keeps the update's noise constant (Krizhevsky,
    2014, "One weird trick"; derived for Adam by Malladi et al., 2022, "On the SDEs and Scaling Rules for Adaptive
    Gradient Algorithms"). Both are starting points that hold below the critical batch size, not guarantees."""
    if batch < 1 or new_batch < 1:
        raise ValueError(f"batch sizes must be at least 1, got {batch} and {new_batch}")
    factors = {"linear": new_batch / batch, "sqrt": math.sqrt(new_batch / batch)}
    if rule not in factors:
        raise ValueError(f"rule must be one of {', '.join(factors)}, got {rule!r}")
    return lr * factors[rule]


def noise_scale_learning_rate(lr_max: float, batch: float, noise_scale: float) -> float:
    """McCandlish et al.'s (2018, section 2.2, for SGD) optimal learning rate at batch size `batch`:
    lr_max / (1 + B_noise / batch): nearly linear in the batch below the noise scale, flat above it. `lr_max` is the
    rate at an infinite batch, usually fitted from two measured optima."""
    if batch <= 0 or noise_scale < 0:
        raise ValueError(f"need batch > 0 and noise_scale >= 0, got {batch} and {noise_scale}")
    return lr_max / (1 + noise_scale / batch)


# ---------------------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter to search: a `TrainSettings` field `name`, searched over [low, high] (integers for integer
    settings, `log` for a logarithmic scale) or over `choices`."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def kind(self) -> str:
        """`categorical`, `int` or `float`."""
        return "categorical" if self.choices else "int" if self.name in INTEGER_SETTINGS else "float"


def check_space(space: Sequence[Dimension], base: TrainSettings | None = None) -> None:
    """Refuse, naming every problem at once, a search space that cannot run: empty; a setting named twice, unknown
    or not a hyperparameter (`SEARCHABLE`); low >= high; a log scale over values <= 0; an integer setting with a
    fractional bound; a value outside the program's allowed range (`utils.train_settings.BOUNDS`); and, with `base`,
    a space whose every point the program would refuse (width not a multiple of heads, for example)."""
    if not space:
        raise ValueError("the search space is empty: give at least one Dimension, e.g. Dimension('lr', 1e-4, 1e-2)")
    problems, seen = [], set()
    for d in space:
        if d.name in seen:
            problems.append(f"{d.name} is named twice")
        seen.add(d.name)
        if d.name not in SEARCHABLE:
            problems.append(f"{d.name} is not a searchable setting (one of {', '.join(SEARCHABLE)})")
            continue
        values = list(d.choices) if d.choices else [d.low, d.high]
        if d.choices and (d.low is not None or d.high is not None or d.log):
            problems.append(f"{d.name}: give either choices or low/high, not both")
        elif not d.choices and (d.low is None or d.high is None or not d.low < d.high):
            problems.append(f"{d.name}: need low < high, got low={d.low}, high={d.high}")
        elif d.log and d.low <= 0:
            problems.append(f"{d.name}: a log scale needs low > 0, got {d.low:g}")
        if d.kind == "int" and any(isinstance(v, float) and not v.is_integer() for v in values if v is not None):
            problems.append(f"{d.name} is an integer setting, got bounds {values}")
        problems += [f"{d.name}: {p}" for v in values if v is not None and (p := bound_problem(d.name, v))]
    if not problems and base is not None:
        for corner in (_corner(space, low=True), _corner(space, low=False)):
            try:
                dataclasses.replace(base, **corner)
            except ValueError as error:
                problems.append(f"at {corner}: {error}")
    if problems:
        raise ValueError("search space: " + "; ".join(problems))


def _corner(space: Sequence[Dimension], low: bool) -> dict[str, Any]:
    def pick(d: Dimension) -> Any:
        if d.choices:
            return d.choices[0 if low else -1]
        value = d.low if low else d.high
        return int(value) if d.kind == "int" else float(value)

    return {d.name: pick(d) for d in space}


def suggest(trial: Any, space: Sequence[Dimension]) -> dict[str, Any]:
    """The settings an Optuna trial samples from `space` (`trial.suggest_float/int/categorical`)."""
    values = {}
    for d in space:
        if d.choices:
            values[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        elif d.kind == "int":
            values[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            values[d.name] = trial.suggest_float(d.name, float(d.low), float(d.high), log=d.log)
    return values


# ---------------------------------------------------------------------------------------- one trial


@dataclass
class TrialResult:
    """What one run of the training program gave: its validation losses by step, the steps it trained, and why it
    failed (None when it finished). `stopped` is True when `should_stop` ended it early (a pruned trial)."""

    val_losses: dict[int, float]
    steps_trained: int
    seconds: float
    returncode: int | None
    failure: str | None = None
    stopped: bool = False

    @property
    def final_val_loss(self) -> float:
        """The last validation loss logged (the one at the final step for a finished run)."""
        return self.val_losses[max(self.val_losses)] if self.val_losses else math.nan


def _lines(stream: Any, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def parse_metric_line(line: str) -> tuple[int | None, float | None]:
    """(step, validation loss) from one line of the program's output, with the regex SageMaker uses
    (`METRIC_DEFINITIONS`' validation:loss); a `val_loss` that is not a finite number (nan, inf) becomes NaN."""
    step = STEP_PATTERN.search(line)
    if "val_loss=" not in line:
        return (int(step.group(1)) if step else None), None
    regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == OBJECTIVE_METRIC)
    found = re.search(regex, line)
    value = float(found.group(1)) if found else math.nan
    return (int(step.group(1)) if step else None), (value if math.isfinite(value) else math.nan)


def run_trial(
    settings: TrainSettings,
    timeout_s: float = 600.0,
    should_stop: Callable[[int, float], bool] | None = None,
    program: Sequence[str] = PROGRAM,
    env: dict[str, str] | None = None,
) -> TrialResult:
    """Run the training program with `settings` in a child process (from the repository root) and follow its metric
    lines as they come: every validation loss is passed to `should_stop(step, val_loss)`, and when it answers True
    the process is killed (a pruned trial). A run that exits non-zero (its last stderr lines are the reason), passes
    `timeout_s` seconds (killed), or logs a validation loss that is not finite is a failure; so is a finished run
    that logged no validation loss (pass `validation_data`). `program` replaces `python -m utils.train` (tests)."""
    start, losses, steps = time.perf_counter(), {}, 0
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [*program, *command_line(settings)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env=env,
            start_new_session=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
        failure, stopped = None, False
        try:
            while (line := lines.get(timeout=max(timeout_s - (time.perf_counter() - start), 0.01))) is not None:
                step, val_loss = parse_metric_line(line)
                steps = max(steps, step or 0)
                if val_loss is None:
                    continue
                losses[step] = val_loss
                if math.isnan(val_loss):
                    failure = f"validation loss not finite at step {step}: {line.strip()}"
                    break
                if should_stop is not None and should_stop(step, val_loss):
                    stopped = True
                    break
        except queue.Empty:
            failure = f"timed out after {timeout_s:g} s at step {steps}"
        finally:
            _end(process)
        seconds = time.perf_counter() - start
        if failure is None and not stopped and process.returncode != 0:
            errors.seek(0)
            tail = " | ".join(errors.read().strip().splitlines()[-3:])
            failure = f"exit code {process.returncode}: {tail or 'no message'}"
        elif failure is None and not stopped and not losses:
            failure = "no validation loss was logged: set validation_data"
    return TrialResult(losses, steps, seconds, process.returncode, failure, stopped)


def _end(process: subprocess.Popen) -> None:
    """Wait for a process that finished, kill one that did not (with its children: its own session)."""
    if process.poll() is None:
        try:
            process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    process.stdout.close()


# ---------------------------------------------------------------------------------------- an Optuna study


class TrialFailed(Exception):
    """A trial that crashed, timed out, was refused or scored NaN; the study records it as failed and goes on."""


def open_study(
    storage: str | Path, name: str = "study", seed: int = 0, pruner: Any = None, startup_trials: int = 10
) -> Any:
    """Create, or resume, the Optuna study `name` kept in the SQLite file `storage`: minimise the validation loss with
    a seeded TPE sampler (Bergstra et al., 2011, "Algorithms for Hyper-Parameter Optimization") and `pruner`
    (default: `MedianPruner(n_startup_trials=2)`, which stops a trial whose intermediate value is worse than the
    median of earlier trials at the same step once 2 trials completed; Optuna's default of 5 is most of a study of a
    dozen trials). Every trial is written to the file as it ends, so a study that was interrupted (Ctrl-C, a crash, a
    killed kernel) resumes where it stopped: `run_study` first reruns the trials the interruption cut short, with
    their parameters. The sampler's seed is offset by the number of trials already stored, so a resumed study does
    not replay the random start of the first session. TPE samples the first `startup_trials` trials at random (Optuna's
    default, 10) before it models the scores: a study of a dozen trials needs fewer to let TPE act."""
    import optuna

    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    pruner = pruner if pruner is not None else optuna.pruners.MedianPruner(n_startup_trials=2)
    study = optuna.create_study(
        storage=f"sqlite:///{path.resolve()}", study_name=name, direction="minimize", pruner=pruner, load_if_exists=True
    )
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=startup_trials, seed=seed + len(study.trials))
    return study


def trial_objective(
    space: Sequence[Dimension],
    base: TrainSettings,
    runs: str | Path,
    timeout_s: float = 600.0,
    program: Sequence[str] = PROGRAM,
    env: dict[str, str] | None = None,
) -> Callable[[Any], float]:
    """The objective of an Optuna study: sample the settings from `space` over `base`, run the program in a fresh
    `runs/trial-NNNN` (`run_trial`), report every validation loss to the pruner as an intermediate value at its
    step, and return the final validation loss. A pruned trial raises `optuna.TrialPruned`; a failed one raises
    `TrialFailed` with its reason, also kept in the trial's user attribute `failure`; `steps_trained` and `seconds`
    are recorded for every trial (what the pruner saved is measured from them). `base` must set `validation_data`."""
    import optuna

    check_space(space, base)
    if not base.validation_data:
        raise ValueError("trials are scored on the validation loss: set validation_data on the base settings")

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, space)
        output = Path(runs) / f"trial-{trial.number:04d}"
        shutil.rmtree(output, ignore_errors=True)  # left by a deleted study: the program would resume its checkpoints
        try:
            settings = dataclasses.replace(base, **values, output=str(output), checkpoint_dir=str(output / "ckpt"))
        except ValueError as error:  # a point of the space the program refuses, e.g. width not a multiple of heads
            trial.set_user_attr("failure", f"refused: {error}")
            raise TrialFailed(f"refused: {error}") from None

        def should_stop(step: int, val_loss: float) -> bool:
            trial.report(val_loss, step)
            return trial.should_prune()

        try:
            result = run_trial(settings, timeout_s, should_stop, program, env)
        except KeyboardInterrupt:
            trial.set_user_attr("failure", "interrupted")
            raise
        trial.set_user_attr("steps_trained", result.steps_trained)
        trial.set_user_attr("seconds", round(result.seconds, 3))
        if result.stopped:
            raise optuna.TrialPruned(f"pruned at step {result.steps_trained}")
        if result.failure:
            trial.set_user_attr("failure", result.failure)
            raise TrialFailed(result.failure)
        return result.final_val_loss

    return objective


def superseded_trials(study: Any) -> set[int]:
    """Numbers of the trials that an interruption cut short and that were queued again (`run_study`)."""
    return {t.user_attrs["retry_of"] for t in study.trials if "retry_of" in t.user_attrs}


def run_study(study: Any, objective: Callable[[Any], float], trials: int, progress: bool = False) -> Any:
    """Run `study` until it holds `trials` finished trials (complete, pruned or failed), counting those a previous
    session stored. A trial that an interruption cut short (still running in the file because its process died, or
    failed with `failure` = interrupted after a Ctrl-C) is first queued again with its parameters and no longer
    counts. Failed trials do not stop the study. One process runs a study at a time. Returns the study."""
    import optuna

    states = optuna.trial.TrialState
    retried = superseded_trials(study)
    for t in study.trials:
        interrupted = t.state == states.FAIL and t.user_attrs.get("failure") == "interrupted"
        if (t.state == states.RUNNING or interrupted) and t.number not in retried:
            if t.state == states.RUNNING:  # its process died: close it as failed
                study.tell(t.number, state=states.FAIL)
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            retried.add(t.number)
    done = sum(t.state.is_finished() and t.number not in retried for t in study.trials)
    if trials > done:
        study.optimize(objective, n_trials=trials - done, catch=(TrialFailed,), show_progress_bar=progress)
    return study


def study_summary(study: Any) -> dict[str, Any]:
    """Counts by state, the steps trained in all, and the best trial: `best` is None (and `message` says why) when
    no trial completed, so a study whose every trial failed never reports a best value. Trials that were rerun after
    an interruption count once."""
    import optuna

    states = optuna.trial.TrialState
    retried = superseded_trials(study)
    trials = [t for t in study.trials if t.number not in retried and t.user_attrs.get("failure") != "interrupted"]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in (states.COMPLETE, states.PRUNED, states.FAIL)}
    summary: dict[str, Any] = counts | {"steps_trained": sum(t.user_attrs.get("steps_trained", 0) for t in trials)}
    complete = [t for t in trials if t.state == states.COMPLETE]
    if not complete:
        reasons = sorted({t.user_attrs.get("failure", t.state.name.lower()) for t in trials})
        return summary | {"best": None, "message": f"no trial completed ({len(trials)} tried): {'; '.join(reasons)}"}
    best = min(complete, key=lambda t: t.value)
    return summary | {"best": {"number": best.number, "value": best.value, "params": best.params}, "message": ""}


# ---------------------------------------------------------------------------------------- SageMaker


SCALING = {False: "Linear", True: "Logarithmic"}  # SageMaker's ScalingType values (HyperParameterScalingType)


def parameter_ranges(space: Sequence[Dimension]) -> dict[str, list[dict[str, Any]]]:
    """The space as SageMaker's `ParameterRanges` (the JSON of CreateHyperParameterTuningJob), hyperparameters named
    as the program's flags without dashes (`batch-size`), values as strings as the API wants them."""
    check_space(space)
    ranges: dict[str, list[dict[str, Any]]] = {
        "IntegerParameterRanges": [],
        "ContinuousParameterRanges": [],
        "CategoricalParameterRanges": [],
    }
    for d in space:
        name = d.name.replace("_", "-")
        if d.choices:
            ranges["CategoricalParameterRanges"].append({"Name": name, "Values": [str(v) for v in d.choices]})
            continue
        kind = "IntegerParameterRanges" if d.kind == "int" else "ContinuousParameterRanges"
        low, high = (int(d.low), int(d.high)) if d.kind == "int" else (d.low, d.high)
        ranges[kind].append({"Name": name, "MinValue": str(low), "MaxValue": str(high), "ScalingType": SCALING[d.log]})
    return ranges


def space_from_parameter_ranges(ranges: dict[str, list[dict[str, Any]]]) -> list[Dimension]:
    """The search space a SageMaker `ParameterRanges` describes (as sent in a CreateHyperParameterTuningJob request),
    the inverse of `parameter_ranges`. `Auto` and `ReverseLogarithmic` scaling have no Optuna counterpart: refused."""
    space = []
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges"):
        for r in ranges.get(kind, []):
            scaling = r.get("ScalingType", "Linear")
            if scaling not in SCALING.values():
                raise ValueError(f"{r['Name']}: scaling {scaling} has no Optuna counterpart: use Linear or Logarithmic")
            cast = int if kind == "IntegerParameterRanges" else float
            space.append(
                Dimension(
                    r["Name"].replace("-", "_"), cast(r["MinValue"]), cast(r["MaxValue"]), log=scaling == "Logarithmic"
                )
            )
    for r in ranges.get("CategoricalParameterRanges", []):
        name = r["Name"].replace("-", "_")
        cast = int if name in INTEGER_SETTINGS else float if name in BOUNDS else str
        space.append(Dimension(name, choices=tuple(cast(v) for v in r["Values"])))
    check_space(space)
    return space


def validate_parameter_ranges(ranges: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`ranges` if SageMaker's API model, as botocore ships it, accepts it as a `ParameterRanges` structure, else
    ValueError naming every problem: botocore's own validation (field names, types, required members) plus what
    botocore leaves to the service (the ScalingType enumeration, at most 30 ranges of each kind). Offline and
    instant; the whole tuning request is validated by sending it to the emulator (`utils.sagemaker_jobs`)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("sagemaker")
    shape = model.shape_for("ParameterRanges")
    report = ParamValidator().validate(ranges, shape)
    problems = [report.generate_report()] if report.has_errors() else []
    scalings = model.shape_for("HyperParameterScalingType").enum
    for kind, member in shape.members.items():
        values = ranges.get(kind, [])
        if len(values) > member.metadata["max"]:
            problems.append(f"{kind}: {len(values)} ranges, SageMaker allows {member.metadata['max']}")
        wrong = [r for r in values if isinstance(r, dict) and r.get("ScalingType", "Auto") not in scalings]
        problems += [f"{r.get('Name')}: ScalingType {r['ScalingType']!r} is not one of {scalings}" for r in wrong]
    if problems:
        raise ValueError("SageMaker refuses these ParameterRanges: " + "; ".join(problems))
    return ranges


def hyperband_max_resource(settings: TrainSettings) -> int:
    """The resource SageMaker's Hyperband strategy counts for a full trial of `settings`: the validation losses it
    logs (every `eval_every` steps, and at the last step if that is not one of them), the values of the objective
    metric that Hyperband compares trials on."""
    if not settings.eval_every:
        return 1
    return settings.steps // settings.eval_every + (settings.steps % settings.eval_every != 0)
