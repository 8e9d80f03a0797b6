"""Shared test setup. pyproject.toml's pytest options already make any non-loopback socket fail a test.

Fixtures for the training program's tests (test_train, test_faults_training, test_sagemaker_local): learnable token
shards, tiny settings, and runners that start the program as users do (a process, or torchrun with several ranks).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.offline import enable_offline_mode

enable_offline_mode()
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parents[1]
FAULTS = Path(__file__).with_name("fault_injection.py")
# A model small enough that a step takes milliseconds: the tests are about the program, not the model.
TINY = {
    "layers": 1,
    "width": 32,
    "heads": 2,
    "batch_size": 4,
    "warmup": 2,
    "log_every": 1,
    "peak_flops": 1e11,
    "lr": 3e-3,
}


def learnable_documents(count: int, seed: int = 0) -> list[list[int]]:
    """Documents that count upwards from a random start, modulo 99 (ids 1-99), each ending in EOS (id 0)."""
    rng = np.random.default_rng(seed)
    return [((rng.integers(99) + np.arange(rng.integers(10, 60))) % 99 + 1).tolist() + [0] for _ in range(count)]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Token shards of learnable documents: a 100-token vocabulary, 16-token blocks, several shards."""
    from utils import loaders

    folder = tmp_path_factory.mktemp("shards")
    loaders.write_token_shards(learnable_documents(300), folder, block=16, vocab_size=100, blocks_per_shard=200)
    return folder


@pytest.fixture(scope="session")
def validation_shards(tmp_path_factory) -> Path:
    """Held-out shards of the same kind (other documents)."""
    from utils import loaders

    folder = tmp_path_factory.mktemp("validation")
    loaders.write_token_shards(learnable_documents(40, seed=1), folder, block=16, vocab_size=100)
    return folder


@pytest.fixture
def tiny(shards):
    """`tiny(**changes)`: TrainSettings for a tiny run on `shards`, with `changes` applied."""
    from utils.train_settings import TrainSettings

    def make(**changes):
        return TrainSettings(**({"data": str(shards)} | TINY | changes))

    return make


def program_command(settings, ranks: int = 1, torchrun: tuple[str, ...] = (), fault: str | None = None) -> list[str]:
    """The command line that runs the training program (through tests/fault_injection.py when `fault` is given)."""
    from utils.train_settings import command_line

    target = ["-m", "utils.train"] if fault is None else [str(FAULTS), fault]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
        return [*launcher, *torchrun, *target, *command_line(settings)]
    return [sys.executable, *target, *command_line(settings)]


PROGRAM_ENV = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def run_program():
    """`run_program(settings, ranks=1, torchrun=(), fault=None)`: the program as a user runs it, in a child process
    (`python -m utils.train` or torchrun); returns the CompletedProcess."""

    def run(settings, ranks: int = 1, torchrun: tuple[str, ...] = (), fault: str | None = None):
        command = program_command(settings, ranks, torchrun, fault)
        return subprocess.run(command, cwd=ROOT, env=PROGRAM_ENV, capture_output=True, text=True, timeout=300)

    return run


def losses(output: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl; a resumed run's later lines replace the earlier run's."""
    rows = [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}
