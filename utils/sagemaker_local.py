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

SageMaker SDK v3's `ModelTrainer` jobs run differently: the container's PID 1 is `/bin/bash -c "... sm_train.sh"`,
the SDK's script, which runs a Python driver, which runs torchrun; none of them forwards SIGTERM, so `docker stop`
(a spot interruption, StopTrainingJob) never reaches the training processes. `container_command` is the course's
fix: a `SourceCode(command=...)` that `exec`s torchrun, so torchrun becomes PID 1 and forwards the signal to every
rank. `write_container_folder` lays out /opt/ml from the job's CreateTrainingJob request and its channels (the SDK's
`sm_drivers` channel included), and `start_container` runs the request's entry point as PID 1 of new PID and mount
namespaces with that folder mounted at /opt/ml, so the SDK's own scripts run unchanged and signals behave as in a
container (`stop_container` is `docker stop`). Needs Linux and util-linux `unshare` (as root, or with unprivileged
user namespaces); `container_support()` says why not where it cannot run.

Depends on `utils.train_settings` (the metric regexes that scrape the training program's log lines); otherwise the
standard library only (the toolkit is imported in the child process). The staged code folder is what
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

from utils.train_settings import METRIC_DEFINITIONS as METRIC_DEFINITIONS  # re-exported: the job's regexes
from utils.train_settings import scrape_metrics

REPO = Path(__file__).resolve().parents[1]
HOST = "algo-1"  # SageMaker names a job's hosts algo-1, algo-2, ...
FRAMEWORK_MODULE = "utils.sagemaker_local:pytorch_container_main"


def stage_source(destination: str | Path, repo: Path = REPO, script_mode: bool = False) -> Path:
    """Copy what a training job needs (`train.py`, the `utils` package and `container/requirements.txt` as
    `requirements-container.txt`) into `destination`, replacing it. This folder is the job's source code, uploaded
    by ModelTrainer's `SourceCode(source_dir=...)` or copied to `<base>/code` by the toolkit. The requirements file
    is deliberately not named `requirements.txt`: the toolkit pip-installs a file of that name, which needs the
    network; ModelTrainer installs it only when asked to (`SourceCode(requirements=...)`).

    `script_mode=True` adds the same pins as `requirements.txt`, for jobs the training toolkit starts in script mode
    (the trials of a tuning job), which install that file and nothing else: the stock PyTorch image lacks
    transformers. Leave it off for folders the toolkit runs here offline (`write_job_folder`)."""
    destination = Path(destination)
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(repo / "utils", destination / "utils", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(repo / "train.py", destination / "train.py")
    shutil.copy2(repo / "container" / "requirements.txt", destination / "requirements-container.txt")
    if script_mode:
        shutil.copy2(repo / "container" / "requirements.txt", destination / "requirements.txt")
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
    runner reads as `--nproc_per_node`). No path is added: as in a real job, the program finds its checkpoint folder
    itself, `<base>/checkpoints` here (`utils.train_settings.sagemaker_checkpoints` reads the `SAGEMAKER_BASE_DIR` the
    toolkit is pointed with), standing in for the /opt/ml/checkpoints that SageMaker syncs with S3. Channels are
    symlinked, not copied. Existing model, output and code folders are emptied; `checkpoints/` is kept, since a
    restarted job resumes from it."""
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
    settings = dict(hyperparameters)
    settings |= {"sagemaker_program": entry_script, "sagemaker_submit_directory": str(source)}
    if processes_per_host > 1:
        settings |= {
            "sagemaker_torch_distributed_enabled": True,
            "sagemaker_mpi_num_of_processes_per_host": processes_per_host,
        }
    (config / "hyperparameters.json").write_text(json.dumps({k: json.dumps(v) for k, v in settings.items()}))
    group = {"instance_group_name": "homogeneousCluster", "instance_type": instance_type, "hosts": [HOST]}
    resource = {
        "current_host": HOST,
        "hosts": [HOST],
        "current_instance_type": instance_type,
        "current_group_name": "homogeneousCluster",
        "instance_groups": [group],
        "network_interface_name": "eth0",
    }
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    inputs = {
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for name in channels
    }
    (config / "inputdataconfig.json").write_text(json.dumps(inputs))
    for name, folder in channels.items():
        link = base / "input" / "data" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(folder).resolve(), target_is_directory=True)
    return base


@dataclass
class LocalJob:
    """A job run by `run_job`: its folder, exit status, log lines, the metrics scraped from them, its wall time and
    when each log line arrived (`line_seconds[i]`: seconds from the job's start to `log[i]`)."""

    base: Path
    returncode: int
    log: list[str]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    line_seconds: list[float] = field(default_factory=list)

    def step_seconds(self) -> dict[int, float]:
        """Seconds from the job's start to the log line of each training step (`step=N; loss=...`): its timeline.
        A step logged twice (a resumed run redoes the steps after its checkpoint) keeps its last time."""
        steps = {}
        for line, seconds in zip(self.log, self.line_seconds, strict=True):
            if match := re.match(r"step=(\d+); loss=", line):  # training lines, not the validation lines
                steps[int(match.group(1))] = seconds
        return steps

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


def job_environment(base: Path) -> dict[str, str]:
    """Environment of the toolkit process: the folder contract, the framework module to run, and this Python's
    `bin/` first on PATH so the toolkit's `torchrun` is this environment's."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    return os.environ | {
        "SAGEMAKER_BASE_DIR": str(base),
        "SM_STUDIO_LOCAL_MODE": "true",
        "SAGEMAKER_TRAINING_MODULE": FRAMEWORK_MODULE,
        "PATH": path,
        "PYTHONPATH": python_path,
        "OMP_NUM_THREADS": threads,
        "PYTHONUNBUFFERED": "1",
    }


def start_job(base: str | Path) -> subprocess.Popen:
    """Start the toolkit on the prepared folder `base` in its own process group (what `docker run` would start)."""
    command = [sys.executable, "-c", "from sagemaker_training.trainer import train; train()"]
    return subprocess.Popen(
        command,
        env=job_environment(Path(base)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


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
    base, start, lines, arrivals = Path(base), time.perf_counter(), [], []
    process = start_job(base)
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        arrivals.append(time.perf_counter() - start)
        if on_line:
            on_line(lines[-1], process)
        if time.perf_counter() - start > timeout:
            stop_job(process)
    returncode = process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # no process of the job outlives it, as in a
        os.killpg(process.pid, signal.SIGKILL)  # container, whose processes all end when its first one does
    return LocalJob(base, returncode, lines, scrape_metrics(lines), time.perf_counter() - start, arrivals)


def pytorch_container_main() -> None:
    """What the AWS PyTorch training image runs inside the toolkit (`sagemaker_pytorch_container.training:main`,
    https://github.com/aws/sagemaker-pytorch-training-toolkit), reduced to the two launchers the course uses: torchrun
    when `sagemaker_torch_distributed_enabled` is set, one process otherwise. Called by the toolkit, never by hand."""
    from sagemaker_training import entry_point, environment, runner

    env = environment.Environment()
    distributed = env.additional_framework_parameters.get("sagemaker_torch_distributed_enabled", False)
    launcher = runner.TorchDistributedRunnerType if distributed else runner.ProcessRunnerType
    entry_point.run(
        uri=env.module_dir,
        user_entry_point=env.user_entry_point,
        args=env.to_cmd_args(),
        env_vars=env.to_env_vars(),
        capture_error=True,
        runner_type=launcher,
    )


def container_command(processes_per_host: int) -> str:
    """The command a course `ModelTrainer` job runs (`SourceCode(command=...)`): `exec` replaces the SDK's shell with
    torchrun, which then is the container's PID 1, receives `docker stop`'s SIGTERM and forwards it to every rank;
    the ranks checkpoint and exit. Host count, node rank and the master's address come from the variables the SDK's
    `environment.py` exports; the hyperparameters reach the program through SM_HPS (flags are not passed in command
    mode). With the SDK's default (`entry_script` + `Torchrun`), the signal stops at PID 1 and is lost."""
    if processes_per_host < 1:
        raise ValueError(f"processes_per_host must be at least 1, got {processes_per_host}")
    return (
        f"exec torchrun --nnodes=$SM_HOST_COUNT --nproc_per_node={processes_per_host} --node_rank=$SM_CURRENT_HOST_RANK"
        " --master_addr=$SM_MASTER_ADDR --master_port=$SM_MASTER_PORT train.py"
    )


def write_container_folder(base: str | Path, request: dict[str, object], channels: dict[str, str | Path]) -> Path:
    """Lay out `base` as a ModelTrainer job's /opt/ml from its CreateTrainingJob `request` (the JSON botocore sent):
    `input/config/` holds the hyperparameters (as sent), the resource config of one `algo-1` host and the input
    data config; every channel the request names is linked from `channels` (local folders holding what SageMaker
    would download: the data, `code`, the SDK's `sm_drivers`); `model/` and `output/` start empty, `checkpoints/`
    is kept, since a restarted job resumes from it."""
    base = Path(base).resolve()
    names = [c["ChannelName"] for c in request["InputDataConfig"]]  # type: ignore[index]
    if missing := set(names) - set(channels):
        raise FileNotFoundError(f"no local folder for channel(s) {sorted(missing)} of the request")
    for stale in ("model", "output", "input"):
        shutil.rmtree(base / stale, ignore_errors=True)
    config = base / "input" / "config"
    for folder in (config, base / "model", base / "output" / "data", base / "checkpoints"):
        folder.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(request.get("HyperParameters", {})))
    instance = request["ResourceConfig"]["InstanceType"]  # type: ignore[index]
    group = {"instance_group_name": "homogeneousCluster", "instance_type": instance, "hosts": [HOST]}
    resource = {
        "current_host": HOST,
        "hosts": [HOST],
        "current_instance_type": instance,
        "current_group_name": "homogeneousCluster",
        "instance_groups": [group],
        "network_interface_name": "lo",
    }
    (config / "resourceconfig.json").write_text(json.dumps(resource))
    inputs = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in names}
    (config / "inputdataconfig.json").write_text(json.dumps(inputs))
    for name in names:
        (base / "input" / "data").mkdir(exist_ok=True)
        (base / "input" / "data" / name).symlink_to(Path(channels[name]).resolve(), target_is_directory=True)
    hosts = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else "127.0.0.1 localhost\n"
    (base / "hosts").write_text(f"{hosts.rstrip()}\n127.0.0.1 {HOST}\n")  # SageMaker maps algo-N in /etc/hosts
    return base


def _namespace_prefix() -> list[str]:
    prefix = ["unshare", "--pid", "--fork", "--mount", "--mount-proc", "--propagation", "private"]
    return prefix if os.geteuid() == 0 else [*prefix, "--map-root-user"]


def container_support() -> str | None:
    """None when `start_container` can run here, else why not (no util-linux `unshare`, or namespaces refused)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with util-linux `unshare`"
    done = subprocess.run([*_namespace_prefix(), "true"], capture_output=True, text=True)
    return None if done.returncode == 0 else f"`unshare` refused new namespaces: {done.stderr.strip()}"


def start_container(
    base: str | Path, request: dict[str, object], env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Run the request's container entry point (AlgorithmSpecification's ContainerEntrypoint + ContainerArguments)
    as PID 1 of new PID and mount namespaces, with `base` (from `write_container_folder`) mounted at /opt/ml and its
    `hosts` file at /etc/hosts: what SageMaker's agent starts in the job's container. The image is this Python
    environment (its `bin/` first on PATH). Output (both streams) is the process's stdout."""
    base = Path(base).resolve()
    spec = request["AlgorithmSpecification"]  # type: ignore[index]
    entry = [*spec["ContainerEntrypoint"], *spec.get("ContainerArguments", [])]
    setup = 'mount -t tmpfs tmpfs /opt && mkdir /opt/ml && mount --bind "$0" /opt/ml && '
    setup += 'mount --bind "$0/hosts" /etc/hosts && exec "$@"'
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    job = str(request.get("TrainingJobName", "local-job"))
    container_env = {
        "PATH": path,
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": threads,
        "TRAINING_JOB_NAME": job,
        "PYTHONUNBUFFERED": "1",
    }
    container_env |= dict(request.get("Environment", {})) | (env or {})
    return subprocess.Popen(
        [*_namespace_prefix(), "/bin/sh", "-c", setup, str(base), *entry],
        env=container_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def container_init(process: subprocess.Popen) -> int:
    """The host PID of the container's PID 1 (the child `unshare` forked)."""
    for _ in range(100):
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        with contextlib.suppress(OSError):
            if text := children.read_text().split():
                return int(text[0])
        time.sleep(0.05)
    raise RuntimeError(f"the container of process {process.pid} has no first process")


def stop_container(process: subprocess.Popen, grace_seconds: float = 10) -> bool:
    """`docker stop`: SIGTERM to the container's PID 1, from outside its namespace, so the kernel delivers it only if
    PID 1 handles SIGTERM; after `grace_seconds` SIGKILL to PID 1, which ends every process in the container.
    Returns whether the SIGKILL was needed (the container had not ended within the grace period)."""
    init = container_init(process)
    with contextlib.suppress(ProcessLookupError):
        os.kill(init, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_seconds)
    if process.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(init, signal.SIGKILL)
    return True
