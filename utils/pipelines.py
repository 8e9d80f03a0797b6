"""A pipeline that trains, evaluates, registers and deploys on a condition, with caching and resume, tracked in MLflow.

Defined for notebook 14 (book chapter 14, *MLOps for vision and language*). Depends on `utils.train_settings` (the
settings of the course's training program, `python -m utils.train`, whose `metrics.jsonl` it logs; standard library
only, so importing this module does not import torch).

**Tracking and registry.** `tracking_store(folder)` is MLflow (3.x) on an embedded default: a sqlite file
(`<folder>/mlflow.db`) for runs, metrics and the model registry, and a plain folder (`<folder>/artifacts`) for
artifacts; no server to install. Set `COURSE_MLFLOW_URI` (e.g. `http://mlflow.internal:5000`, or the ARN of a
SageMaker managed MLflow tracking server) and the same code logs to that server instead. `log_training_run` logs one
run of the training program: its changed settings as params, every metric line (training and validation loss per
step), the model folder and `metrics.jsonl` as artifacts, and the data's SHA-256 as a tag. `register` creates a
model version and points an alias at it; `promote` moves an alias (dev -> staging -> prod) only with an approver.
MLflow deprecated the fixed registry stages (Staging/Production) in 2.9 in favour of aliases; nothing here uses them.
`ui_command(store)` is the real MLflow UI over the same store, bound to 127.0.0.1 (`make mlflow-ui`).

**The pipeline.** A `Pipeline` is a list of `Step`s, each a Python function `run(ctx) -> dict` (JSON-serialisable
outputs) with its settings and the names of the steps whose outputs it reads. `Pipeline.run()` executes them in
order in `<root>/<step>/<key>/`, where the key is the SHA-256 of the function's source code, its settings, the keys
and outputs of the steps it needs, and the bytes of every file or folder named in `files`. A step whose key has a
finished result (`result.json`, written last by an atomic rename) is not run again: an unchanged pipeline re-runs in
milliseconds, and after a failure the next run resumes at the failed step. A `gate` step returns `{"passed": bool}`;
when it fails, every later step is skipped, so a model below the threshold is never registered or deployed. A step
that raises records nothing, so a failed register step leaves the registry as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.train_settings import TrainSettings, changed_settings

TRACKING_VARIABLE = "COURSE_MLFLOW_URI"  # a remote tracking server's URI wins over the embedded sqlite store
RESULT_FILE = "result.json"


# ------------------------------------------------------------------------------------------- hashes of inputs


def sha256_path(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder: every file's relative path and bytes, in sorted order (so a
    renamed, added, removed or changed file changes the hash; modification times do not)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: cannot hash an input that is not there")
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_metrics(output: str | Path) -> list[dict[str, float]]:
    """The records of `<output>/metrics.jsonl` (format: `utils.train_settings`), one per logged step in step
    order, a step's training and validation records merged; a resumed run's later records win."""
    rows: dict[int, dict[str, float]] = {}
    for line in (Path(output) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
    return [rows[step] for step in sorted(rows)]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------------ the pipeline


@dataclass
class StepContext:
    """What a step's function receives: its own empty work folder, its settings, and the outputs of the steps it
    needs, by step name."""

    folder: Path
    settings: dict[str, Any]
    inputs: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Step:
    """One step: `run(ctx)` returns JSON-serialisable outputs. `needs`: earlier steps whose outputs it reads (their
    keys enter its key). `files`: names of settings that hold paths of input files or folders, hashed into the key.
    `gate`: the outputs carry `passed`; False skips every later step. `still_valid(outputs)`: for steps whose result
    lives outside the folder (a running server), says whether a cached result can be reused."""

    name: str
    run: Callable[[StepContext], dict[str, Any]]
    needs: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    gate: bool = False
    still_valid: Callable[[dict[str, Any]], bool] | None = None


@dataclass
class StepResult:
    """How a step went in one run: status "ran", "cached", "skipped" or "failed", seconds, key and outputs."""

    name: str
    status: str
    seconds: float = 0.0
    key: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str = ""


class StepFailed(RuntimeError):
    """A step raised; `results` says what ran, what came from the cache and which step failed."""

    def __init__(self, step: str, error: BaseException, results: list[StepResult]):
        super().__init__(
            f"step {step!r} failed: {type(error).__name__}: {error}. The steps before it are cached; "
            "fix the cause and run the pipeline again to resume at this step."
        )
        self.step, self.results = step, results


class Pipeline:
    """Steps run in the order given, each cached by the hash of its code, settings and inputs (module docstring)."""

    def __init__(self, steps: Sequence[Step], root: str | Path):
        names: list[str] = []
        for step in steps:
            if not step.name or not step.name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"step name {step.name!r}: use letters, digits, '-' and '_' (it names a folder)")
            if step.name in names:
                raise ValueError(f"two steps are named {step.name!r}; step names must be unique")
            if missing := [need for need in step.needs if need not in names]:
                raise ValueError(f"step {step.name!r} needs {missing}, which are not earlier steps of the pipeline")
            if missing := [name for name in step.files if name not in step.settings]:
                raise ValueError(f"step {step.name!r}: files names settings {missing} that it does not have")
            names.append(step.name)
        self.steps, self.root = list(steps), Path(root)

    def key(self, step: Step, done: dict[str, StepResult]) -> str:
        """The cache key of `step`: SHA-256 of its source code, settings, the needed steps' keys and outputs, and
        the bytes of its input files."""
        parts = {
            "code": inspect.getsource(step.run),
            "settings": _canonical(step.settings),
            "inputs": {need: [done[need].key, _canonical(done[need].outputs)] for need in step.needs},
            "files": {name: sha256_path(step.settings[name]) for name in step.files},
        }
        return hashlib.sha256(_canonical(parts).encode()).hexdigest()

    def cached(self, step: Step, key: str) -> dict[str, Any] | None:
        """The outputs of a finished run of `step` with this key, or None."""
        result = self.root / step.name / key[:16] / RESULT_FILE
        if not result.is_file():
            return None
        outputs = json.loads(result.read_text())["outputs"]
        if step.still_valid is not None and not step.still_valid(outputs):
            return None
        return outputs

    def run(self, progress: bool = True) -> list[StepResult]:
        """Run every step (or take it from the cache), stopping after a gate that did not pass. Raises StepFailed
        naming the step when one raises; what finished before it stays cached."""
        done: dict[str, StepResult] = {}
        results: list[StepResult] = []
        closed_by = ""
        for step in self.steps:
            if closed_by:
                results.append(StepResult(step.name, "skipped", error=f"gate {closed_by!r} did not pass"))
                continue
            start = time.perf_counter()
            key = self.key(step, done)
            outputs = self.cached(step, key)
            status = "cached"
            if outputs is None:
                status = "ran"
                try:
                    outputs = self._execute(step, key, done)
                except Exception as error:
                    results.append(StepResult(step.name, "failed", time.perf_counter() - start, key, error=str(error)))
                    raise StepFailed(step.name, error, results) from error
            done[step.name] = StepResult(step.name, status, time.perf_counter() - start, key, outputs)
            results.append(done[step.name])
            if progress:
                print(f"{step.name:10} {status:6} {done[step.name].seconds:7.2f} s  key {key[:10]}", file=sys.stderr)
            if step.gate and not outputs.get("passed", False):
                closed_by = step.name
        return results

    def _execute(self, step: Step, key: str, done: dict[str, StepResult]) -> dict[str, Any]:
        folder = self.root / step.name / key[:16]
        shutil.rmtree(folder, ignore_errors=True)  # leftovers of a failed attempt
        folder.mkdir(parents=True)
        outputs = step.run(StepContext(folder, dict(step.settings), {n: done[n].outputs for n in step.needs}))
        if not isinstance(outputs, dict):
            raise TypeError(f"step {step.name!r} returned {type(outputs).__name__}; a step returns a dict of outputs")
        if step.gate and not isinstance(outputs.get("passed"), bool):
            raise TypeError(f"gate step {step.name!r} must return {{'passed': True or False, ...}}")
        partial = folder / (RESULT_FILE + ".partial")
        partial.write_text(json.dumps({"step": step.name, "key": key, "outputs": outputs}, indent=1))
        os.replace(partial, folder / RESULT_FILE)  # atomic: a result is either complete or absent
        return outputs


def summary(results: Sequence[StepResult]) -> str:
    """One line per step: name, status, seconds (and why it was skipped or failed)."""
    return "\n".join(f"{r.name:10} {r.status:7} {r.seconds:7.2f} s  {r.error[:90]}" for r in results)


# ------------------------------------------------------------------------------------------ MLflow tracking


@dataclass(frozen=True)
class TrackingStore:
    """Where MLflow keeps runs and models: `uri` (sqlite:///... or a server) and, for the embedded store, the
    folder new experiments put their artifacts in (None: the server decides)."""

    uri: str
    artifacts: Path | None = None

    def client(self) -> Any:
        """An `mlflow.MlflowClient` on this store (tracking and registry)."""
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def tracking_store(folder: str | Path) -> TrackingStore:
    """The store the course uses: `$COURSE_MLFLOW_URI` when set (a remote tracking server), else sqlite at
    `<folder>/mlflow.db` with artifacts in `<folder>/artifacts` (created; MLflow creates its tables on first use)."""
    if remote := os.environ.get(TRACKING_VARIABLE):
        return TrackingStore(remote)
    folder = Path(folder).resolve()
    (folder / "artifacts").mkdir(parents=True, exist_ok=True)
    return TrackingStore(f"sqlite:///{folder / 'mlflow.db'}", folder / "artifacts")


def ui_command(store: TrackingStore, port: int = 5000) -> list[str]:
    """The command that serves MLflow's own UI over `store` on 127.0.0.1:`port` (loopback only: the UI has no
    login). `make mlflow-ui` runs it over the course's store."""
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if store.artifacts is not None:
        command += ["--default-artifact-root", store.artifacts.as_uri()]
    return command


def experiment_id(store: TrackingStore, name: str) -> str:
    """The id of experiment `name`, created (artifacts under the store's folder) if it does not exist."""
    client = store.client()
    if (found := client.get_experiment_by_name(name)) is not None:
        return found.experiment_id
    location = (store.artifacts / name).as_uri() if store.artifacts is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between the lookup and the create
        if (found := client.get_experiment_by_name(name)) is not None:
            return found.experiment_id
        raise


def log_training_run(
    store: TrackingStore,
    experiment: str,
    settings: TrainSettings,
    output: str | Path,
    data_sha256: str,
    run_name: str | None = None,
    model_folder: str | Path | None = None,
) -> str:
    """Log a finished run of the training program: the settings that differ from the defaults (params), every
    metric of `<output>/metrics.jsonl` at its step (`loss`, `val_loss`, `lr`, ...), the data hash (tag
    `data_sha256`), and as artifacts `metrics.jsonl` and the model folder (`model_folder`, default
    `<output>/model`, the program's save_pretrained). Returns the MLflow run id."""
    from mlflow.entities import Metric, Param, RunTag

    output = Path(output)
    rows = read_metrics(output)
    if not rows:
        raise ValueError(f"{output}/metrics.jsonl has no records: did the training run finish?")
    model = Path(model_folder) if model_folder is not None else output / "model"
    if not model.is_dir():
        raise FileNotFoundError(f"{model} is missing: the training program writes it when a run finishes")
    client = store.client()
    folders = ("output", "data", "validation_data", "checkpoint_dir")  # paths of this machine, not the run's recipe
    changed = {name: value for name, value in changed_settings(settings).items() if name not in folders}
    run = client.create_run(
        experiment_id(store, experiment),
        run_name=run_name,
        tags={"data_sha256": data_sha256, "program": "python -m utils.train"},
    )
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(row["step"])) for row in rows for key, value in row.items() if key != "step"
    ]
    for start in range(0, len(metrics), 500):  # MLflow accepts at most 1,000 metrics per batch
        client.log_batch(run.info.run_id, metrics=metrics[start : start + 500])
    client.log_batch(
        run.info.run_id,
        params=[Param(k, str(v)) for k, v in changed.items()],
        tags=[RunTag("val_loss_final", str(rows[-1].get("val_loss", "")))],
    )
    client.log_artifact(run.info.run_id, str(output / "metrics.jsonl"))
    client.log_artifacts(run.info.run_id, str(model), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def final_metric(store: TrackingStore, run_id: str, key: str) -> float:
    """The last logged value of metric `key` in the run (e.g. `val_loss`)."""
    history = store.client().get_metric_history(run_id, key)
    if not history:
        raise KeyError(f"run {run_id} has no metric {key!r}")
    return max(history, key=lambda m: m.step).value


def register(
    store: TrackingStore,
    name: str,
    run_id: str,
    alias: str = "dev",
    tags: dict[str, str] | None = None,
    artifact_path: str = "model",
) -> int:
    """Register the run's `artifact_path` as a new version of model `name` (created if new), tag it with its run's
    data hash and `tags`, and point `alias` at it. Returns the version number."""
    client = store.client()
    run = client.get_run(run_id)  # an unknown run fails here, before anything is written
    try:
        client.get_registered_model(name)
    except Exception:
        try:
            client.create_registered_model(name)
        except Exception:  # created by another process meanwhile
            client.get_registered_model(name)
    version_tags = {"data_sha256": run.data.tags.get("data_sha256", ""), **(tags or {})}
    version = client.create_model_version(
        name, f"{run.info.artifact_uri}/{artifact_path}", run_id=run_id, tags=version_tags
    )
    client.set_registered_model_alias(name, alias, version.version)
    return int(version.version)


def versions(store: TrackingStore, name: str) -> list[dict[str, Any]]:
    """Every version of model `name` with its run, aliases and tags (empty when the model does not exist)."""
    client = store.client()
    found = client.search_model_versions(f"name = '{name}'")
    aliases: dict[str, list[str]] = {}
    if found:
        for alias, version in client.get_registered_model(name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    return sorted(
        (
            {
                "version": int(v.version),
                "run_id": v.run_id,
                "aliases": sorted(aliases.get(str(v.version), [])),
                "tags": dict(v.tags),
            }
            for v in found
        ),
        key=lambda row: row["version"],
    )


PROMOTION_ORDER = ("dev", "staging", "prod")


def promote(store: TrackingStore, name: str, to_alias: str, approved_by: str, note: str = "") -> int:
    """Move `to_alias` to the version the previous alias in PROMOTION_ORDER points at (staging takes dev's
    version, prod takes staging's), recording who approved it and when as version tags. Refuses without an
    approver, or when the previous alias is not set. Returns the version promoted."""
    if to_alias not in PROMOTION_ORDER[1:]:
        raise ValueError(f"promote to one of {PROMOTION_ORDER[1:]}, got {to_alias!r}")
    if not approved_by or not approved_by.strip():
        raise PermissionError(f"promotion to {to_alias!r} needs an approver (approved_by='name')")
    source = PROMOTION_ORDER[PROMOTION_ORDER.index(to_alias) - 1]
    client = store.client()
    try:
        version = client.get_model_version_by_alias(name, source).version
    except Exception:
        raise LookupError(f"model {name!r} has no {source!r} alias to promote; register or promote first") from None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_model_version_tag(name, version, f"approved_{to_alias}", f"{approved_by} {stamp} {note}".strip())
    client.set_registered_model_alias(name, to_alias, version)
    return int(version)


def lineage(store: TrackingStore, name: str, alias: str) -> dict[str, Any]:
    """The chain behind an alias: data hash -> training run (its params and final val_loss) -> model version ->
    deployment (the version's `deployed_url` tag, if a deploy step set one)."""
    client = store.client()
    version = client.get_model_version_by_alias(name, alias)
    run = client.get_run(version.run_id)
    return {
        "data_sha256": run.data.tags.get("data_sha256", ""),
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "params": dict(run.data.params),
        "val_loss": run.data.metrics.get("val_loss"),
        "model": f"{name} v{version.version}",
        "aliases": sorted(
            a for a, v in client.get_registered_model(name).aliases.items() if str(v) == str(version.version)
        ),
        "deployed_url": version.tags.get("deployed_url", ""),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m utils.pipelines ui [--folder F] [--port N]`: MLflow's UI over the store in F (`make mlflow-ui`)."""
    parser = argparse.ArgumentParser(prog="python -m utils.pipelines", description=main.__doc__)
    parser.add_argument("command", choices=["ui"])
    parser.add_argument("--folder", default="runs/interactive/mlflow_14", help="the store's folder (notebook 14's)")
    parser.add_argument("--port", type=int, default=5000, help="port on 127.0.0.1")
    args = parser.parse_args(argv)
    if not os.environ.get(TRACKING_VARIABLE) and not (Path(args.folder) / "mlflow.db").is_file():
        print(f"{args.folder}/mlflow.db does not exist yet: run notebook 14 first (or pass --folder)", file=sys.stderr)
        return 2
    print(f"MLflow UI on http://127.0.0.1:{args.port} (Ctrl+C stops it)", flush=True)
    return subprocess.call(ui_command(tracking_store(args.folder), args.port))


if __name__ == "__main__":
    raise SystemExit(main())
