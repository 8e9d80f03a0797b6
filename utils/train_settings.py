"""The settings of the course's training program (`python -m utils.train`), and the metric lines it prints.

Defined for notebooks 05, 08 and 09 (book chapters 5, 8 and 9). One typed dataclass, `TrainSettings`, with help text
and an allowed range per field. It is filled once, by `parse_settings`, in this order of precedence:

    1. a flag typed on the command line (`--lr 1e-3`, also spelled `--batch_size` or `--batch-size`)
    2. SageMaker's environment: hyperparameters (SM_HPS, else /opt/ml/input/config/hyperparameters.json) and the
       folders SageMaker names (SM_CHANNEL_TRAINING, SM_CHANNEL_VALIDATION, SM_MODEL_DIR; checkpoints in
       /opt/ml/checkpoints when running under SageMaker, or under `$SAGEMAKER_BASE_DIR` where the training toolkit
       was pointed at another folder, as `utils.sagemaker_local` does)
    3. the dataclass default

Bad values stop the program before any work with a message naming the flag and its allowed range (exit code 2).
`command_line(settings)` turns a `TrainSettings` back into flags, so code that starts the program (notebooks,
`utils.training_runs.launch`, SageMaker hyperparameters via `hyperparameters(settings)`) passes typed values.

Metric lines. The program prints one line per logged step on stdout, `key=value;` pairs separated by a space, floats
with six significant digits (`%.6g`), and appends the same record as JSON to `<output>/metrics.jsonl`:

    step=20; loss=4.12345; lr=0.000293; grad_norm=0.8125; tokens_per_s=10512.3; mfu=0.4123;
    step=20; val_loss=4.30127; val_tokens=8192;

`loss` is the training loss (mean over ranks and micro-steps), `lr` the learning rate that step used, `grad_norm` the
gradient norm before clipping, `mfu` the model FLOPs utilisation (`utils.sizing.training_flops_per_token`, output
projection included, divided by the peak the run states at start). `val_loss` is the mean token loss on held-out
shards (`--validation-data`), logged every `--eval-every` steps and at the end: select runs on it, never on `loss`.
`METRIC_DEFINITIONS` are the regexes (SageMaker's `MetricDefinitions` format) that scrape these lines; tests check
that every key the program prints is scraped by exactly one of them.

Standard library only (transformers' `HfArgumentParser` is imported when parsing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SAGEMAKER_HYPERPARAMETERS = Path("/opt/ml/input/config/hyperparameters.json")
SAGEMAKER_BASE = Path("/opt/ml")  # the container folder contract (the training toolkit: $SAGEMAKER_BASE_DIR)
SAGEMAKER_CHECKPOINTS = SAGEMAKER_BASE / "checkpoints"  # synced to S3 by SageMaker when checkpointing is configured
EXIT_BAD_INPUT = 2  # a setting, the data or a checkpoint folder refused before training (argparse's code)

METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"\bloss=([0-9.eE+-]+);"},
    {"Name": "train:lr", "Regex": r"\blr=([0-9.eE+-]+);"},
    {"Name": "train:grad_norm", "Regex": r"\bgrad_norm=([0-9.eE+-]+);"},
    {"Name": "train:tokens_per_second", "Regex": r"\btokens_per_s=([0-9.eE+-]+);"},
    {"Name": "train:mfu", "Regex": r"\bmfu=([0-9.eE+-]+);"},
    {"Name": "validation:loss", "Regex": r"\bval_loss=([0-9.eE+-]+);"},
]


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class TrainSettings:
    """Everything that defines a run of `python -m utils.train`. Sizes are per rank unless a help text says
    otherwise; GPT-2 small's values are given for scale."""

    data: str | None = _setting(None, "folder of token shards, or images.npz for --model vit ($SM_CHANNEL_TRAINING)")
    validation_data: str | None = _setting(None, "held-out shards for val_loss ($SM_CHANNEL_VALIDATION; none: off)")
    output: str | None = _setting(None, "metrics.jsonl, memory.json and the final model ($SM_MODEL_DIR, runs/train)")
    checkpoint_dir: str | None = _setting(None, "checkpoints (/opt/ml/checkpoints on SageMaker, else <output>/...)")
    model: Literal["gpt", "vit"] = _setting("gpt", "gpt: token shards; vit: images.npz (digits)")
    layers: int = _setting(4, "transformer blocks (GPT-2 small: 12)")
    width: int = _setting(256, "model width, a multiple of --heads (GPT-2 small: 768)")
    heads: int = _setting(4, "attention heads (GPT-2 small: 12)")
    batch_size: int = _setting(16, "blocks per rank per micro-step (GPT-2: 512 sequences per step in all)")
    grad_accum: int = _setting(1, "micro-steps per optimizer step")
    steps: int = _setting(100, "optimizer steps in the whole run")
    lr: float = _setting(3e-4, "peak learning rate of AdamW")
    warmup: int = _setting(10, "steps of linear warm-up before the cosine decay")
    min_lr_ratio: float = _setting(0.1, "final learning rate as a fraction of the peak")
    weight_decay: float = _setting(0.1, "AdamW's decoupled weight decay")
    clip: float = _setting(1.0, "clip the gradient norm to this (0: no clipping; the norm is logged either way)")
    strategy: Literal["none", "ddp", "fsdp"] = _setting("none", "how ranks share the work (none: one process only)")
    precision: Literal["auto", "fp32", "bf16"] = _setting("auto", "auto: bf16 on GPUs, fp32 on CPUs")
    activation_checkpointing: bool = _setting(False, "recompute each block's activations in the backward pass")
    compile: bool = _setting(False, "torch.compile the model")
    workers: int = _setting(0, "DataLoader worker processes per rank (0: read in the training process)")
    verify_data: bool = _setting(
        True,
        "before training, check every shard's SHA-256 and token ids (utils.loaders.verify_shards, about 2.5 s/GB, on "
        "local rank 0 of each host); false: only the fast checks (index, dtype, vocabulary, sizes) every open runs",
    )
    log_every: int = _setting(10, "steps between metric lines")
    eval_every: int = _setting(50, "steps between validation losses (also at the end; 0: only at the end)")
    eval_batches: int = _setting(8, "batches of --batch-size blocks per rank in each validation")
    checkpoint_every: int = _setting(50, "steps between checkpoints (0: only on SIGTERM and at the end)")
    keep_checkpoints: int = _setting(2, "complete checkpoints kept on disk")
    peak_flops: float = _setting(0.0, "device peak FLOP/s for MFU (0: measure a 2048 x 2048 matmul at start)")
    preflight: bool = _setting(False, "before training, check devices, an all-reduce and that no rank is slow")
    preflight_gflops: float = _setting(0.0, "pre-flight also fails a rank whose matmul is below this (0: no floor)")
    preflight_tolerance: float = _setting(0.5, "pre-flight fails a rank below this fraction of the median rank")
    collective_timeout: float = _setting(600.0, "seconds a collective may wait for another rank before failing")
    max_bad_steps: int = _setting(0, "steps with a non-finite loss or gradient skipped before stopping (0: stop)")
    seed: int = _setting(0, "seed for the model, the data order and every random generator")

    def __post_init__(self) -> None:
        problems = [problem for name in BOUNDS if (problem := bound_problem(name, getattr(self, name)))]
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{flag(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.heads >= 1 and self.width % self.heads:
            problems.append(f"--width ({self.width}) must be a multiple of --heads ({self.heads})")
        if problems:
            raise ValueError("; ".join(problems))


# (lowest, highest or None for no limit, whether the lowest itself is allowed) for every numeric setting.
BOUNDS: dict[str, tuple[float, float | None, bool]] = {
    "layers": (1, 4096, True),
    "width": (1, None, True),
    "heads": (1, 4096, True),
    "batch_size": (1, None, True),
    "grad_accum": (1, None, True),
    "steps": (1, None, True),
    "lr": (0, 1, False),
    "warmup": (0, None, True),
    "min_lr_ratio": (0, 1, True),
    "weight_decay": (0, 1, True),
    "clip": (0, None, True),
    "workers": (0, 256, True),
    "log_every": (1, None, True),
    "eval_every": (0, None, True),
    "eval_batches": (1, None, True),
    "checkpoint_every": (0, None, True),
    "keep_checkpoints": (1, None, True),
    "peak_flops": (0, None, True),
    "preflight_gflops": (0, None, True),
    "preflight_tolerance": (0, 1, False),
    "collective_timeout": (0, 7 * 24 * 3600, False),
    "max_bad_steps": (0, None, True),
    "seed": (0, 2**32 - 1, True),
}
CHOICES = {"model": ("gpt", "vit"), "strategy": ("none", "ddp", "fsdp"), "precision": ("auto", "fp32", "bf16")}


def flag(name: str) -> str:
    """The flag spelling of a setting: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def bound_problem(name: str, value: Any) -> str | None:
    """Why `value` is not allowed for setting `name` (its flag and range named), or None when it is."""
    low, high, low_allowed = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return f"{flag(name)} must be a number, got {value!r}"
    if (value >= low if low_allowed else value > low) and (high is None or value <= high):
        return None
    if high is None:
        return f"{flag(name)} must be {'at least' if low_allowed else 'greater than'} {low:g}, got {value:g}"
    return f"{flag(name)} must be in {'[' if low_allowed else '('}{low:g}, {high:g}], got {value:g}"


def sagemaker_hyperparameters(env: dict[str, str]) -> dict[str, Any]:
    """SageMaker's hyperparameters: SM_HPS (a JSON object the training toolkit and ModelTrainer's drivers set), else
    /opt/ml/input/config/hyperparameters.json (values JSON-encoded as strings, as the service writes them)."""
    if "SM_HPS" in env:
        return json.loads(env["SM_HPS"])
    if not SAGEMAKER_HYPERPARAMETERS.exists():
        return {}
    values = {}
    for key, value in json.loads(SAGEMAKER_HYPERPARAMETERS.read_text()).items():
        with contextlib.suppress(json.JSONDecodeError, TypeError):
            value = json.loads(value)
        values[key] = value
    return values


def _as_flags(values: dict[str, Any]) -> list[str]:
    flags = []
    for key, value in values.items():
        if value is not None:
            flags += [flag(key), str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


class SettingsError(ValueError):
    """A setting the program refuses; the message names the flag and what is allowed."""


def parse_settings(argv: list[str] | None = None, env: dict[str, str] | None = None) -> TrainSettings:
    """Flags over SageMaker's environment over defaults, resolved once (see the module docstring). Raises
    SettingsError naming the flag for an unknown flag, a value out of range or a missing data folder."""
    import sys

    from transformers import HfArgumentParser

    env = dict(os.environ if env is None else env)
    argv = sys.argv[1:] if argv is None else list(argv)
    known = {f.name for f in dataclasses.fields(TrainSettings)}
    from_sagemaker = {k.replace("-", "_"): v for k, v in sagemaker_hyperparameters(env).items()}
    from_sagemaker = {k: v for k, v in from_sagemaker.items() if not k.startswith(("sagemaker_", "_"))}  # SageMaker's
    if unknown := sorted(set(from_sagemaker) - known):
        raise SettingsError(f"unknown hyperparameters {unknown}; `python -m utils.train --help` lists the settings")
    description = "The course's training program. Flags win over SageMaker's environment, which wins over defaults."
    parser = HfArgumentParser(TrainSettings, prog="python -m utils.train", description=description, exit_on_error=False)
    try:
        settings, extra = parser.parse_known_args(_as_flags(from_sagemaker) + argv)
    except Exception as error:  # argparse's own errors: an unknown choice, a value of the wrong type
        raise SettingsError(str(error)) from None
    if extra:
        raise SettingsError(f"unknown flags {extra}; `python -m utils.train --help` lists the settings")
    try:
        settings = TrainSettings(**vars(settings))
    except ValueError as error:
        raise SettingsError(str(error)) from None
    return resolve_paths(settings, env)


def resolve_paths(settings: TrainSettings, env: dict[str, str]) -> TrainSettings:
    """Fill the folders a flag left empty from SageMaker's environment, else the defaults; check the data exists."""
    data = settings.data or env.get("SM_CHANNEL_TRAINING")
    if not data:
        raise SettingsError("no training data: pass --data or set SM_CHANNEL_TRAINING")
    if not Path(data).is_dir():
        raise SettingsError(f"--data {data} is not a folder; write shards with utils.loaders.write_text_shards")
    validation = settings.validation_data or env.get("SM_CHANNEL_VALIDATION")
    if validation and not Path(validation).is_dir():
        raise SettingsError(f"--validation-data {validation} is not a folder")
    output = settings.output or env.get("SM_MODEL_DIR") or "runs/train"
    on_sagemaker = "SM_MODEL_DIR" in env or "SM_TRAINING_ENV" in env
    default_checkpoints = sagemaker_checkpoints(env) if on_sagemaker else Path(output) / "checkpoints"
    checkpoints = settings.checkpoint_dir or str(default_checkpoints)
    return dataclasses.replace(
        settings, data=data, validation_data=validation, output=output, checkpoint_dir=checkpoints
    )


def sagemaker_checkpoints(env: dict[str, str]) -> Path:
    """Where a SageMaker job keeps its checkpoints: `checkpoints/` of the job's folder, /opt/ml in a real job.

    The sagemaker-training toolkit takes that folder from `SAGEMAKER_BASE_DIR` (default /opt/ml) and derives every
    other path it hands the program from it (SM_MODEL_DIR, SM_CHANNEL_*); reading the same variable keeps the
    checkpoints beside them when a local run points the toolkit elsewhere, without passing a path a real job never
    gets. /opt/ml/checkpoints is CheckpointConfig's default LocalPath, the folder SageMaker syncs with S3."""
    return Path(env.get("SAGEMAKER_BASE_DIR") or SAGEMAKER_BASE) / "checkpoints"


def changed_settings(settings: TrainSettings) -> dict[str, Any]:
    """The settings that differ from the defaults, by name."""
    defaults = TrainSettings()
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(TrainSettings)
        if getattr(settings, f.name) != getattr(defaults, f.name)
    }


def command_line(settings: TrainSettings) -> list[str]:
    """The flags that reproduce `settings` (only those that differ from the defaults): typed values in, strings out.
    `TrainSettings(lr=0)` already fails, naming --lr, so a bad value never reaches a launched process."""
    return _as_flags(changed_settings(settings))


def hyperparameters(settings: TrainSettings) -> dict[str, Any]:
    """The settings that differ from the defaults as SageMaker hyperparameters (`{"batch-size": 8, ...}`); the
    launchers pass them back as flags, `--batch-size 8`."""
    return {flag(name)[2:]: value for name, value in changed_settings(settings).items()}


def metric_line(record: dict[str, float | int]) -> str:
    """One metric record as the line the program prints: `step=20; loss=4.12345; ...;` (floats as %.6g)."""
    return " ".join(f"{k}={v:.6g};" if isinstance(v, float) else f"{k}={v};" for k, v in record.items())


def scrape_metrics(lines: list[str], definitions: list[dict[str, str]] = METRIC_DEFINITIONS) -> dict[str, list[float]]:
    """Apply SageMaker-style metric regexes to log lines: name -> every value found, in order."""
    found: dict[str, list[float]] = {d["Name"]: [] for d in definitions}
    for line in lines:
        for d in definitions:
            found[d["Name"]] += [float(v) for v in re.findall(d["Regex"], line)]
    return found
