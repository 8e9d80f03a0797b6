"""The training program (`python -m utils.train`): what it computes, logs, saves and resumes. Single-process runs
go through `main()` in this process (one thread, so they agree bit for bit with each other); runs with several
ranks start torchrun as a user does. Faults and refused input: tests/test_faults_training.py."""

import contextlib
import io
import json
import signal
import subprocess

import pytest
import torch
from conftest import PROGRAM_ENV, ROOT, losses, program_command

from utils import loaders
from utils import train as T
from utils import train_settings as S
from utils.training_runs import fresh_run, launch, read_metrics, saved_activation_bytes


@pytest.fixture
def run_here():
    """`run_here(settings, callbacks=())` -> (exit code, stdout, stderr): the program's `main()` in this process,
    on one thread (as the child processes run), with its output captured."""

    def run(settings, callbacks=()):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = T.main(S.command_line(settings), callbacks)
        finally:
            torch.set_num_threads(threads)
        return code, out.getvalue(), err.getvalue()

    return run


def test_one_process_trains_logs_validates_and_saves_a_transformers_model(tiny, validation_shards, tmp_path, run_here):
    settings = tiny(output=str(tmp_path), steps=6, validation_data=str(validation_shards), eval_every=3)
    code, out, err = run_here(settings)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("step=")]
    assert lines[0].startswith("step=1; loss=") and "grad_norm=" in lines[0] and "mfu=" in lines[0]
    assert [line for line in lines if "val_loss=" in line][0].startswith("step=3; val_loss=")
    assert "MFU divides model FLOPs" in out and "given by --peak-flops" in out
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[5]["loss"] < rows[0]["loss"]
    assert "val_loss" in rows[2] and "val_loss" in rows[5]
    assert rows[5]["val_tokens"] == 8 * 4 * 15  # 8 batches of 4 blocks, 15 predicted tokens each
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert model.config.n_layer == 1 and model.config.activation_function == "gelu_pytorch_tanh"


def test_every_printed_metric_is_scraped_by_exactly_one_regex(tiny, validation_shards, tmp_path, run_here):
    code, out, _ = run_here(tiny(output=str(tmp_path), steps=2, validation_data=str(validation_shards)))
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("step=")]
    printed = {pair.split("=")[0] for line in lines for pair in line.rstrip(";").split("; ")} - {"step", "val_tokens"}
    scraped = S.scrape_metrics(lines)
    for key in printed:
        matching = [
            d["Name"] for d in S.METRIC_DEFINITIONS if scraped[d["Name"]] and d["Regex"].startswith(rf"\b{key}=")
        ]
        assert len(matching) == 1, key
    assert len(scraped["train:loss"]) == 2 and len(scraped["validation:loss"]) == 1  # val_loss is not train:loss
    assert scraped["train:loss"] == pytest.approx([row["loss"] for row in read_metrics(tmp_path)], rel=1e-5)


def test_the_logged_learning_rate_is_the_one_each_step_used(tiny, tmp_path, run_here):
    from transformers import get_cosine_with_min_lr_schedule_with_warmup_lr_rate

    code, _, _ = run_here(tiny(output=str(tmp_path), steps=10, warmup=3, lr=1.0, min_lr_ratio=0.1))
    assert code == 0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = get_cosine_with_min_lr_schedule_with_warmup_lr_rate(optimizer, 3, 10, min_lr_rate=0.1)
    expected = []
    for _ in range(10):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step(), schedule.step()
    logged = [row["lr"] for row in read_metrics(tmp_path)]
    assert logged == pytest.approx(expected, rel=1e-5)
    assert logged[0] == pytest.approx(1 / 3) and logged[2] == pytest.approx(1.0) and logged[-1] == pytest.approx(0.1)


def test_crash_and_resume_reproduces_the_uninterrupted_losses(tiny, tmp_path, run_here, run_program):
    whole = tiny(output=str(tmp_path / "whole"), steps=8, checkpoint_every=2)
    assert run_here(whole)[0] == 0
    cut = tiny(output=str(tmp_path / "cut"), steps=8, checkpoint_every=2)
    crashed = run_program(cut, fault="crash:5")  # the process dies at the end of step 5, after the step-4 checkpoint
    assert crashed.returncode == 1 and max(losses(tmp_path / "cut")) == 5
    code, out, _ = run_here(cut)
    assert code == 0 and "resumed from step 4" in out
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_sigterm_checkpoints_then_resume_matches(tiny, tmp_path, run_here):
    """A real SIGTERM to this process after step 3 (as a scheduler sends): step 4, in progress, finishes, a
    checkpoint is written on the way out, exit 143, and the resumed run continues exactly."""

    class SigtermAtStep3(T.Callbacks):
        def on_step_end(self, run):
            if run.step == 3:
                signal.raise_signal(signal.SIGTERM)

    whole = tiny(output=str(tmp_path / "whole"), steps=8, checkpoint_every=0)
    assert run_here(whole)[0] == 0
    cut = tiny(output=str(tmp_path / "cut"), steps=8, checkpoint_every=0)
    code, out, _ = run_here(cut, [SigtermAtStep3()])
    assert code == 128 + signal.SIGTERM and "SIGTERM: checkpoint saved at step 4" in out
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step-0000004"]
    code, out, _ = run_here(cut)
    assert code == 0 and "resumed from step 4" in out
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the program put the previous handler back


def test_ddp_matches_one_process_and_a_sigterm_to_torchrun_resumes_exactly(
    tiny, validation_shards, tmp_path, run_here, run_program
):
    """Two DDP ranks (pre-flight on, validation on) reproduce one process on the same global batch; SIGTERM to
    torchrun (which forwards it to every rank) stops both after a checkpoint, and the resumed job continues
    exactly where the uninterrupted 2-rank job went."""
    common = {"steps": 8, "checkpoint_every": 0, "validation_data": str(validation_shards), "eval_every": 4}
    assert run_here(tiny(output=str(tmp_path / "one"), batch_size=8, **common))[0] == 0
    ddp = tiny(output=str(tmp_path / "ddp"), strategy="ddp", preflight=True, **common)
    done = run_program(ddp, ranks=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 rank(s)" in done.stdout and "rank 1 pre-flight passed" in done.stdout
    one, both = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "ddp")
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(one, both, strict=True)) < 1e-4
    assert abs(one[-1]["val_loss"] - both[-1]["val_loss"]) < 1e-4
    single = json.loads((tmp_path / "one" / "memory.json").read_text())[0]
    assert json.loads((tmp_path / "ddp" / "memory.json").read_text()) == [single, single]  # every rank holds all

    cut = tiny(output=str(tmp_path / "cut"), strategy="ddp", **common)
    process = subprocess.Popen(
        program_command(cut, ranks=2),
        cwd=ROOT,
        env=PROGRAM_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("step=3;"):
            process.send_signal(signal.SIGTERM)
            break
    rest = process.stdout.read()
    assert process.wait(timeout=120) != 0 and "checkpoint saved" in rest
    stopped_at = max(losses(tmp_path / "cut"))
    resumed = run_program(cut, ranks=2)
    assert resumed.returncode == 0 and f"resumed from step {stopped_at}" in resumed.stdout
    assert losses(tmp_path / "cut") == losses(tmp_path / "ddp")


def test_fsdp_shards_its_checkpoints_and_torchrun_restarts_a_dead_rank_exactly(tiny, tmp_path, run_here, run_program):
    """Two FSDP ranks: sharded checkpoints (each rank writes its own shard with torch.distributed.checkpoint); rank 1
    dies at the end of step 5, torchrun restarts both, they resume from the step-4 shards, and step 5 comes out
    bit-identical to the first attempt's. The run matches one process within 1e-4 and each rank holds about half."""
    assert run_here(tiny(output=str(tmp_path / "one"), batch_size=8, steps=6, checkpoint_every=0))[0] == 0
    fsdp = tiny(output=str(tmp_path / "fsdp"), strategy="fsdp", steps=6, checkpoint_every=2)
    done = run_program(fsdp, ranks=2, torchrun=("--max-restarts", "1"), fault="crash:5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from step 4" in done.stdout
    rows = [json.loads(line) for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    fifth = [row["loss"] for row in rows if row["step"] == 5]
    assert len(fifth) == 2 and fifth[0] == fifth[1]  # before the crash and after the restart
    one, both = losses(tmp_path / "one"), losses(tmp_path / "fsdp")
    assert max(abs(one[s] - both[s]) for s in one) < 1e-4
    newest = tmp_path / "fsdp" / "checkpoints" / "step-0000006"
    assert {p.name for p in (newest / "sharded").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not (newest / "state.pt").exists() and json.loads((newest / "run.json").read_text())["layout"] == "sharded"
    single = json.loads((tmp_path / "one" / "memory.json").read_text())[0]
    for part in ("parameters", "gradients", "optimizer"):
        held = [rank[part] for rank in json.loads((tmp_path / "fsdp" / "memory.json").read_text())]
        assert sum(held) >= single[part] and max(held) <= 0.55 * single[part]  # shards are padded to equal sizes


def test_vit_trains_on_images_one_and_two_ranks(tmp_path, run_here, run_program):
    from sklearn.datasets import load_digits

    digits = load_digits()
    loaders.write_image_arrays(tmp_path / "digits", digits.images[:, None] / 16, digits.target)
    common = {
        "model": "vit",
        "data": str(tmp_path / "digits"),
        "steps": 4,
        "checkpoint_every": 0,
        "layers": 1,
        "width": 32,
        "heads": 2,
        "log_every": 1,
        "peak_flops": 1e11,
    }
    assert run_here(S.TrainSettings(output=str(tmp_path / "one"), batch_size=16, **common))[0] == 0
    two = run_program(S.TrainSettings(output=str(tmp_path / "two"), batch_size=8, strategy="ddp", **common), ranks=2)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert max(abs(a[s] - b[s]) for s in a) < 1e-4
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(tmp_path / "one" / "model").config.num_labels == 10


def test_rerunning_a_finished_run_is_a_no_op_resume(tiny, tmp_path, run_here):
    settings = tiny(output=str(tmp_path), steps=3, checkpoint_every=0)
    assert run_here(settings)[0] == 0
    code, out, _ = run_here(settings)
    assert code == 0 and "resumed from step 3" in out and "step=" not in out


def test_compiled_training_matches_eager_and_saves_a_plain_model(tiny, tmp_path, run_here):
    assert run_here(tiny(output=str(tmp_path / "eager"), steps=4))[0] == 0
    code, _, err = run_here(tiny(output=str(tmp_path / "compiled"), steps=4, compile=True))
    assert code == 0, err[-2000:]
    eager, fused = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert sorted(fused) == [1, 2, 3, 4] and max(abs(eager[s] - fused[s]) for s in eager) < 1e-3
    from safetensors.torch import load_file

    names = load_file(tmp_path / "compiled" / "model" / "model.safetensors")
    assert not any(name.startswith("_orig_mod") for name in names)


def test_settings_precedence_flag_over_sagemaker_environment_over_default(
    shards, validation_shards, tmp_path, monkeypatch
):
    other = tmp_path / "channel"
    other.mkdir()
    env = {
        "SM_HPS": json.dumps(
            {
                "steps": 7,
                "grad_accum": 2,
                "activation-checkpointing": True,
                "compile": False,
                "lr": 0.5,
                "_tuning_objective_metric": "validation:loss",
            }
        ),
        "SM_CHANNEL_TRAINING": str(other),
        "SM_CHANNEL_VALIDATION": str(validation_shards),
        "SM_MODEL_DIR": str(tmp_path / "model"),
    }
    settings = S.parse_settings(["--lr", "0.01", "--data", str(shards)], env)
    assert (settings.steps, settings.grad_accum, settings.lr, settings.width) == (
        7,
        2,
        0.01,
        256,
    )  # flag > SM > default
    assert settings.activation_checkpointing and not settings.compile
    assert settings.data == str(shards)  # the flag wins over SM_CHANNEL_TRAINING ...
    assert loaders.training_data_dir("unused", explicit=settings.data) == shards  # ... and stays the program's choice
    assert settings.validation_data == str(validation_shards) and settings.output == str(tmp_path / "model")
    assert settings.checkpoint_dir == str(S.SAGEMAKER_CHECKPOINTS)
    elsewhere = S.parse_settings(["--data", str(shards)], env | {"SAGEMAKER_BASE_DIR": str(tmp_path / "opt_ml")})
    assert elsewhere.checkpoint_dir == str(tmp_path / "opt_ml" / "checkpoints")  # beside the toolkit's other folders
    assert S.parse_settings([], env).data == str(other)  # no flag: the channel
    hyperparameters = tmp_path / "hyperparameters.json"  # no SM_HPS: the file SageMaker writes
    hyperparameters.write_text(json.dumps({"steps": "12", "batch-size": "3", "sagemaker_program": '"train.py"'}))
    monkeypatch.setattr(S, "SAGEMAKER_HYPERPARAMETERS", hyperparameters)
    from_file = S.parse_settings(["--data", str(shards)], {})
    assert (from_file.steps, from_file.batch_size, from_file.output) == (12, 3, "runs/train")


def test_switches_accept_the_values_sagemaker_launchers_pass(shards):
    # the training toolkit passes `--compile True`, ModelTrainer's drivers `--compile true`; people type `--compile`
    for argv, expected in (
        (["--compile", "True"], True),
        (["--compile", "false"], False),
        (["--compile"], True),
        ([], False),
        (["--activation-checkpointing", "true", "--compile", "0"], False),
    ):
        assert S.parse_settings(["--data", str(shards), *argv], {}).compile is expected
    both = S.parse_settings(["--data", str(shards), "--batch_size", "3", "--grad-accum", "2"], {})
    assert (both.batch_size, both.grad_accum) == (3, 2)


def test_command_line_and_hyperparameters_round_trip(shards):
    settings = S.TrainSettings(data=str(shards), batch_size=3, lr=1e-3, compile=True, strategy="ddp")
    assert S.command_line(settings) == [
        "--data",
        str(shards),
        "--batch-size",
        "3",
        "--lr",
        "0.001",
        "--strategy",
        "ddp",
        "--compile",
        "true",
    ]
    assert S.parse_settings(S.command_line(settings), {}) == S.resolve_paths(settings, {})
    assert S.hyperparameters(settings) == {
        "data": str(shards),
        "batch-size": 3,
        "lr": 1e-3,
        "strategy": "ddp",
        "compile": True,
    }
    with pytest.raises(TypeError):
        S.TrainSettings(learning_rate=1e-3)  # a misspelt setting fails where it is typed


def test_activation_checkpointing_saves_fewer_activations():
    from utils.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt(100, 32, layers=4, width=64, heads=2)
    batch = {"input_ids": torch.randint(0, 100, (4, 32)), "labels": torch.randint(0, 100, (4, 32))}
    full = saved_activation_bytes(model, batch)
    model.activation_checkpointing_enable()
    model.train()
    assert saved_activation_bytes(model, batch) < full / 2


def test_launch_runs_the_program_from_typed_settings_and_fresh_run_starts_over(tiny, tmp_path):
    done = launch(tiny(output=str(tmp_path), steps=2))
    assert done.returncode == 0, done.stderr
    assert [row["step"] for row in read_metrics(tmp_path)] == [1, 2]
    run = fresh_run(tiny(output=str(tmp_path), steps=2))  # launched again on the finished run's folder
    assert run["log"].splitlines()[0].endswith("fresh start")  # not a no-op resume of the old run
    assert [row["step"] for row in run["metrics"]] == [1, 2] and run["memory"][0]["parameters"] > 0
    with pytest.raises(ValueError, match="settings.output"):
        fresh_run(tiny(output=None))


def test_preflight_checks_ranks_against_each_other_and_stops_a_slow_host(tiny, tmp_path, run_here):
    assert T.straggler_problem([100.0, 98.0, 101.0, 99.0], 0.5) is None
    problem = T.straggler_problem([100.0, 30.0, 101.0, 99.0], 0.5)
    assert problem.startswith("rank 1 (30 GFLOP/s) below 50% of the median rank")
    code, out, err = run_here(tiny(output=str(tmp_path), steps=2, preflight_gflops=1e9))
    assert code == T.EXIT_PREFLIGHT and "below 50% of the expected" in err
    assert not (tmp_path / "metrics.jsonl").exists()


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
