"""The course itself: its map, the `record` helper notebooks report results with, and the headless runner behind
`make course`.

    python -m utils.course run                   # every notebook at its default (laptop) size
    python -m utils.course run --smoke           # seconds per notebook, what the tests use
    python -m utils.course run --only 00,03      # just these chapters
    python -m utils.course run --only 00 --update-notebooks   # also write outputs back into notebooks/
    python -m utils.course list                  # the course map

A run writes `runs/<timestamp>/`: the executed notebooks, `figures/`, `summary.json` and `index.html`. One
notebook failing does not stop the others; the exit status is non-zero if any failed, and the report names the
cell that raised and what it raised. Each notebook's wall time and the peak resident memory of its kernel (with
any processes the kernel starts) are recorded; a default-size run also measures the machine's matrix-multiply
throughput, so `tools/course_timings.py` and `make doctor` can scale the times to another machine. Defined for
notebook 00; needs papermill, nbformat and psutil, and `utils.machine` for the machine description and the
throughput.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
RUNS_DIR = ROOT / "runs"
SOLUTIONS_MODES = ("none", "after", "only")  # see select_notebooks
RECORD_FILE_ENV = "COURSE_RECORD_FILE"  # the runner points this at a per-notebook JSON file
SMOKE_ENV = "COURSE_SMOKE"  # "1": notebooks run at smoke size

#: Environment every headless notebook kernel gets on top of the runner's: no progress bars (they are for people
#: watching; in a saved notebook they are noise). Each notebook switches the hub off itself (utils.offline).
HEADLESS_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}

#: Side of the square fp32 matrix multiply whose throughput a default-size run records next to its times.
REFERENCE_MATMUL_SIZE = 1024


@dataclass(frozen=True)
class Chapter:
    """One notebook of the course and the book chapters and stage it accompanies."""

    number: str
    title: str
    book_chapters: str
    stage: str


#: The course map. Stages follow the book's five parts.
CHAPTERS: list[Chapter] = [
    Chapter("00", "Course tour: machine, assets and map", "-", "Start here"),
    Chapter("01", "Foundation models and pretraining objectives", "1", "Before pretraining"),
    Chapter("02", "Use case, scaling laws and model sizing", "2, 3", "Before pretraining"),
    Chapter("03", "Dataset preparation: clean, filter, deduplicate", "2", "Before pretraining"),
    Chapter("04", "Containers and accelerators on the cloud", "4", "Configure your environment"),
    Chapter("05", "Distribution fundamentals: DDP, FSDP, TP, PP", "5", "Configure your environment"),
    Chapter("06", "The data loader: tokenize, pack, stream", "6", "Configure your environment"),
    Chapter("07", "Finding the right hyperparameters", "7", "Train your model"),
    Chapter("08", "Large-scale training on SageMaker", "8", "Train your model"),
    Chapter("09", "Advanced training: throughput, MFU, compilation", "9", "Train your model"),
    Chapter("10", "Fine-tuning and evaluating, RLHF", "10", "Evaluate your model"),
    Chapter("11", "Detecting, mitigating and monitoring bias", "11", "Evaluate your model"),
    Chapter("12", "Deploying your model", "12", "Evaluate your model"),
    Chapter("13", "Prompt engineering", "13", "Deploy your model"),
    Chapter("14", "MLOps for vision and language", "14", "Deploy your model"),
    Chapter("15", "Future trends in pretraining", "15", "Deploy your model"),
]


def course_map(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[dict[str, str]]:
    """The course map as rows (notebook, title, book chapters, stage, notebook file or "planned")."""
    present = {path.name[:2]: path.name for path in notebooks_dir.glob("[0-9][0-9]_*.ipynb")}
    return [{**asdict(ch), "notebook": present.get(ch.number, "planned")} for ch in CHAPTERS]


# --------------------------------------------------------------------------------------------- recording results


def record(key: str, value: float | int | str | bool, unit: str = "") -> float | int | str | bool:
    """Record one key result of a notebook (a loss, an accuracy, a throughput) and return the value.

    The value is printed and, when the course runner set `COURSE_RECORD_FILE`, saved there so
    the run report shows it. Numbers must be finite: a NaN loss is a bug to fix, not a result to report.
    """
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"record() needs a non-empty string key, got {key!r}")
    if not isinstance(value, (int, float, str, bool)):
        raise TypeError(f"record({key!r}) takes a number, string or bool; got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"record({key!r}) got {value}; check the computation that produced it")
    entry: dict[str, Any] = {"value": value, "unit": unit}
    path = os.environ.get(RECORD_FILE_ENV)
    if path:
        saved = json.loads(Path(path).read_text()) if Path(path).exists() else {}
        saved[key] = entry
        Path(path).write_text(json.dumps(saved, indent=2))
    shown = f"{value:.4g}" if isinstance(value, float) else value
    print(f"recorded {key} = {shown}{' ' + unit if unit else ''}")
    return value


def output_dir() -> Path:
    """Where a notebook writes files a reader should find with the run's report: the runner's `runs/<timestamp>/`
    under `make course`, else `runs/interactive/`. Created if missing."""
    path = os.environ.get(RECORD_FILE_ENV)
    folder = Path(path).resolve().parents[1] if path else RUNS_DIR / "interactive"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------------------------------------------- the runner


@dataclass
class NotebookResult:
    """What happened to one notebook in a run."""

    notebook: str
    status: str  # "passed" or "failed"
    wall_s: float
    peak_rss_mb: float | None = None  # the kernel's process tree, see PeakMemory
    other_cpu_cores: float | None = None  # CPU used by other programs meanwhile, see CompetingCpu
    metrics: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None


def select_notebooks(only: str | None, notebooks_dir: Path = NOTEBOOKS_DIR, solutions: str = "none") -> list[Path]:
    """The notebooks to run, in course order; `only` is a comma list of numbers like "00,3,06". `solutions` is
    "none" (chapters only), "after" (each chapter followed by its exercise solutions, `solutions/NN_*.ipynb` under
    `notebooks_dir`, if any) or "only" (the solutions of the selected chapters, without the chapters)."""
    if solutions not in SOLUTIONS_MODES:
        raise ValueError(f"solutions must be one of {SOLUTIONS_MODES}, got {solutions!r}")
    available = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    by_number = {path.name[:2]: path for path in available}
    wanted = list(by_number)
    if only:
        wanted = list(dict.fromkeys(part.strip().zfill(2) for part in only.split(",") if part.strip()))
        unknown = [number for number in wanted if number not in by_number]
        if unknown or not wanted:
            raise SystemExit(
                f"--only {only!r}: no notebook numbered {', '.join(unknown) or '(none given)'}; "
                f"available: {', '.join(by_number)}"
            )
    solved = sorted((notebooks_dir / "solutions").glob("[0-9][0-9]_*.ipynb")) if solutions != "none" else []
    chapters = {number: [by_number[number]] if solutions != "only" else [] for number in wanted}
    return [path for number in wanted for path in [*chapters[number], *(s for s in solved if s.name[:2] == number)]]


@contextmanager
def _environment(updates: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _describe_failure(err: BaseException) -> dict[str, Any]:
    """Which cell raised what, from papermill's error (or the kernel/timeout error nbclient raised)."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        lines = err.source.strip().splitlines()
        return {
            "cell_index": err.cell_index,
            "execution_count": err.exec_count,
            "cell_first_line": lines[0] if lines else "",
            "ename": err.ename,
            "evalue": err.evalue,
        }
    return {"cell_index": None, "ename": type(err).__name__, "evalue": str(err)}


def extract_figures(notebook: dict[str, Any], figures_dir: Path, stem: str) -> list[Path]:
    """Save every PNG output of an executed notebook as `<stem>_cell<NN>_<k>.png`; return the paths."""
    saved = []
    for index, cell in enumerate(notebook["cells"]):
        for k, output in enumerate(cell.get("outputs", [])):
            png = output.get("data", {}).get("image/png")
            if png:
                figures_dir.mkdir(parents=True, exist_ok=True)
                path = figures_dir / f"{stem}_cell{index:02d}_{k}.png"
                path.write_bytes(base64.b64decode(png if isinstance(png, str) else "".join(png)))
                saved.append(path)
    return saved


def _replace_in(obj: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in replacements:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [_replace_in(item, replacements) for item in obj]
    if isinstance(obj, dict):
        return {key: _replace_in(value, replacements) for key, value in obj.items()}
    return obj


def clean_for_commit(notebook: dict[str, Any]) -> dict[str, Any]:
    """A copy of an executed notebook fit to commit: no papermill/timing metadata, no absolute local paths.

    Paths under the course folder become relative, the home folder becomes `~`, so outputs do not reveal
    (or depend on) the machine that produced them.
    """
    replacements = [(f"{ROOT}{os.sep}", ""), (str(ROOT), "."), (str(Path.home()), "~")]
    cleaned = json.loads(json.dumps(notebook))
    cleaned["metadata"].pop("papermill", None)
    for cell in cleaned["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
        if "outputs" in cell:
            cell["outputs"] = _replace_in(cell["outputs"], replacements)
    return cleaned


class PeakMemory:
    """Peak resident memory (bytes) of this process's child processes while the block runs: the notebook's kernel
    and every process it starts (DDP workers, a training toolkit), not the runner itself.

    A thread samples the children every `interval_s` seconds and keeps the largest sum of their resident set
    sizes. Short spikes between samples would be missed, so each sample also reads every child's own high-water
    mark (Linux: VmHWM in /proc/<pid>/status; Windows: psutil's peak_wset), which the kernel tracks exactly;
    the peak reported is the larger of the two. Both are lower bounds of the true peak of the tree, and the sum
    counts pages that forked workers share once per process.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.interval_s = interval_s
        self.peak_bytes = 0
        self._me = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _high_water(process: Any, info: Any) -> int:
        peak = getattr(info, "peak_wset", 0)
        try:
            with open(f"/proc/{process.pid}/status", encoding="ascii") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        return peak

    def sample(self) -> int:
        """Take one sample now; return the peak so far in bytes."""
        import psutil

        total, high_water = 0, 0
        for child in self._me.children(recursive=True):
            try:
                info = child.memory_info()
                total += info.rss
                high_water = max(high_water, self._high_water(child, info))
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # it ended between the listing and the reading
        self.peak_bytes = max(self.peak_bytes, total, high_water)
        return self.peak_bytes

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)


class CompetingCpu:
    """How many cores other programs kept busy while the block ran (mean over its wall time): the machine's busy
    CPU time (psutil's system-wide user, system, nice, irq and softirq seconds) minus the CPU time of this process
    and of its child processes, which the kernel adds to ours once they are reaped (the notebook's kernel and what
    it started). Near 0 means the notebook had the machine to itself, so its wall time is what a reader with the
    same CPU should expect; a load average cannot say that, since it also counts the notebook's own threads and
    remembers the 15 minutes before it started. A process the notebook leaves behind for the system to reap (its
    parent exited first) takes its CPU time with it and counts as another program here, so a notebook that starts
    such processes (chapter 8's local training jobs, it appears) reads busier than it was.
    """

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.cores: float | None = None

    def _busy_s(self) -> float:
        times = self._psutil.cpu_times()
        return (
            times.user
            + times.system
            + getattr(times, "nice", 0.0)
            + getattr(times, "irq", 0.0)
            + getattr(times, "softirq", 0.0)
        )

    def _ours_s(self) -> float:
        mine = self._psutil.Process().cpu_times()
        return mine.user + mine.system + mine.children_user + mine.children_system

    def __enter__(self) -> CompetingCpu:
        self._start = (time.perf_counter(), self._busy_s(), self._ours_s())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._start[0]
        others = (self._busy_s() - self._start[1]) - (self._ours_s() - self._start[2])
        self.cores = round(max(others, 0.0) / wall, 2) if wall > 0 else None


def dead_kernel_hint(peak_bytes: int, notebook: str) -> str:
    """What to tell a reader whose kernel died: almost always the kernel ran out of memory and the system's
    out-of-memory killer ended it with SIGKILL, which leaves no Python traceback behind."""
    import psutil

    total = psutil.virtual_memory().total
    return (
        f"The kernel was killed, most often by the system when memory runs out: it had reached "
        f"{format_memory(peak_bytes / 1e6)} of this machine's {format_memory(total / 1e6)}. Fix: close other "
        f"programs and rerun, or run it at smoke size (python -m utils.course run --smoke --only {notebook[:2]}); "
        "see TROUBLESHOOTING.md, 'The kernel appears to have died'."
    )


def run_notebook(source: Path, run_dir: Path, smoke: bool, timeout_s: int) -> NotebookResult:
    """Execute one notebook headless with papermill into `run_dir`; never raises for a notebook failure."""
    import nbformat
    import papermill

    executed = run_dir / source.name
    record_file = run_dir / "records" / f"{source.stem}.json"
    record_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**HEADLESS_ENV, SMOKE_ENV: "1" if smoke else "0", RECORD_FILE_ENV: str(record_file)}
    start = time.perf_counter()
    error = None
    with _environment(env), PeakMemory() as memory, CompetingCpu() as competing:
        try:
            papermill.execute_notebook(
                str(source),
                str(executed),
                kernel_name="python3",
                cwd=str(source.parent),
                progress_bar=False,
                execution_timeout=timeout_s,
            )
        except Exception as err:  # noqa: BLE001 - any failure of one notebook is reported, the run goes on
            error = _describe_failure(err)
    wall = time.perf_counter() - start
    if error and error["ename"] == "DeadKernelError":
        error["hint"] = dead_kernel_hint(memory.peak_bytes, source.name)
    figures: list[Path] = []
    if executed.exists():
        figures = extract_figures(nbformat.read(executed, as_version=4), run_dir / "figures", source.stem)
    metrics = json.loads(record_file.read_text()) if record_file.exists() else {}
    return NotebookResult(
        notebook=source.name,
        status="failed" if error else "passed",
        wall_s=round(wall, 1),
        peak_rss_mb=round(memory.peak_bytes / 1e6, 1) if memory.peak_bytes else None,
        other_cpu_cores=competing.cores,
        metrics=metrics,
        figures=[str(path.relative_to(run_dir)) for path in figures],
        error=error,
    )


def format_memory(megabytes: float | None) -> str:
    """'850 MB' or '1.2 GB' (decimal units); '-' when not measured."""
    if not megabytes:
        return "-"
    return f"{megabytes:.0f} MB" if megabytes < 1000 else f"{megabytes / 1000:.1f} GB"


def write_report(
    results: list[NotebookResult],
    run_dir: Path,
    smoke: bool,
    machine: dict[str, Any],
    matmul: dict[str, float] | None = None,
) -> None:
    """Write `summary.json` and a one-page `index.html` with every notebook's status, wall time, peak memory,
    metrics and figures; `matmul` is the machine's measured matrix-multiply throughput, when measured."""
    summary = {
        "run": run_dir.name,
        "mode": "smoke" if smoke else "default",
        "machine": machine,
        "matmul": matmul,
        # Other programs running at the same time slow every notebook down: how busy the machine was (the 1, 5 and
        # 15-minute load averages when the run ended; a 2-core machine is saturated at 2).
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "passed": sum(r.status == "passed" for r in results),
        "failed": sum(r.status == "failed" for r in results),
        "notebooks": [asdict(r) for r in results],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    esc = html.escape
    rows, sections = [], []
    for r in results:
        metrics = "<br>".join(
            f"{esc(k)} = {esc(str(v['value']))} {esc(v.get('unit', ''))}" for k, v in r.metrics.items()
        )
        problem = ""
        if r.error:
            where = f"cell {r.error['cell_index']}: " if r.error.get("cell_index") is not None else ""
            problem = f"<br><b>{esc(where + r.error['ename'])}</b>: {esc(str(r.error['evalue']))[:500]}"
            problem += f"<br>{esc(r.error['hint'])}" if r.error.get("hint") else ""
        rows.append(
            f"<tr class='{r.status}'><td><a href='{esc(r.notebook)}'>{esc(r.notebook)}</a></td>"
            f"<td>{r.status}{problem}</td><td>{r.wall_s:.1f}</td><td>{format_memory(r.peak_rss_mb)}</td>"
            f"<td>{metrics}</td></tr>"
        )
        images = "".join(f"<img src='{esc(f)}' alt='{esc(f)}'>" for f in r.figures)
        sections.append(f"<h2>{esc(r.notebook)}</h2><div class='figs'>{images or '<p>No figures.</p>'}</div>")
    facts = ", ".join(f"{esc(k)}: {esc(str(v))}" for k, v in machine.items())
    if matmul:
        facts += f", fp32 matmul {matmul['size']}x{matmul['size']}: {matmul['gflops']:.0f} GFLOP/s"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Course run {esc(run_dir.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}tr.failed{{background:#fdd}}
tr.passed td:nth-child(2){{color:#070}}.figs img{{max-width:48%;margin:4px;border:1px solid #eee}}</style>
</head><body><h1>Course run {esc(run_dir.name)} ({summary["mode"]} size)</h1>
<p>{summary["passed"]} passed, {summary["failed"]} failed.</p><p><small>{facts}</small></p>
<table><tr><th>notebook</th><th>status</th><th>wall s</th><th>peak memory (kernel)</th><th>recorded results</th></tr>
{"".join(rows)}</table>
{"".join(sections)}</body></html>"""
    (run_dir / "index.html").write_text(page)


def run_course(
    smoke: bool = False,
    only: str | None = None,
    update_notebooks: bool = False,
    runs_dir: Path = RUNS_DIR,
    timeout_s: int = 1800,
    notebooks_dir: Path = NOTEBOOKS_DIR,
    solutions: str = "none",
) -> int:
    """Run the selected notebooks in order (with or without their exercise solutions, see `select_notebooks`) and
    write the report; return 0 if all passed, else 1."""
    import nbformat

    from utils.machine import describe_machine, measure_matmul_throughput

    if update_notebooks and smoke:
        raise SystemExit("--update-notebooks writes default-size outputs; drop --smoke to use it")
    notebooks = select_notebooks(only, notebooks_dir, solutions)
    stamp = datetime.now().strftime("%Y-%m-%dT%H-%M-%S") + ("-smoke" if smoke else "")
    run_dir = runs_dir / stamp
    run_dir.mkdir(parents=True, exist_ok=False)
    print(f"Running {len(notebooks)} notebook(s) at {'smoke' if smoke else 'default'} size into {run_dir}")
    # Measured before the notebooks, on an idle kernel-free runner: the yardstick `make doctor` scales times by.
    matmul = None if smoke else measure_matmul_throughput(REFERENCE_MATMUL_SIZE, min_run_time=1.0)
    results = []
    for i, source in enumerate(notebooks, 1):
        result = run_notebook(source, run_dir, smoke, timeout_s)
        results.append(result)
        detail = f" - {result.error['ename']}: {str(result.error['evalue'])[:200]}" if result.error else ""
        detail += f"\n    {result.error['hint']}" if result.error and result.error.get("hint") else ""
        took = f"{result.wall_s:.1f} s, peak memory {format_memory(result.peak_rss_mb)}"
        print(f"[{i}/{len(notebooks)}] {source.name}: {result.status} in {took}{detail}", flush=True)
        if update_notebooks and result.status == "passed":
            executed = nbformat.read(run_dir / source.name, as_version=4)
            nbformat.write(nbformat.from_dict(clean_for_commit(executed)), source)
    write_report(results, run_dir, smoke, describe_machine(), matmul)
    failed = [r.notebook for r in results if r.status == "failed"]
    print(f"Report: {run_dir / 'index.html'}" + (f"\nFAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.course", description="Run the course's notebooks.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks headless and write a report under runs/")
    run.add_argument("--smoke", action="store_true", help="tiny sizes: seconds per notebook (as in `make test`)")
    run.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03")
    run.add_argument("--update-notebooks", action="store_true", help="write outputs back into notebooks/")
    run.add_argument("--runs-dir", type=Path, default=RUNS_DIR, help="where run folders go (default: runs/)")
    run.add_argument("--timeout", type=int, default=1800, help="seconds one cell may run (default: 1800)")
    run.add_argument(
        "--solutions",
        choices=SOLUTIONS_MODES,
        default="none",
        help="exercise solutions: none (default), after each chapter, or only the solutions",
    )
    sub.add_parser("list", help="print the course map")
    args = parser.parse_args(argv)
    if args.command == "list":
        for row in course_map():
            print(f"{row['number']}  {row['title']:50} book ch. {row['book_chapters']:6} {row['notebook']}")
        return 0
    if args.timeout <= 0:
        parser.error("--timeout must be a positive number of seconds")
    return run_course(
        args.smoke, args.only, args.update_notebooks, args.runs_dir, args.timeout, solutions=args.solutions
    )


if __name__ == "__main__":
    sys.exit(main())
