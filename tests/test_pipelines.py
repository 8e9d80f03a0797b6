"""The pipeline's cache, resume and gate; MLflow tracking and registry on the embedded sqlite store (a real run of
the training program logged, versions and aliases, promotion, concurrent writers); bad input."""

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from utils import pipelines as P

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    """An initialised sqlite store (MLflow's schema migrations take seconds, so they run once per module)."""
    folder = tmp_path_factory.mktemp("store")
    store = P.tracking_store(folder)
    P.experiment_id(store, "warm-up")
    return folder


@pytest.fixture
def store(template_store, tmp_path, monkeypatch):
    monkeypatch.delenv(P.TRACKING_VARIABLE, raising=False)
    shutil.copy(template_store / "mlflow.db", tmp_path / "mlflow.db")
    return P.tracking_store(tmp_path)


def counting_steps(calls: list[str], settings: dict | None = None, fail: str = "") -> list[P.Step]:
    """prepare -> train -> evaluate -> gate; each appends its name to `calls` when it really runs."""

    def prepare(ctx):
        calls.append("prepare")
        (ctx.folder / "data.txt").write_text("1 2 3")
        return {"data": str(ctx.folder / "data.txt")}

    def train(ctx):
        calls.append("train")
        if ctx.settings.get("fail"):
            raise RuntimeError("out of memory (injected)")
        return {"model": Path(ctx.inputs["prepare"]["data"]).read_text() + " trained", "score": ctx.settings["score"]}

    def evaluate(ctx):
        calls.append("evaluate")
        return {"score": ctx.inputs["train"]["score"]}

    def gate(ctx):
        calls.append("gate")
        return {"passed": ctx.inputs["evaluate"]["score"] >= ctx.settings["threshold"]}

    train_settings = {"score": 0.9, "fail": fail == "train"} | (settings or {})
    return [
        P.Step("prepare", prepare),
        P.Step("train", train, ("prepare",), train_settings),
        P.Step("evaluate", evaluate, ("train",)),
        P.Step("gate", gate, ("evaluate",), {"threshold": 0.5}, gate=True),
    ]


def test_an_unchanged_rerun_is_cached_and_a_change_reruns_only_what_depends_on_it(tmp_path):
    calls = []
    first = P.Pipeline(counting_steps(calls), tmp_path).run(progress=False)
    assert calls == ["prepare", "train", "evaluate", "gate"] and {r.status for r in first} == {"ran"}
    calls.clear()
    again = P.Pipeline(counting_steps(calls), tmp_path).run(progress=False)
    assert calls == [] and {r.status for r in again} == {"cached"}
    P.Pipeline(counting_steps(calls, {"score": 0.8}), tmp_path).run(progress=False)
    assert calls == ["train", "evaluate", "gate"]  # prepare's inputs did not change


def test_an_input_file_that_changes_invalidates_the_step(tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("a")
    calls = []
    step = P.Step(
        "read",
        lambda ctx: calls.append(1) or {"n": len(Path(ctx.settings["path"]).read_text())},
        settings={"path": str(source)},
        files=("path",),
    )
    P.Pipeline([step], tmp_path / "p").run(progress=False)
    P.Pipeline([step], tmp_path / "p").run(progress=False)
    source.write_text("ab")
    results = P.Pipeline([step], tmp_path / "p").run(progress=False)
    assert len(calls) == 2 and results[0].outputs == {"n": 2}


def test_a_failed_step_resumes_without_redoing_the_completed_ones(tmp_path):
    calls = []
    with pytest.raises(P.StepFailed, match="step 'train' failed.*resume") as failure:
        P.Pipeline(counting_steps(calls, fail="train"), tmp_path).run(progress=False)
    assert [r.status for r in failure.value.results] == ["ran", "failed"]
    calls.clear()
    P.Pipeline(counting_steps(calls), tmp_path).run(progress=False)
    assert calls == ["train", "evaluate", "gate"]


def registry_steps(store, calls, score, fail_register=False):
    """The counting pipeline followed by register and deploy, with a real MLflow run and registry."""

    def register(ctx):
        if ctx.settings["fail"]:
            raise ConnectionError("registry unreachable (injected)")
        version = P.register(P.tracking_store(ctx.settings["store"]), "gpt", ctx.settings["run_id"], alias="dev")
        return {"version": version}

    def deploy(ctx):
        calls.append("deploy")
        return {"url": "http://127.0.0.1:8080", "version": ctx.inputs["register"]["version"]}

    client = store.client()
    run = client.create_run(P.experiment_id(store, "tests"))
    client.log_artifact(run.info.run_id, __file__, artifact_path="model")
    settings = {"store": str(store.artifacts.parent), "run_id": run.info.run_id, "fail": fail_register}
    return [
        *counting_steps(calls, {"score": score}),
        P.Step("register", register, ("gate",), settings),
        P.Step("deploy", deploy, ("register",)),
    ]


def test_a_model_below_the_threshold_is_never_registered_or_deployed(store, tmp_path):
    calls = []
    results = P.Pipeline(registry_steps(store, calls, score=0.1), tmp_path / "p").run(progress=False)
    assert [r.status for r in results][-2:] == ["skipped", "skipped"] and "deploy" not in calls
    assert P.versions(store, "gpt") == []
    results = P.Pipeline(registry_steps(store, calls, score=0.9), tmp_path / "q").run(progress=False)
    assert results[-1].outputs["version"] == 1 and P.versions(store, "gpt")[0]["aliases"] == ["dev"]


def test_a_failed_step_leaves_the_registry_unchanged(store, tmp_path):
    P.Pipeline(registry_steps(store, [], score=0.9), tmp_path / "first").run(progress=False)
    before = P.versions(store, "gpt")
    with pytest.raises(P.StepFailed, match="register"):
        P.Pipeline(registry_steps(store, [], score=0.95, fail_register=True), tmp_path / "p").run(progress=False)
    with pytest.raises(P.StepFailed, match="train"):
        steps = registry_steps(store, [], score=0.95)
        steps[1] = counting_steps([], fail="train")[1]
        P.Pipeline(steps, tmp_path / "r").run(progress=False)
    with pytest.raises(Exception, match="not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        P.register(store, "other", "0" * 32)  # an unknown run: refused before the model is created
    assert P.versions(store, "gpt") == before and P.versions(store, "other") == []


def test_promotion_follows_dev_staging_prod_and_needs_an_approver(store):
    client = store.client()
    runs = [client.create_run(P.experiment_id(store, "tests")).info.run_id for _ in range(2)]
    assert [P.register(store, "gpt", run) for run in runs] == [1, 2]
    with pytest.raises(LookupError, match="no 'staging' alias"):
        P.promote(store, "gpt", "prod", "ada")
    with pytest.raises(PermissionError, match="needs an approver"):
        P.promote(store, "gpt", "staging", " ")
    assert P.promote(store, "gpt", "staging", "ada") == 2
    P.register(store, "gpt", runs[0])  # a newer dev version does not move staging or prod
    assert P.promote(store, "gpt", "prod", "grace", "load test passed") == 2
    rows = {row["version"]: row for row in P.versions(store, "gpt")}
    assert rows[2]["aliases"] == ["prod", "staging"] and rows[3]["aliases"] == ["dev"]
    assert rows[2]["tags"]["approved_prod"].startswith("grace ")


def test_a_training_run_is_logged_with_params_metrics_and_artifacts(store, tmp_path):
    from utils.train_settings import TrainSettings, metric_line

    output, data = tmp_path / "run", tmp_path / "shards"
    (output / "model").mkdir(parents=True), data.mkdir()
    (data / "shard-0.bin").write_bytes(b"tokens")
    (output / "model" / "model.safetensors").write_bytes(b"weights")
    records = [
        {"step": 2, "loss": 4.5, "lr": 1e-3},
        {"step": 2, "val_loss": 4.75},
        {"step": 4, "loss": 4.0},
        {"step": 4, "val_loss": 4.25},
    ]  # the program's format (utils.train_settings), as utils.train writes it
    (output / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert metric_line(records[0]) == "step=2; loss=4.5; lr=0.001;"
    settings = TrainSettings(data=str(data), output=str(output), steps=4, eval_every=2)
    run_id = P.log_training_run(store, "tests", settings, output, P.sha256_path(data))
    run = store.client().get_run(run_id)
    assert run.data.params == {"steps": "4", "eval_every": "2"} and run.data.tags["data_sha256"] == P.sha256_path(data)
    assert [(m.step, m.value) for m in store.client().get_metric_history(run_id, "val_loss")] == [(2, 4.75), (4, 4.25)]
    assert {a.path for a in store.client().list_artifacts(run_id, "model")} == {"model/model.safetensors"}
    assert P.final_metric(store, run_id, "val_loss") == 4.25
    assert P.register(store, "gpt", run_id, alias="dev") == 1
    chain = P.lineage(store, "gpt", "dev")
    assert chain["data_sha256"] == P.sha256_path(data) and chain["aliases"] == ["dev"] and chain["val_loss"] == 4.25
    with pytest.raises(ValueError, match="no records"):
        (output / "metrics.jsonl").write_text("")
        P.log_training_run(store, "tests", settings, output, "x")


WRITER = """
import sys
from utils import pipelines as P
store = P.tracking_store(sys.argv[1])
client = store.client()
for i in range(3):
    run = client.create_run(P.experiment_id(store, "concurrent"), run_name=f"{sys.argv[2]}-{i}")
    for step in range(10):
        client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    P.register(store, "shared", run.info.run_id, alias=f"writer-{sys.argv[2]}")
"""


def test_concurrent_writers_do_not_corrupt_the_sqlite_store(store):
    folder = store.artifacts.parent
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(folder), str(w)],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(2)
    ]
    errors = [writer.communicate(timeout=120)[1] for writer in writers]
    assert all(writer.returncode == 0 for writer in writers), errors
    with sqlite3.connect(folder / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = store.client()
    runs = client.search_runs([P.experiment_id(store, "concurrent")], max_results=100)
    assert len(runs) == 6 and all(len(client.get_metric_history(r.info.run_id, "loss")) == 10 for r in runs)
    assert [row["version"] for row in P.versions(store, "shared")] == list(range(1, 7))


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([P.Step("a b", lambda ctx: {})], "use letters, digits"),
        ([P.Step("a", lambda ctx: {}), P.Step("a", lambda ctx: {})], "two steps are named"),
        ([P.Step("a", lambda ctx: {}, needs=("b",))], "not earlier steps"),
        ([P.Step("a", lambda ctx: {}, files=("path",))], "does not have"),
    ],
)
def test_a_malformed_pipeline_is_refused_before_anything_runs(steps, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        P.Pipeline(steps, tmp_path)


def test_a_step_that_returns_the_wrong_thing_fails_clearly(tmp_path):
    with pytest.raises(P.StepFailed, match="returns a dict"):
        P.Pipeline([P.Step("a", lambda ctx: 3)], tmp_path).run(progress=False)
    with pytest.raises(P.StepFailed, match="must return"):
        P.Pipeline([P.Step("g", lambda ctx: {"ok": 1}, gate=True)], tmp_path).run(progress=False)
    with pytest.raises(FileNotFoundError, match="cannot hash"):
        P.sha256_path(tmp_path / "missing")


def test_the_store_follows_the_environment_variable_and_the_ui_binds_to_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv(P.TRACKING_VARIABLE, "http://tracking.example:5000")
    assert P.tracking_store(tmp_path).uri == "http://tracking.example:5000"
    monkeypatch.delenv(P.TRACKING_VARIABLE)
    command = P.ui_command(P.tracking_store(tmp_path), port=5055)
    assert command[command.index("--host") + 1] == "127.0.0.1" and "sqlite:///" in " ".join(command)
