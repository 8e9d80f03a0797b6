"""Start runs of the course's training program from a notebook, read what they wrote, and measure a step's memory.

Defined for notebooks 05 and 09 (book chapters 5 and 9). `launch` starts `python -m utils.train` (or torchrun with
several ranks) in a child process, as a user would, from typed settings: `launch(TrainSettings(data=..., steps=40),
processes=2)`. `read_metrics` reads the `metrics.jsonl` a run wrote (format: `utils.train_settings`); `fresh_run`
clears the output folder, launches and reads, for a run that must start from scratch. `saved_activation_bytes`
measures what autograd keeps for the backward pass.

Depends on `utils.train_settings`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from utils.train_settings import TrainSettings, command_line

REPO = Path(__file__).resolve().parents[1]


def launch(settings: TrainSettings, processes: int = 1, torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the training program with `settings`: `python -m utils.train <flags>`, or with `processes` > 1
    `torchrun --standalone --nproc-per-node N <torchrun> -m utils.train <flags>`, from the repository root; returns
    the finished process (stdout, stderr, returncode). Each rank gets an equal share of the CPU threads."""
    flags = command_line(settings)
    command = [sys.executable, "-m", "utils.train", *flags]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        command = [*launcher, *torchrun, "-m", "utils.train", *flags]
    threads = os.environ.get("OMP_NUM_THREADS", str(max((os.cpu_count() or 1) // processes, 1)))
    return subprocess.run(
        command, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": threads}, capture_output=True, text=True
    )


def read_metrics(output: str | Path) -> list[dict[str, float]]:
    """The records a run wrote to `<output>/metrics.jsonl`, one per logged step, in step order. A step's training
    and validation records are merged (`loss` and `val_loss` in one dict); a resumed run logs again the steps after
    its checkpoint, and those later records replace the earlier ones."""
    rows: dict[int, dict[str, float]] = {}
    for line in (Path(output) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return [rows[step] for step in sorted(rows)]


def fresh_run(settings: TrainSettings, processes: int = 1) -> dict[str, object]:
    """Run the program from scratch and read what it wrote: deletes `settings.output` first (the program resumes
    from checkpoints it finds there), launches, and raises RuntimeError with the end of stderr if it fails. Returns
    `metrics` (`read_metrics`), `memory` (memory.json: one dict of bytes per rank), `seconds` (the launch's wall
    time, process start-up included) and `log` (stdout, whose first line says how the run started)."""
    if not settings.output:
        raise ValueError("settings.output must name the run's folder: fresh_run deletes and rewrites it")
    output = Path(settings.output)
    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    done = launch(settings, processes)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"training program failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    memory = output / "memory.json"
    return {
        "metrics": read_metrics(output),
        "memory": json.loads(memory.read_text()) if memory.exists() else [],
        "seconds": seconds,
        "log": done.stdout,
    }


def saved_activation_bytes(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd saves for the backward pass during one forward, counted once per storage:
    the activation memory of a training step, measured on any device (no CUDA memory statistics needed)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())
