"""The training program run under the real SageMaker training toolkit, and under SageMaker SDK v3 ModelTrainer's own
container scripts, in an /opt/ml-shaped folder."""

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TINY as TINY_SETTINGS

from utils import sagemaker_local as L
from utils import train as T
from utils import train_settings as S

TINY = S.hyperparameters(S.TrainSettings(**TINY_SETTINGS))  # as SageMaker hyperparameters: {"batch-size": 4, ...}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return L.stage_source(tmp_path_factory.mktemp("job") / "code")


def test_layout_is_what_the_toolkit_reads(tmp_path, shards, source):
    base = L.write_job_folder(tmp_path, source, {"training": shards}, {"steps": 3, "compile": False})
    config = base / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    assert json.loads(hyperparameters["steps"]) == 3 and json.loads(hyperparameters["sagemaker_program"]) == "train.py"
    assert "checkpoint-dir" not in hyperparameters  # a real job is told no checkpoint path either
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == [L.HOST]
    assert (base / "input" / "data" / "training" / "index.json").exists()


@pytest.mark.parametrize("processes", [1, 2])
def test_toolkit_runs_the_entry_point_and_the_model_loads(tmp_path, shards, source, processes):
    hyperparameters = TINY | {
        "steps": 4,
        "strategy": "ddp" if processes > 1 else "none",
        "activation-checkpointing": True,
        "compile": False,
    }  # passed as `--compile False`
    job = L.run_job(L.write_job_folder(tmp_path, source, {"training": shards}, hyperparameters, processes))
    assert job.returncode == 0, "\n".join(job.log[-30:])
    assert f"training: {processes} rank(s)" in "\n".join(job.log)
    assert len(job.metrics["train:loss"]) == 4 and job.failure is None
    if processes > 1:
        assert any("torchrun --nnodes 1 --nproc_per_node 2 train.py" in line for line in job.log)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(job.model_dir / "model").config.n_layer == 1


def test_a_stopped_job_resumes_from_its_checkpoints(tmp_path, shards, source):
    hyperparameters = TINY | {"steps": 40, "checkpoint-every": 4}
    whole = L.run_job(L.write_job_folder(tmp_path / "whole", source, {"training": shards}, hyperparameters))

    def stop_at_step_10(line: str, process: subprocess.Popen) -> None:
        if line.startswith("step=10;"):
            L.stop_job(process)

    base = L.write_job_folder(tmp_path / "cut", source, {"training": shards}, hyperparameters)
    stopped = L.run_job(base, on_line=stop_at_step_10)
    assert stopped.returncode != 0 and any(stopped.checkpoint_dir.iterdir())
    resumed = L.run_job(L.write_job_folder(base, source, {"training": shards}, hyperparameters))
    assert resumed.returncode == 0 and any("resumed from step" in line for line in resumed.log)
    assert resumed.metrics["train:loss"][-1] == whole.metrics["train:loss"][-1]
    timeline = whole.step_seconds()  # each step's log line, timed as it arrived
    assert sorted(timeline) == list(range(1, 41)) and len(whole.line_seconds) == len(whole.log)
    assert all(timeline[s] <= timeline[s + 1] for s in range(1, 40)) and timeline[40] <= whole.seconds
    assert max(stopped.step_seconds()) >= 10 and min(resumed.step_seconds()) > 1  # restarted after step 1


def test_a_failing_entry_point_reports_its_failure(tmp_path, shards, source):
    job = L.run_job(L.write_job_folder(tmp_path, source, {"training": shards}, TINY | {"width": 33}))
    assert job.returncode != 0 and "ExitCode 2" in (job.failure or "")  # what DescribeTrainingJob would report
    assert any("must be a multiple of --heads" in line for line in job.log)  # what the job's log says


def test_script_mode_sources_carry_the_requirements_the_trials_install(tmp_path, source):
    assert not (source / "requirements.txt").exists()  # the toolkit here would pip-install it (the network)
    tuning = L.stage_source(tmp_path / "tuning", script_mode=True)
    assert (tuning / "requirements.txt").read_text() == (source / "requirements-container.txt").read_text()
    assert "transformers==" in (tuning / "requirements.txt").read_text()


def test_bad_job_folders_fail_before_running(tmp_path, shards, source):
    with pytest.raises(FileNotFoundError, match="stage_source"):
        L.write_job_folder(tmp_path, tmp_path, {"training": shards}, {})
    with pytest.raises(FileNotFoundError, match="channel 'training'"):
        L.write_job_folder(tmp_path, source, {"training": tmp_path / "missing"}, {})
    with pytest.raises(ValueError, match="channel name"):
        L.write_job_folder(tmp_path, source, {"train data": shards}, {})


def test_metric_regexes_scrape_the_programs_lines():
    lines = ["step=3; loss=4.25; lr=0.0003; grad_norm=0.5; tokens_per_s=1.2e+04; mfu=0.41;", "step=3; val_loss=4.5;"]
    assert L.scrape_metrics(lines) == {
        "train:loss": [4.25],
        "train:lr": [0.0003],
        "train:grad_norm": [0.5],
        "train:tokens_per_second": [12000.0],
        "train:mfu": [0.41],
        "validation:loss": [4.5],
    }


def test_the_command_modeltrainers_torchrun_driver_builds_trains(tmp_path, shards, source):
    """ModelTrainer jobs run `torchrun ... train.py --<hp> <value>` as built by the SDK's own driver; run that
    command as the container would (code folder as working directory, SM_* variables set)."""
    from utils import sagemaker_jobs as J

    hyperparameters = TINY | {
        "steps": 3,
        "strategy": "ddp",
        "compile": False,
        "activation-checkpointing": True,
        "checkpoint-dir": str(tmp_path / "checkpoints"),
    }
    with J.offline_sagemaker() as aws:
        trainer = J.gpt_trainer(aws, source, hyperparameters, instance_type="ml.m5.xlarge", processes_per_host=2)
        command = J.driver_command(trainer)
    assert command[:4] == ["torchrun", "--nnodes=1", "--nproc_per_node=2", "train.py"] and "false" in command
    env = L.job_environment(tmp_path) | {
        "SM_CHANNEL_TRAINING": str(shards),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_HPS": json.dumps(hyperparameters),
    }
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training: 2 rank(s)" in done.stdout and (tmp_path / "model" / "model" / "model.safetensors").exists()


def modeltrainer_container(folder: Path, source: Path, shards: Path, hyperparameters: dict, command: bool) -> tuple:
    """A ModelTrainer job for the course's program, created under moto exactly as notebook 08 creates it (the SDK
    writes its sm_train.sh and uploads its drivers), with `SourceCode(command=container_command(1))` when `command`;
    returns (the CreateTrainingJob request, {channel: local folder}) with every channel downloaded from the
    emulated S3, as SageMaker would download them into the container."""
    import boto3

    from utils import sagemaker_jobs as J

    with J.offline_sagemaker() as aws:
        trainer = J.gpt_trainer(
            aws, source, hyperparameters, instance_type="ml.m5.xlarge", processes_per_host=1, install_requirements=False
        )
        if command:
            trainer.source_code.command = L.container_command(1)
        J.start_training(trainer, J.upload_channel(aws, shards, "course/shards"))
        request = aws.last_request("CreateTrainingJob")
        s3, channels = boto3.client("s3"), {}
        for channel in request["InputDataConfig"]:
            bucket, prefix = channel["DataSource"]["S3DataSource"]["S3Uri"][len("s3://") :].split("/", 1)
            channels[channel["ChannelName"]] = folder / "channels" / channel["ChannelName"]
            for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
                target = channels[channel["ChannelName"]] / item["Key"][len(prefix) :].lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))
    return request, channels


def run_container(base: Path, request: dict, channels: dict, stop_at: str | None = None, grace: float = 60) -> tuple:
    """Start the job's container on `base`; `docker stop` it when a log line starts with `stop_at`. Returns
    (exit status, log lines, whether the stop needed SIGKILL)."""
    L.write_container_folder(base, request, channels)
    process = L.start_container(base, request)
    lines, killed = [], False
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if stop_at and line.startswith(stop_at):
            killed = L.stop_container(process, grace_seconds=grace)
    return process.wait(timeout=300), lines, killed


needs_namespaces = pytest.mark.skipif(L.container_support() is not None, reason=str(L.container_support()))


@needs_namespaces
def test_sigterm_reaches_the_program_through_modeltrainers_own_scripts_and_it_resumes_exactly(tmp_path, shards, source):
    """The course's command (`exec torchrun ...`) in the SDK's own sm_train.sh: torchrun becomes the container's
    PID 1, `docker stop`'s SIGTERM reaches the rank, which checkpoints; the restarted container resumes, and its
    losses equal an uninterrupted run's bit for bit."""
    settings = S.TrainSettings(**TINY_SETTINGS, steps=12, checkpoint_every=0)
    request, channels = modeltrainer_container(tmp_path, source, shards, S.hyperparameters(settings), command=True)
    assert "exec torchrun" in (channels["sm_drivers"] / "sm_train.sh").read_text()
    base = tmp_path / "opt_ml"
    status, log, killed = run_container(base, request, channels, stop_at="step=3;")
    saved = [line for line in log if line.startswith("SIGTERM: checkpoint saved at step")]
    assert status != 0 and saved and not killed, log[-20:]
    assert any("Process 1 got signal: 15" in line for line in log)  # torchrun was the container's PID 1
    stopped_at = int(saved[0].split("step ")[1].split(";")[0])
    assert [p.name for p in (base / "checkpoints").iterdir()] == [f"step-{stopped_at:07d}"]
    status, log, _ = run_container(base, request, channels)
    assert status == 0 and any(line.endswith(f"resumed from step {stopped_at}") for line in log), log[-20:]
    resumed = [json.loads(line) for line in (base / "model" / "metrics.jsonl").read_text().splitlines()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the container (OMP_NUM_THREADS=1), so the reference agrees bit for bit
    try:
        assert (
            T.main(S.command_line(dataclasses.replace(settings, data=str(shards), output=str(tmp_path / "ref")))) == 0
        )
    finally:
        torch.set_num_threads(threads)
    reference = {row["step"]: row["loss"] for row in map(json.loads, (tmp_path / "ref" / "metrics.jsonl").open())}
    assert [row["step"] for row in resumed] == list(range(stopped_at + 1, 13))
    assert all(row["loss"] == reference[row["step"]] for row in resumed)


@needs_namespaces
def test_the_sdks_default_scripts_drop_sigterm(tmp_path, shards, source):
    """Why the course's command is needed: with the SDK's default (`entry_script` + `Torchrun`), PID 1 is the SDK's
    shell, which has no SIGTERM handler, so the kernel drops `docker stop`'s signal; after the grace period SIGKILL
    ends everything and nothing was saved on the way out."""
    settings = S.TrainSettings(**TINY_SETTINGS, steps=5000, checkpoint_every=0)
    request, channels = modeltrainer_container(tmp_path, source, shards, S.hyperparameters(settings), command=False)
    status, log, killed = run_container(tmp_path / "opt_ml", request, channels, stop_at="step=3;", grace=3)
    assert status != 0 and killed and any("torchrun_driver.py" in line for line in log)
    assert not any(line.startswith("SIGTERM") for line in log)
    assert list((tmp_path / "opt_ml" / "checkpoints").iterdir()) == []
