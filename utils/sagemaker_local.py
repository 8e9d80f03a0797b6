"""Run a SageMaker training job on this machine, under the real SageMaker training toolkit, with no AWS account.

Defined for notebooks 04 and 08 (book chapters 4 and 8). A SageMaker training container is a folder contract: the
service writes `/opt/ml/input/config/{hyperparameters,resourceconfig,inputdataconfig}.json`, mounts each data channel
at `/opt/ml/input/data/<channel>/`, starts the image's entry point, then uploads `/opt/ml/model/` (the model
archive), `/opt/ml/output/` (failure reason, extra outputs) and `/opt/ml/checkpoints/` (when checkpointing is on).
The AWS framework images run the `sagemaker-training` toolkit (https://github.com/aws/sagemaker-training-toolkit),
which turns those files into `SM_*` environment variables and command-line flags and starts the entry script, with
`torchrun` when torch distributed is enabled.

This module writes that layout under any folder, points the toolkit at it (`SAGEMAKER_BASE_DIR`, read at import, and
`SM_STUDIO_LOCAL_MODE=true`, which skips waiting for the other hosts' DNS names) and runs the toolkit in a child
process. What differs from the cloud: the code runs in this Python environment instead of the image, on one host,
and nothing is uploaded. `stop_job` stops a job as `docker stop` stops a container: SIGTERM to its first process (the
toolkit), and once that has ended, SIGKILL to every other process, as the kernel does when a container's first
process exits. The toolkit does not pass SIGTERM on, so a stopped job keeps only what the script had checkpointed.

Standalone: standard library only (the toolkit is imported in the child process). The staged code folder is what
`utils.sagemaker_jobs` uploads as the job's source code, so the local and the cloud job run the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "algo-1"  # SageMaker names a job's hosts algo-1, algo-2, ...
FRAMEWORK_MODULE = "utils.sagemaker_local:pytorch_container_main"
# The metric lines the training program prints (`step=10; loss=5.2; ...;`) and regexes in SageMaker's
# `metric_definitions` format (Name, Regex) that scrape them; utils.sagemaker_jobs sends the same list to SageMaker.
METRIC_DEFINITIONS = [
    {"Name": "train:loss", "Regex": r"loss=([0-9.eE+-]+);"},
    {"Name": "train:lr", "Regex": r"lr=([0-9.eE+-]+);"},
    {"Name": "train:tokens_per_second", "Regex": r"tokens_per_s=([0-9.eE+-]+);"},
    {"Name": "train:mfu", "Regex": r"mfu=([0-9.eE+-]+);"},
]


def stage_source(destination: str | Path, repo: Path = REPO) -> Path:
    """Copy what a training job needs (`train.py`, the `utils` package and `container/requirements.txt` as
    `requirements-container.txt`) into `destination`, replacing it. This folder is the job's source code, uploaded
    by ModelTrainer's `SourceCode(source_dir=...)` or copied to `<base>/code` by the toolkit. The requirements file
    is deliberately not named `requirements.txt`: the toolkit pip-installs a file of that name, which needs the
    network; ModelTrainer installs it only when asked to (`SourceCode(requirements=...)`)."""
    destination = Path(destination)
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(repo / "utils", destination / "utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(repo / "train.py", destination / "train.py")
    shutil.copy2(repo / "container" / "requirements.txt", destination / "requirements-container.txt")
    return destination


def write_job_folder(
    base: str | Path,
    source: str | Path,
    channels: dict[str, str | Path],
    hyperparameters: dict[str, object],
    processes_per_host: int = 1,
    instance_type: str = "ml.m5.xlarge",
    entry_script: str = "train.py",
) -> Path:
    """Lay out `base` as SageMaker lays out `/opt/ml` for a one-host job, and return it.

    `hyperparameters` are written JSON-encoded as strings, as the service writes them; the toolkit's script-mode
    settings are added (`sagemaker_program`, `sagemaker_submit_directory`, and, for more than one process,
    `sagemaker_torch_distributed_enabled` with `sagemaker_mpi_num_of_processes_per_host`, which the toolkit's torchrun
    runner reads as `--nproc_per_node`). `checkpoint-dir` defaults to `<base>/checkpoints`, standing in for the
    /opt/ml/checkpoints that SageMaker syncs with S3. Channels are symlinked, not copied. Existing model, output and
    code folders are emptied; `checkpoints/` is kept, since a restarted job resumes from it."""
    base, source = Path(base).resolve(), Path(source).resolve()
    if not (source / entry_script).is_file():
        raise FileNotFoundError(f"{source / entry_script} does not exist; stage the code with stage_source() first")
    if processes_per_host < 1:
        raise ValueError(f"processes_per_host must be at least 1, got {processes_per_host}")
    for name, folder in channels.items():
        if not re.fullmatch(r"[A-Za-z0-9\.\-_]+", name):
            raise ValueError(f"channel name {name!r}: use letters, digits, '.', '-' and '_' (SageMaker's rule)")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"channel {name!r}: {folder} is not a folder")
    for stale in ("model", "output", "code", "input"):
        shutil.rmtree(base / stale, ignore_errors=True)
    config = base / "input" / "config"
    for folder in (config, base / "model", base / "output" / "data", base / "checkpoints"):
        folder.mkdir(parents=True, exist_ok=True)
    settings = {"checkpoint-dir": str(base / "checkpoints")} | dict(hyperparameters)
    settings |= {"sagemaker_program": entry_script, "sagemaker_submit_directory": str(source)}
    if processes_per_host > 1:
        settings |= {"sagemaker_torch_distributed_enabled": True,
                     "sagemaker_mpi_num_of_processes_per_host": processes_per_host}  # fmt: skip
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in settings.items()}))
    group = {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
    resource = {"current_host": HOST, "hosts": [HOST], "current_instance_type": instance_type,
                "current_group_name": "homogeneousCluster", "instance_groups": [group],
                "network_interface_name": "eth0"}  # fmt: skip
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    inputs = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
              for name in channels}  # fmt: skip
    (config / "inputdataconfig.json").write_text(json.dumps(inputs))
    for name, folder in channels.items():
        link = base / "input" / "data" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(folder).resolve(), target_is_directory=True)
    return base


@dataclass
class LocalJob:
    """A job run by `run_job`: its folder, exit status, log lines and the metrics scraped from them."""

    base: Path
    returncode: int
    log: list[str]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"

    @property
    def failure(self) -> str | None:
        """The reason the toolkit wrote to `output/failure` (what DescribeTrainingJob's FailureReason shows)."""
        path = self.base / "output" / "failure"
        return path.read_text() if path.exists() else None


def scrape_metrics(lines: list[str], definitions: list[dict[str, str]] = METRIC_DEFINITIONS) -> dict[str, list[float]]:
    """Apply SageMaker-style metric regexes to log lines: name -> every value found, in order."""
    found: dict[str, list[float]] = {d["Name"]: [] for d in definitions}
    for line in lines:
        for d in definitions:
            found[d["Name"]] += [float(v) for v in re.findall(d["Regex"], line)]
    return found


def job_environment(base: Path) -> dict[str, str]:
    """Environment of the toolkit process: the folder contract, the framework module to run, and this Python's
    `bin/` first on PATH so the toolkit's `torchrun` is this environment's."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    return os.environ | {"SAGEMAKER_BASE_DIR": str(base), "SM_STUDIO_LOCAL_MODE": "true",
                         "SAGEMAKER_TRAINING_MODULE": FRAMEWORK_MODULE, "PATH": path, "PYTHONPATH": python_path,
                         "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}  # fmt: skip


def start_job(base: str | Path) -> subprocess.Popen:
    """Start the toolkit on the prepared folder `base` in its own process group (what `docker run` would start)."""
    command = [sys.executable, "-c", "from sagemaker_training.trainer import train; train()"]
    return subprocess.Popen(command, env=job_environment(Path(base)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip


def stop_job(process: subprocess.Popen, grace_seconds: float = 10) -> None:
    """Stop the job as a container is stopped (a spot interruption, StopTrainingJob): SIGTERM to the toolkit, the
    first process; when it has exited (or after `grace_seconds`, Docker's default), SIGKILL to the rest of the job."""
    process.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def run_job(
    base: str | Path,
    on_line: Callable[[str, subprocess.Popen], None] | None = None,
    timeout: float = 600,
) -> LocalJob:
    """Run the toolkit on the prepared folder `base` to the end; `on_line(line, process)` sees each log line as it
    arrives (to print progress, or to stop the job at a chosen step). Returns the log and the scraped metrics."""
    base, start, lines = Path(base), time.perf_counter(), []
    process = start_job(base)
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if on_line:
            on_line(lines[-1], process)
        if time.perf_counter() - start > timeout:
            stop_job(process)
    returncode = process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # no process of the job outlives it, as in a
        os.killpg(process.pid, signal.SIGKILL)  # container, whose processes all end when its first one does
    return LocalJob(base, returncode, lines, scrape_metrics(lines), time.perf_counter() - start)


def pytorch_container_main() -> None:
    """What the AWS PyTorch training image runs inside the toolkit (`sagemaker_pytorch_container.training:main`,
    https://github.com/aws/sagemaker-pytorch-training-toolkit), reduced to the two launchers the course uses: torchrun
    when `sagemaker_torch_distributed_enabled` is set, one process otherwise. Called by the toolkit, never by hand."""
    from sagemaker_training import entry_point, environment, runner

    env = environment.Environment()
    distributed = env.additional_framework_parameters.get("sagemaker_torch_distributed_enabled", False)
    launcher = runner.TorchDistributedRunnerType if distributed else runner.ProcessRunnerType
    entry_point.run(uri=env.module_dir, user_entry_point=env.user_entry_point, args=env.to_cmd_args(),
                    env_vars=env.to_env_vars(), capture_error=True, runner_type=launcher)  # fmt: skip
