"""Carry a default-size run's measured times and peak memory into the course: the data file `make doctor` scales
from, the README's course table, and the first cell of each notebook.

    .venv/bin/python tools/course_timings.py record runs/<timestamp>/summary.json   # into data/course_timings.json
    .venv/bin/python tools/course_timings.py readme                                 # README.md's course table
    .venv/bin/python tools/course_timings.py notebooks [--only 00,03]               # each notebook's first cell

`record` keeps notebooks the run did not include (so `utils.course run --only 10` then `record` updates chapter 10
alone) and stores, with each notebook, the matrix-multiply throughput measured at the start of its run, so times
from different runs scale correctly. Only default-size runs and passed notebooks are accepted. The other two
commands rewrite only the lines they own: the "time and memory" column of the README table and the line starting
with `**Runs in:**` in each notebook's first cell (inserted after the "Book chapter" line the first time).

Times measured while other work competed for the CPUs (other programs kept more than a quarter of a core busy
during the notebook, as the runner measures it; for older records, the 15-minute load average above the core count)
stay in the data file, where `make doctor` flags them, but `readme` and `notebooks` leave them out unless
`--allow-busy`: a reader should not be told a notebook takes three times longer than it does.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

import nbformat

from utils.course import format_memory
from utils.doctor import format_duration, timed_on_a_busy_machine

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "data" / "course_timings.json"
README = ROOT / "README.md"
NOTEBOOKS = ROOT / "notebooks"
RUNS_IN = "**Runs in:**"
TABLE_COLUMN = "default size: time, memory"


def describe(reference: dict[str, Any]) -> str:
    """'a 2-core CPU' from the recorded machine facts."""
    cores = reference.get("cores")
    return f"a {cores}-core CPU" if cores else "the reference CPU"


def record(summary_path: Path, timings_path: Path = TIMINGS) -> dict[str, Any]:
    """Merge a default-size run's passed notebooks into the timings file; return what was written."""
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("mode") != "default":
        raise SystemExit(f"{summary_path} is a {summary.get('mode')!r} run; record a default-size run (no --smoke)")
    matmul = summary.get("matmul")
    if not matmul or not matmul.get("gflops"):
        raise SystemExit(f"{summary_path} has no matmul throughput; rerun with the current utils.course")
    machine = summary.get("machine", {})
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.exists() else {"notebooks": {}}
    measured = date.fromisoformat(summary["run"][:10]).isoformat()
    timings["reference"] = {
        "cores": machine.get("logical_cores"),
        "cpu": machine.get("cpu"),
        "memory_gib": machine.get("memory_gib"),
        "matmul_size": matmul["size"],
        "matmul_gflops": round(matmul["gflops"], 1),
        "run": summary["run"],
        "load_average_at_end": summary.get("load_average_at_end"),
    }
    added = []
    for entry in summary["notebooks"]:
        if entry["status"] != "passed" or not entry.get("peak_rss_mb"):
            continue
        timings["notebooks"][entry["notebook"]] = {
            "wall_s": entry["wall_s"],
            "peak_rss_mb": entry["peak_rss_mb"],
            "matmul_gflops": round(matmul["gflops"], 1),
            "measured": measured,
            "load_average_15min": (summary.get("load_average_at_end") or [None] * 3)[2],
            "other_cpu_cores": entry.get("other_cpu_cores"),
        }
        added.append(entry["notebook"])
    if not added:
        raise SystemExit(f"{summary_path} has no passed notebook with a measured peak memory")
    timings["notebooks"] = dict(sorted(timings["notebooks"].items()))
    timings_path.write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    print(
        f"{timings_path.relative_to(ROOT) if timings_path.is_relative_to(ROOT) else timings_path}: "
        f"{', '.join(name[:2] for name in added)} from {summary['run']}"
    )
    return timings


def runs_in_line(entry: dict[str, Any], reference: dict[str, Any]) -> str:
    """The sentence a notebook's first cell carries, e.g. '**Runs in:** about 4 min and 1.2 GB of memory ...'."""
    return (
        f"{RUNS_IN} about {format_duration(entry['wall_s'])} and {format_memory(entry['peak_rss_mb'])} of memory at "
        f"default size on {describe(reference)} (measured {entry['measured']}; `make doctor` scales the time to your "
        "machine)."
    )


def with_runs_in(text: str, line: str) -> str:
    """The first cell's markdown with `line` replacing its Runs-in line, or inserted after the Book-chapter line
    (after the title when there is none)."""
    lines = text.split("\n")
    for i, existing in enumerate(lines):
        if existing.startswith(RUNS_IN):
            lines[i] = line
            return "\n".join(lines)
    anchor = next((i for i, existing in enumerate(lines) if existing.startswith("**Book chapter")), 0)
    lines[anchor + 1 : anchor + 1] = ["", line]
    return "\n".join(lines)


def publishable(timings: dict[str, Any], allow_busy: bool = False) -> dict[str, dict[str, Any]]:
    """The notebooks whose times may go into README.md and the notebooks; says which are held back and why."""
    kept = {}
    for name, entry in timings["notebooks"].items():
        cores = timings["reference"]["cores"]
        if timed_on_a_busy_machine(entry, cores) and not allow_busy:
            if entry.get("other_cpu_cores") is not None:
                why = f"other programs kept {entry['other_cpu_cores']} of {cores} cores busy"
            else:
                why = f"load {entry['load_average_15min']} on {cores} cores"
            print(
                f"{name}: left out, timed on a busy machine ({why}); rerun it when the machine is quiet, "
                "or pass --allow-busy"
            )
            continue
        kept[name] = entry
    return kept


def update_notebooks(
    timings: dict[str, Any], only: set[str] | None = None, notebooks_dir: Path = NOTEBOOKS, allow_busy: bool = False
) -> list[str]:
    """Write the Runs-in line into the first cell of every notebook the timings cover; return the names changed."""
    changed = []
    entries = publishable(timings, allow_busy)
    for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        entry = entries.get(path.name)
        if entry is None or (only and path.name[:2] not in only):
            continue
        notebook = nbformat.read(path, as_version=4)
        first = notebook.cells[0]
        updated = with_runs_in(first.source, runs_in_line(entry, timings["reference"]))
        if updated != first.source:
            first.source = updated
            nbformat.write(notebook, path)  # as utils.course writes notebooks, so the diff is the one line
            changed.append(path.name)
    return changed


def is_solution(name: str) -> bool:
    """Whether a recorded notebook is a chapter's exercise solutions (notebooks/solutions/NN_*_solutions.ipynb),
    which shares its chapter's number but not its row in the README's table."""
    return name.endswith("_solutions.ipynb")


def update_readme(timings: dict[str, Any], readme: Path = README, allow_busy: bool = False) -> bool:
    """Give the README's course table (header `| # | notebook |`) a time-and-memory column filled from the
    timings; planned chapters get "-". Return whether the file changed."""
    text = readme.read_text(encoding="utf-8")
    lines = text.split("\n")
    start = next((i for i, line in enumerate(lines) if line.startswith("| # | notebook |")), None)
    if start is None:
        raise SystemExit(f"{readme} has no course table (a line starting '| # | notebook |')")
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    has_column = TABLE_COLUMN in header
    chapters = {name: entry for name, entry in publishable(timings, allow_busy).items() if not is_solution(name)}
    by_number = {name[:2]: entry for name, entry in chapters.items()}
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    column = header.index(TABLE_COLUMN) if has_column else len(header) - 1  # before "status"
    rows = []
    for line in lines[start:end]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line is lines[start]:
            value = TABLE_COLUMN
        elif set(cells[0]) <= {"-"}:
            value = "---"
        else:
            entry = by_number.get(cells[0])
            value = f"{format_duration(entry['wall_s'])}, {format_memory(entry['peak_rss_mb'])}" if entry else "-"
        if has_column:
            cells[column] = value
        else:
            cells.insert(column, value)
        rows.append("| " + " | ".join(cells) + " |")
    rows[1] = rows[1].replace(" ", "")  # the |---|---| separator line, written compactly as before
    new_text = "\n".join([*lines[:start], *rows, *lines[end:]])
    if new_text != text:
        readme.write_text(new_text, encoding="utf-8")
    return new_text != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="merge a default-size run's summary.json into data/course_timings.json")
    rec.add_argument("summary", type=Path)
    readme = sub.add_parser("readme", help="fill the time-and-memory column of README.md's course table")
    nbs = sub.add_parser("notebooks", help="write the Runs-in line into each notebook's first cell")
    nbs.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03")
    for command in (readme, nbs):
        command.add_argument("--allow-busy", action="store_true", help="also times measured on a busy machine")
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.summary)
        return 0
    if not TIMINGS.exists():
        raise SystemExit(f"no {TIMINGS.relative_to(ROOT)} yet: run `tools/course_timings.py record <summary.json>`")
    timings = json.loads(TIMINGS.read_text(encoding="utf-8"))
    if args.command == "readme":
        print("README.md updated" if update_readme(timings, allow_busy=args.allow_busy) else "README.md unchanged")
    else:
        only = {part.strip().zfill(2) for part in args.only.split(",")} if args.only else None
        changed = update_notebooks(timings, only, allow_busy=args.allow_busy)
        print(f"updated: {', '.join(changed)}" if changed else "notebooks already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
