import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from utils import loaders
from utils import train as T

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--layers", "1", "--width", "32", "--heads", "2", "--batch-size", "4", "--warmup", "2", "--log-every", "1",
        "--peak-flops", "1e11", "--lr", "3e-3"]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Token shards of learnable documents (counting upwards from a random start, modulo 99): a 100-token
    vocabulary, 16-token blocks, several shards."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    docs = [((rng.integers(99) + np.arange(rng.integers(10, 60))) % 99 + 1).tolist() + [0] for _ in range(300)]
    loaders.write_token_shards(docs, folder, block=16, vocab_size=100, blocks_per_shard=200)
    return folder


def run(args: list[str], torchrun: int = 0, extra: list[str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """The training program as a user runs it: `python -m utils.train` or `torchrun ... -m utils.train`."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launcher = [sys.executable, "-m", "utils.train"]
    if torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun),
                    "--standalone", *(extra or []), "-m", "utils.train"]  # fmt: skip
    return subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, **kwargs)


def losses(output: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl; a resumed run's later lines replace the earlier run's."""
    rows = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def test_one_process_trains_logs_and_saves_a_transformers_model(shards, tmp_path):
    done = run(["--data", str(shards), "--output", str(tmp_path), "--steps", "6", *TINY])
    assert done.returncode == 0, done.stderr
    assert "step=6; loss=" in done.stdout and "mfu=" in done.stdout
    trace = losses(tmp_path)
    assert sorted(trace) == [1, 2, 3, 4, 5, 6] and trace[6] < trace[1]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.n_layer == 1 and (tmp_path / "model" / "model.safetensors").exists()


def test_crash_and_resume_reproduces_the_uninterrupted_losses(shards, tmp_path):
    args = ["--data", str(shards), "--steps", "8", "--checkpoint-every", "2", *TINY]
    assert run([*args, "--output", str(tmp_path / "whole")]).returncode == 0
    crashed = run([*args, "--output", str(tmp_path / "crash"), "--fail-at-step", "6"])
    assert crashed.returncode == 1
    resumed = run([*args, "--output", str(tmp_path / "crash")])
    assert resumed.returncode == 0 and "resumed from step 4" in resumed.stdout
    assert losses(tmp_path / "crash") == losses(tmp_path / "whole")


@pytest.mark.parametrize("ranks", [1, 2])
def test_sigterm_checkpoints_then_resume_matches(shards, tmp_path, ranks):
    """One process, or two DDP ranks under torchrun with SIGTERM sent to the launcher (which forwards it to every
    rank, as a scheduler stopping the job does): a checkpoint on the way out, then an exact resume."""
    strategy = ["--strategy", "ddp"] if ranks > 1 else []
    args = ["--data", str(shards), "--steps", "12", "--checkpoint-every", "0", *strategy, *TINY]
    assert run([*args, "--output", str(tmp_path / "whole")], torchrun=ranks if ranks > 1 else 0).returncode == 0
    env = os.environ | {"OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    launcher = [sys.executable, "-m", "utils.train"]
    if ranks > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--standalone",
                    "-m", "utils.train"]  # fmt: skip
    command = [*launcher, *args, "--output", str(tmp_path / "cut")]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith("step=3;"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stdout.read()
    code = process.wait(timeout=120)
    assert (code == 128 + signal.SIGTERM if ranks == 1 else code != 0) and "checkpoint saved" in rest
    stopped_at = max(losses(tmp_path / "cut"))
    assert 3 <= stopped_at < 12
    resumed = run([*args, "--output", str(tmp_path / "cut")], torchrun=ranks if ranks > 1 else 0)
    assert resumed.returncode == 0 and f"resumed from step {stopped_at}" in resumed.stdout
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(shards, tmp_path):
    args = ["--data", str(shards), "--output", str(tmp_path), "--steps", "4", "--checkpoint-every", "2", *TINY]
    assert run(args).returncode == 0
    latest = tmp_path / "checkpoints" / "step-0000004.pt"
    latest.write_bytes(latest.read_bytes()[:100])  # truncated, as by a crash mid-copy
    again = run([*args[:5], "6", *args[6:]])
    assert again.returncode == 0 and "step-0000004.pt is truncated or corrupt" in again.stderr
    assert "resumed from step 2" in again.stdout


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_match_one_process_on_the_same_global_batch(shards, tmp_path, strategy):
    common = ["--data", str(shards), "--steps", "5", "--checkpoint-every", "0", *TINY]
    single = run([*common, "--output", str(tmp_path / "one"), "--batch-size", "8"])
    assert single.returncode == 0, single.stderr
    two = run([*common, "--output", str(tmp_path / "two"), "--batch-size", "4", "--strategy", strategy], torchrun=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 rank(s)" in two.stdout
    one, both = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert one.keys() == both.keys() and max(abs(one[s] - both[s]) for s in one) < 1e-4
    single_bytes = json.loads((tmp_path / "one" / "memory.json").read_text())[0]
    per_rank = json.loads((tmp_path / "two" / "memory.json").read_text())
    for part in ("parameters", "gradients", "optimizer"):
        held = [rank[part] for rank in per_rank]
        if strategy == "ddp":  # every rank holds everything
            assert held == [single_bytes[part]] * 2
        else:  # FSDP: each rank holds about half (shards are padded to equal sizes)
            assert sum(held) >= single_bytes[part] and max(held) <= 0.55 * single_bytes[part]


def test_torchrun_restarts_a_dead_rank_from_the_last_checkpoint(shards, tmp_path):
    args = ["--data", str(shards), "--output", str(tmp_path), "--steps", "6", "--checkpoint-every", "2",
            "--strategy", "ddp", "--fail-at-step", "5", *TINY]  # fmt: skip
    done = run(args, torchrun=2, extra=["--max-restarts", "1"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 4" in done.stdout and max(losses(tmp_path)) == 6


def test_sagemaker_hyperparameters_and_channels(shards, tmp_path):
    env = {"SM_HPS": json.dumps({"steps": 7, "grad_accum": 2, "activation-checkpointing": True, "compile": False}),
           "SM_CHANNEL_TRAINING": str(shards), "SM_MODEL_DIR": str(tmp_path / "model")}  # fmt: skip
    settings = T.parse_settings(["--lr", "0.01"], env)
    assert (settings.steps, settings.grad_accum, settings.lr) == (7, 2, 0.01)
    assert settings.activation_checkpointing and not settings.compile
    assert settings.data == str(shards) and settings.output == tmp_path / "model"
    assert settings.checkpoint_dir == T.SAGEMAKER_CHECKPOINTS


def test_switches_accept_the_values_sagemaker_launchers_pass(shards):
    # the training toolkit passes `--compile True`, ModelTrainer's drivers `--compile true`; people type `--compile`
    for argv, expected in ((["--compile", "True"], True), (["--compile", "false"], False), (["--compile"], True),
                           ([], False), (["--activation-checkpointing", "true", "--compile", "0"], False)):  # fmt: skip
        assert T.parse_settings(["--data", str(shards), *argv], {}).compile is expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--compile", "maybe"], "expected true or false"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--width", "30", "--heads", "4"], "multiple of --heads"),
        (["--strategy", "zero9"], "invalid choice"),
        ([], "no training data"),
    ],
)
def test_bad_settings_fail_before_any_work(argv, message, capsys, shards):
    data = ["--data", str(shards)] if argv else []
    with pytest.raises(SystemExit) as stop:
        T.parse_settings(argv + data, env={})
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_missing_data_folder_is_reported(tmp_path, capsys):
    with pytest.raises(SystemExit):
        T.parse_settings(["--data", str(tmp_path / "nope")], env={})
    assert "is not a folder" in capsys.readouterr().err


def test_learning_rate_schedule():
    settings = T.parse_settings(["--data", ".", "--steps", "100", "--warmup", "10", "--lr", "1.0"], env={})
    assert T.learning_rate(0, settings) == pytest.approx(0.1)
    assert T.learning_rate(9, settings) == pytest.approx(1.0)
    assert T.learning_rate(100, settings) == pytest.approx(0.1)


def test_activation_checkpointing_saves_fewer_activations():
    import torch

    from utils.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt(100, 32, layers=4, width=64, heads=2)
    batch = {"input_ids": torch.randint(0, 100, (4, 32)), "labels": torch.randint(0, 100, (4, 32))}
    full = T.saved_activation_bytes(model, batch)
    model.activation_checkpointing_enable()
    model.train()
    assert T.saved_activation_bytes(model, batch) < full / 2


def test_launch_and_read_metrics(shards, tmp_path):
    done = T.launch(["--data", str(shards), "--output", str(tmp_path), "--steps", "2", *TINY])
    assert done.returncode == 0, done.stderr
    assert [row["step"] for row in T.read_metrics(tmp_path)] == [1, 2]


@pytest.mark.parametrize("demo", ["tensor", "pipeline"])
def test_tensor_and_pipeline_parallel_match_one_process(demo):
    from utils.parallelism import run_demo

    results = run_demo(demo)
    assert len(results) == 2
    if demo == "tensor":
        assert all(r["output_max_difference"] < 1e-5 and r["grad_max_difference"] < 1e-6 for r in results)
        assert results[0]["local_weight_shape"][0] * 2 == results[0]["full_weight_shape"][0]
    else:
        last = next(r for r in results if r["stage"] == 1)
        assert last["pipeline_loss"] == pytest.approx(last["whole_model_loss"], rel=1e-5)


def test_vit_trains_on_images_one_and_two_ranks(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    loaders.write_image_arrays(tmp_path / "digits", digits.images[:, None] / 16, digits.target)
    common = ["--model", "vit", "--data", str(tmp_path / "digits"), "--steps", "4", "--checkpoint-every", "0",
              "--layers", "1", "--width", "32", "--heads", "2", "--log-every", "1", "--peak-flops", "1e11"]  # fmt: skip
    one = run([*common, "--output", str(tmp_path / "one"), "--batch-size", "16"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = run([*common, "--output", str(tmp_path / "two"), "--batch-size", "8", "--strategy", "ddp"], torchrun=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(tmp_path / "one" / "model").config.num_labels == 10


def test_rerunning_a_finished_distributed_run_is_a_no_op_resume(shards, tmp_path):
    args = ["--data", str(shards), "--output", str(tmp_path), "--steps", "3", "--checkpoint-every", "0",
            "--strategy", "ddp", *TINY]  # fmt: skip
    assert run(args, torchrun=2).returncode == 0
    again = run(args, torchrun=2)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from step 3" in again.stdout


def test_compiled_training_matches_eager_and_saves_a_plain_model(shards, tmp_path):
    args = ["--data", str(shards), "--steps", "4", "--checkpoint-every", "2", *TINY]
    assert run([*args, "--output", str(tmp_path / "eager")]).returncode == 0
    compiled = run([*args, "--output", str(tmp_path / "compiled"), "--compile"])
    assert compiled.returncode == 0, compiled.stderr[-2000:]
    eager, fused = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(fused) == [1, 2, 3, 4] and max(abs(eager[s] - fused[s]) for s in eager) < 1e-3
    from safetensors.torch import load_file

    names = load_file(tmp_path / "compiled" / "model" / "model.safetensors")
    assert not any(name.startswith("_orig_mod") for name in names)


def test_preflight_passes_on_a_healthy_host_and_stops_a_slow_one(shards, tmp_path):
    args = ["--data", str(shards), "--steps", "2", "--strategy", "ddp", *TINY]
    healthy = run([*args, "--output", str(tmp_path / "ok"), "--preflight-gflops", "0.001"], torchrun=2)
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    assert "rank 1 pre-flight passed" in healthy.stdout and "all-reduce over 2 ranks correct" in healthy.stdout
    slow = run([*args, "--output", str(tmp_path / "slow"), "--preflight-gflops", "1e9"])
    assert slow.returncode == 3 and "below 50% of the expected" in slow.stderr
    assert not (tmp_path / "slow" / "metrics.jsonl").exists()
