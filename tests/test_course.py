"""The course runner: notebook selection, the record helper, cleaning for commit, and a real headless run."""

import json
import math

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import course


def test_course_map_covers_every_chapter_once():
    rows = course.course_map()
    assert [row["number"] for row in rows] == [f"{i:02d}" for i in range(16)]
    assert rows[0]["notebook"] == "00_course_tour.ipynb"


def test_record_validates_and_writes_the_runner_file(tmp_path, monkeypatch, capsys):
    target = tmp_path / "metrics.json"
    monkeypatch.setenv(course.RECORD_FILE_ENV, str(target))
    assert course.record("val_loss", 3.25, "nats") == 3.25
    course.record("samples", 12)
    assert json.loads(target.read_text()) == {
        "val_loss": {"value": 3.25, "unit": "nats"},
        "samples": {"value": 12, "unit": ""},
    }
    assert "recorded val_loss = 3.25 nats" in capsys.readouterr().out
    with pytest.raises(ValueError, match="check the computation"):
        course.record("loss", math.nan)
    with pytest.raises(ValueError, match="non-empty"):
        course.record(" ", 1)
    with pytest.raises(TypeError):
        course.record("tensor", [1, 2])


def _write(path, *cells):
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_select_notebooks_by_number_and_rejects_unknown(tmp_path):
    for name in ("00_a.ipynb", "03_b.ipynb", "06_c.ipynb"):
        _write(tmp_path / name, new_code_cell("1"))
    assert [p.name for p in course.select_notebooks("6,0", tmp_path)] == ["06_c.ipynb", "00_a.ipynb"]
    assert len(course.select_notebooks(None, tmp_path)) == 3
    with pytest.raises(SystemExit, match="no notebook numbered 09.*available: 00, 03, 06"):
        course.select_notebooks("03,09", tmp_path)


def test_solutions_follow_the_chapter_they_solve(tmp_path):
    for name in ("00_a.ipynb", "03_b.ipynb", "solutions/03_b_solutions.ipynb"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        _write(tmp_path / name, new_code_cell("1"))
    names = [p.name for p in course.select_notebooks(None, tmp_path, solutions="after")]
    assert names == ["00_a.ipynb", "03_b.ipynb", "03_b_solutions.ipynb"]
    assert [p.name for p in course.select_notebooks("3", tmp_path)] == ["03_b.ipynb"]
    assert [p.name for p in course.select_notebooks("0,3", tmp_path, solutions="only")] == ["03_b_solutions.ipynb"]


def test_clean_for_commit_drops_run_metadata_and_local_paths():
    nb = {
        "metadata": {"papermill": {"duration": 3}},
        "cells": [
            {
                "cell_type": "code",
                "metadata": {"papermill": {}, "execution": {}, "tags": ["x"]},
                "outputs": [{"output_type": "stream", "name": "stdout", "text": f"{course.ROOT}/data/cache/x\n"}],
                "source": "",
            }
        ],
    }
    cleaned = course.clean_for_commit(nb)
    assert "papermill" not in cleaned["metadata"]
    assert cleaned["cells"][0]["metadata"] == {"tags": ["x"]}
    assert cleaned["cells"][0]["outputs"][0]["text"] == "data/cache/x\n"
    assert nb["metadata"]["papermill"] == {"duration": 3}  # the input is left alone


def test_a_run_reports_passes_failures_metrics_and_figures(tmp_path):
    notebooks, runs = tmp_path / "notebooks", tmp_path / "runs"
    notebooks.mkdir()
    _write(
        notebooks / "00_good.ipynb",
        new_markdown_cell("# Good"),
        new_code_cell("import os\nfrom utils.course import record\nrecord('smoke', os.environ['COURSE_SMOKE'])"),
        new_code_cell(
            "import matplotlib\nmatplotlib.use('module://matplotlib_inline.backend_inline')\n"
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"
        ),
    )
    _write(notebooks / "01_bad.ipynb", new_code_cell("x = 1"), new_code_cell("raise ValueError('planted failure')"))
    _write(notebooks / "02_after.ipynb", new_code_cell("print('still runs')"))
    code = course.run_course(smoke=True, runs_dir=runs, timeout_s=120, notebooks_dir=notebooks)
    assert code == 1
    (run_dir,) = runs.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    by_name = {entry["notebook"]: entry for entry in summary["notebooks"]}
    assert [by_name[n]["status"] for n in ("00_good.ipynb", "01_bad.ipynb", "02_after.ipynb")] == [
        "passed",
        "failed",
        "passed",
    ]
    assert by_name["00_good.ipynb"]["metrics"] == {"smoke": {"value": "1", "unit": ""}}
    assert len(by_name["00_good.ipynb"]["figures"]) == 1 and (run_dir / by_name["00_good.ipynb"]["figures"][0]).exists()
    error = by_name["01_bad.ipynb"]["error"]
    assert error["ename"] == "ValueError" and error["evalue"] == "planted failure" and error["cell_index"] == 1
    page = (run_dir / "index.html").read_text()
    assert "planted failure" in page and "01_bad.ipynb" in page and "<img" in page
    assert summary["mode"] == "smoke" and summary["passed"] == 2 and summary["failed"] == 1
    # Each kernel (Python, IPython, matplotlib) holds tens of MB; the runner's own memory is not counted.
    assert all(40 < by_name[n]["peak_rss_mb"] < 2000 for n in by_name)
    assert "peak memory (kernel)" in page and " MB</td>" in page
    assert summary["matmul"] is None  # measured at default size only
    assert len(summary["load_average_at_end"]) == 3


def test_update_notebooks_refuses_smoke_size():
    with pytest.raises(SystemExit, match="default-size"):
        course.run_course(smoke=True, update_notebooks=True)


def test_output_dir_is_the_run_folder_under_the_runner(tmp_path, monkeypatch):
    monkeypatch.setenv(course.RECORD_FILE_ENV, str(tmp_path / "run" / "records" / "02_x.json"))
    assert course.output_dir() == (tmp_path / "run").resolve()


def test_peak_memory_measures_the_children_not_the_runner():
    """Run in a fresh interpreter: pytest's own process may hold children other tests left (a compile-worker
    pool, a server being torn down), and those would count as this test's children."""
    import subprocess
    import sys
    from pathlib import Path

    scenario = """
import subprocess, sys
from utils import course
ballast = bytearray(200_000_000)  # the runner's own memory: must not count
with course.PeakMemory(interval_s=0.05) as idle:
    pass
assert idle.peak_bytes == 0 and len(ballast), idle.peak_bytes
child = "import time; block = b'x' * 300_000_000; time.sleep(0.5)"  # written bytes, so resident
with course.PeakMemory(interval_s=0.05) as memory:
    subprocess.run([sys.executable, "-c", child], check=True)
assert 300e6 <= memory.peak_bytes < 600e6, memory.peak_bytes
"""
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", scenario], check=True, cwd=root)


def test_report_shows_peak_memory_and_the_machine_throughput(tmp_path):
    results = [course.NotebookResult("00_a.ipynb", "passed", 31.0, peak_rss_mb=1234.5)]
    matmul = {"size": 1024, "gflops": 88.4, "seconds": 0.02, "best_gflops": 90.0, "relative_spread": 0.01}
    course.write_report(results, tmp_path, smoke=False, machine={"cpu": "test"}, matmul=matmul)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["notebooks"][0]["peak_rss_mb"] == 1234.5 and summary["matmul"]["gflops"] == 88.4
    page = (tmp_path / "index.html").read_text()
    assert "<td>1.2 GB</td>" in page and "1024x1024: 88 GFLOP/s" in page
    assert [course.format_memory(v) for v in (None, 850.0, 1234.5)] == ["-", "850 MB", "1.2 GB"]


def test_a_default_size_run_measures_matmul_throughput_first(tmp_path, monkeypatch):
    import utils.machine

    calls = []
    monkeypatch.setattr(
        utils.machine,
        "measure_matmul_throughput",
        lambda size, **kw: calls.append(size) or {"size": size, "gflops": 50.0},
    )
    monkeypatch.setattr(course, "run_notebook", lambda source, *a: course.NotebookResult(source.name, "passed", 1.0))
    _write(tmp_path / "00_a.ipynb", new_code_cell("1"))
    assert course.run_course(runs_dir=tmp_path / "runs", notebooks_dir=tmp_path) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert calls == [course.REFERENCE_MATMUL_SIZE]
    assert json.loads((run_dir / "summary.json").read_text())["matmul"]["gflops"] == 50.0


def test_a_killed_kernel_is_reported_with_the_out_of_memory_fix(tmp_path):
    """The out-of-memory killer ends a kernel with SIGKILL; the report says what that usually means and the fix."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _write(notebooks / "01_oom.ipynb", new_code_cell("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)"))
    assert course.run_course(smoke=True, runs_dir=tmp_path / "runs", timeout_s=60, notebooks_dir=notebooks) == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    error = json.loads((run_dir / "summary.json").read_text())["notebooks"][0]["error"]
    assert error["ename"] == "DeadKernelError" and error["evalue"] == "Kernel died"
    assert "memory runs out" in error["hint"] and "--smoke --only 01" in error["hint"]
    assert "TROUBLESHOOTING.md" in error["hint"] and "memory runs out" in (run_dir / "index.html").read_text()


def test_competing_cpu_counts_our_reaped_children_as_ours():
    """A child's CPU time becomes ours once we wait for it: the notebook's kernel must not count as competition. The
    child spins for a fixed amount of CPU time (not wall time), so a busy machine cannot change what it used."""
    import subprocess
    import sys

    spin = [sys.executable, "-c", "import time\nwhile time.process_time() < 0.5: pass"]
    competing = course.CompetingCpu()
    before = competing._ours_s()
    subprocess.run(spin, check=True)
    assert competing._ours_s() - before >= 0.45


def test_competing_cpu_is_the_machine_busy_time_minus_ours(monkeypatch):
    busy, ours, clock = iter([100.0, 130.0]), iter([10.0, 25.0]), iter([0.0, 10.0])
    monkeypatch.setattr(course.time, "perf_counter", lambda: next(clock))
    competing = course.CompetingCpu()
    monkeypatch.setattr(competing, "_busy_s", lambda: next(busy))
    monkeypatch.setattr(competing, "_ours_s", lambda: next(ours))
    with competing:
        pass
    assert competing.cores == 1.5  # (30 s busy - 15 s ours) over 10 s
