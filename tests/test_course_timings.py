"""tools/course_timings.py: a default-size run's times and peak memory reach the data file make doctor reads, the
README's course table and each notebook's first cell, rewriting only the lines the tool owns."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from utils import doctor

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("course_timings", ROOT / "tools" / "course_timings.py")
course_timings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(course_timings)


def _summary(tmp_path, mode="default", run="2026-11-23T10-00-00"):
    summary = {
        "run": run,
        "mode": mode,
        "machine": {"logical_cores": 2, "cpu": "Test CPU", "memory_gib": 23.4},
        "matmul": {"size": 1024, "gflops": 88.44},
        "notebooks": [
            {"notebook": "00_course_tour.ipynb", "status": "passed", "wall_s": 31.2, "peak_rss_mb": 1234.5},
            {"notebook": "01_foundation_models.ipynb", "status": "passed", "wall_s": 330.0, "peak_rss_mb": 2500.0},
            {"notebook": "02_use_case.ipynb", "status": "failed", "wall_s": 3.0, "peak_rss_mb": 400.0},
        ],
    }
    path = tmp_path / f"summary-{mode}-{run}.json"
    path.write_text(json.dumps(summary))
    return path


def test_record_merges_passed_notebooks_and_refuses_smoke_runs(tmp_path):
    target = tmp_path / "timings.json"
    timings = course_timings.record(_summary(tmp_path), target)
    assert set(timings["notebooks"]) == {"00_course_tour.ipynb", "01_foundation_models.ipynb"}  # 02 failed
    assert timings["reference"]["matmul_gflops"] == 88.4 and timings["reference"]["cores"] == 2
    assert timings["notebooks"]["00_course_tour.ipynb"] == {
        "wall_s": 31.2,
        "peak_rss_mb": 1234.5,
        "matmul_gflops": 88.4,
        "measured": "2026-11-23",
        "load_average_15min": None,
        "other_cpu_cores": None,
    }
    later = json.loads(_summary(tmp_path, run="2026-11-30T10-00-00").read_text())
    later["notebooks"] = later["notebooks"][:1]
    later["matmul"]["gflops"] = 44.0
    (tmp_path / "later.json").write_text(json.dumps(later))
    merged = course_timings.record(tmp_path / "later.json", target)
    assert merged["notebooks"]["00_course_tour.ipynb"]["matmul_gflops"] == 44.0
    assert merged["notebooks"]["01_foundation_models.ipynb"]["measured"] == "2026-11-23"  # kept
    with pytest.raises(SystemExit, match="record a default-size run"):
        course_timings.record(_summary(tmp_path, mode="smoke"), target)


def test_doctor_reads_what_record_writes(tmp_path):
    timings = course_timings.record(_summary(tmp_path), tmp_path / "timings.json")
    probe = {"threads": 2, "matmul": {"size": 1024, "gflops": 88.4}}
    assert "2 notebooks with recorded times: about 6 min in all" in doctor.check_speed(probe, timings).detail
    assert "01, peaked at 2.5 GB" in doctor.check_memory(timings).detail


def test_first_cell_gets_one_runs_in_line_after_the_book_chapter(tmp_path):
    timings = course_timings.record(_summary(tmp_path), tmp_path / "timings.json")
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    title = "# 00 · Tour\n\n**Book chapter:** none.\n\nWhat you will do."
    notebook = new_notebook(cells=[new_markdown_cell(title), new_code_cell("1")])
    nbformat.write(notebook, notebooks / "00_course_tour.ipynb")
    assert course_timings.update_notebooks(timings, notebooks_dir=notebooks) == ["00_course_tour.ipynb"]
    source = nbformat.read(notebooks / "00_course_tour.ipynb", as_version=4).cells[0].source
    assert source == (
        "# 00 · Tour\n\n**Book chapter:** none.\n\n**Runs in:** about 30 s and 1.2 GB of memory at default size on a "
        "2-core CPU (measured 2026-11-23; `make doctor` scales the time to your machine).\n\nWhat you will do."
    )
    timings["notebooks"]["00_course_tour.ipynb"]["wall_s"] = 240.0
    course_timings.update_notebooks(timings, notebooks_dir=notebooks)
    source = nbformat.read(notebooks / "00_course_tour.ipynb", as_version=4).cells[0].source
    assert source.count("**Runs in:**") == 1 and "about 4 min and 1.2 GB" in source
    assert course_timings.update_notebooks(timings, notebooks_dir=notebooks) == []  # nothing left to change


README = """# Course

## The course

| # | notebook | book chapter | status |
|---|---|---|---|
| 00 | [Course tour](notebooks/00_course_tour.ipynb) | - | ready |
| 01 | [Foundation models](notebooks/01_foundation_models.ipynb) | 1 | ready |
| 15 | Future trends in pretraining | 15 | planned |

Text after the table | with a pipe.
"""


def test_readme_table_gets_a_time_and_memory_column_planned_rows_a_dash(tmp_path):
    timings = course_timings.record(_summary(tmp_path), tmp_path / "timings.json")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert course_timings.update_readme(timings, readme)
    assert readme.read_text() == README.replace(
        "| # | notebook | book chapter | status |\n|---|---|---|---|",
        "| # | notebook | book chapter | default size: time, memory | status |\n|---|---|---|---|---|",
    ).replace("| - | ready |", "| - | 30 s, 1.2 GB | ready |").replace(
        "| 1 | ready |", "| 1 | 6 min, 2.5 GB | ready |"
    ).replace("| 15 | planned |", "| 15 | - | planned |")
    assert not course_timings.update_readme(timings, readme)  # idempotent
    real = tmp_path / "REAL.md"
    real.write_text((ROOT / "README.md").read_text())
    course_timings.update_readme(timings, real)  # the real table has the shape the tool expects
    assert "| default size: time, memory |" in real.read_text()


def test_times_from_a_busy_machine_stay_out_of_readme_and_notebooks_and_doctor_flags_them(tmp_path, capsys):
    summary = json.loads(_summary(tmp_path).read_text())
    summary["load_average_at_end"] = [11.7, 13.05, 12.68]  # 2 cores: other work was running
    (tmp_path / "busy.json").write_text(json.dumps(summary))
    timings = course_timings.record(tmp_path / "busy.json", tmp_path / "timings.json")
    assert timings["notebooks"]["00_course_tour.ipynb"]["load_average_15min"] == 12.68
    readme = tmp_path / "README.md"
    readme.write_text(README)
    course_timings.update_readme(timings, readme)
    assert "| 1 | - | ready |" in readme.read_text() and "left out, timed on a busy machine" in capsys.readouterr().out
    course_timings.update_readme(timings, readme, allow_busy=True)
    assert "| 1 | 6 min, 2.5 GB | ready |" in readme.read_text()
    probe = {"threads": 2, "matmul": {"size": 1024, "gflops": 88.4}}
    assert "rough: 00, 01 were timed while the reference machine was busy" in doctor.check_speed(probe, timings).detail


def test_competing_cpu_decides_busy_when_measured(tmp_path, capsys):
    """The runner's measure of other programs' CPU wins over the load average, which counts the notebook itself."""
    summary = json.loads(_summary(tmp_path).read_text())
    summary["load_average_at_end"] = [2.1, 2.2, 2.3]  # a 2-thread notebook alone keeps a 2-core machine at ~2
    summary["notebooks"][0]["other_cpu_cores"] = 0.04
    summary["notebooks"][1]["other_cpu_cores"] = 0.9
    (tmp_path / "s.json").write_text(json.dumps(summary))
    timings = course_timings.record(tmp_path / "s.json", tmp_path / "timings.json")
    kept = course_timings.publishable(timings)
    assert set(kept) == {"00_course_tour.ipynb"}
    assert "other programs kept 0.9 of 2 cores busy" in capsys.readouterr().out
    assert doctor.timed_on_a_busy_machine({"load_average_15min": 12.0}, 2)  # older records: the load average
    assert not doctor.timed_on_a_busy_machine({"load_average_15min": 12.0, "other_cpu_cores": 0.1}, 2)


def test_a_chapters_solutions_do_not_take_its_row_in_the_readme(tmp_path):
    summary = json.loads(_summary(tmp_path).read_text())
    solutions = dict(summary["notebooks"][0], notebook="00_course_tour_solutions.ipynb", wall_s=999.0)
    summary["notebooks"].append(solutions)  # recorded after the chapter, as `make course` runs it
    (tmp_path / "s.json").write_text(json.dumps(summary))
    timings = course_timings.record(tmp_path / "s.json", tmp_path / "timings.json")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    course_timings.update_readme(timings, readme)
    assert "| - | 30 s, 1.2 GB | ready |" in readme.read_text() and "17 min" not in readme.read_text()
