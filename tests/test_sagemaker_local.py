"""The training program run under the real SageMaker training toolkit, in an /opt/ml-shaped folder."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from utils import loaders
from utils import sagemaker_local as L

TINY = {"layers": 1, "width": 32, "heads": 2, "batch-size": 4, "log-every": 1, "peak-flops": 1e11, "lr": 3e-3}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    docs = [((rng.integers(99) + np.arange(rng.integers(10, 60))) % 99 + 1).tolist() + [0] for _ in range(300)]
    loaders.write_token_shards(docs, folder, block=16, vocab_size=100, blocks_per_shard=200)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return L.stage_source(tmp_path_factory.mktemp("job") / "code")


def test_layout_is_what_the_toolkit_reads(tmp_path, shards, source):
    base = L.write_job_folder(tmp_path, source, {"training": shards}, {"steps": 3, "compile": False})
    config = base / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    assert json.loads(hyperparameters["steps"]) == 3 and json.loads(hyperparameters["sagemaker_program"]) == "train.py"
    assert json.loads(hyperparameters["checkpoint-dir"]) == str(base / "checkpoints")
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


def test_a_failing_entry_point_reports_its_failure(tmp_path, shards, source):
    job = L.run_job(L.write_job_folder(tmp_path, source, {"training": shards}, TINY | {"width": 33}))
    assert job.returncode != 0 and "ExitCode 2" in (job.failure or "")  # what DescribeTrainingJob would report
    assert any("must be a multiple of --heads" in line for line in job.log)  # what the job's log says


def test_bad_job_folders_fail_before_running(tmp_path, shards, source):
    with pytest.raises(FileNotFoundError, match="stage_source"):
        L.write_job_folder(tmp_path, tmp_path, {"training": shards}, {})
    with pytest.raises(FileNotFoundError, match="channel 'training'"):
        L.write_job_folder(tmp_path, source, {"training": tmp_path / "missing"}, {})
    with pytest.raises(ValueError, match="channel name"):
        L.write_job_folder(tmp_path, source, {"train data": shards}, {})


def test_metric_regexes_scrape_the_programs_lines():
    found = L.scrape_metrics(["step=3; loss=4.25; lr=0.0003; tokens_per_s=1.2e+04; mfu=0.41;", "other text"])
    assert found == {"train:loss": [4.25], "train:lr": [0.0003], "train:tokens_per_second": [12000.0],
                     "train:mfu": [0.41]}  # fmt: skip


def test_the_command_modeltrainers_torchrun_driver_builds_trains(tmp_path, shards, source):
    """ModelTrainer jobs run `torchrun ... train.py --<hp> <value>` as built by the SDK's own driver; run that
    command as the container would (code folder as working directory, SM_* variables set)."""
    from utils import sagemaker_jobs as J

    hyperparameters = TINY | {"steps": 3, "strategy": "ddp", "compile": False, "activation-checkpointing": True,
                              "checkpoint-dir": str(tmp_path / "checkpoints")}  # fmt: skip
    with J.offline_sagemaker() as aws:
        trainer = J.gpt_trainer(aws, source, hyperparameters, instance_type="ml.m5.xlarge", processes_per_host=2)
        command = J.driver_command(trainer)
    assert command[:4] == ["torchrun", "--nnodes=1", "--nproc_per_node=2", "train.py"] and "false" in command
    env = L.job_environment(tmp_path) | {"SM_CHANNEL_TRAINING": str(shards), "SM_MODEL_DIR": str(tmp_path / "model"),
                                         "SM_HPS": json.dumps(hyperparameters)}  # fmt: skip
    done = subprocess.run(command, cwd=source, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training: 2 rank(s)" in done.stdout and (tmp_path / "model" / "model" / "model.safetensors").exists()
