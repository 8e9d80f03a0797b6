"""The canary: what would break if the course's pins moved to the newest releases of its core libraries.

    make canary                      # or: .venv/bin/python tools/canary.py
    CANARY_TORCH=1 make canary       # let torch move too (see below)
    python tools/canary.py --reuse   # keep .venv-canary as it is, just rerun the tests

It builds a second virtual environment, `.venv-canary`, installs `requirements.txt` into it, upgrades the core
libraries (CORE below) to their newest releases, runs the unit tests and every notebook at smoke size in it, and
writes `runs/canary-<timestamp>/report.md` (and `report.json`): the versions that moved, whether pip could resolve
them together, and each test or notebook cell that fails. The exit status is 0 when the report was written, even if
tests failed: the canary informs, it does not block (CI runs it weekly with `continue-on-error`).

Torch is held at its pin by a constraint unless CANARY_TORCH=1 (or --torch newest): on Linux, PyPI's newest
torch is a CUDA build of several GB with its nvidia-* packages, and pip would fetch it for every run. With
CANARY_TORCH=1 pip takes the newest torch it can reach: on a CPU-only machine point pip at PyTorch's CPU index
first (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu) where it is reachable. A library whose newest
release needs a newer torch shows up as a resolution failure in the report, which is itself the answer.

Standard library only; run it with any Python 3.11+, it creates the canary environment with `--python`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CORE = ("torch", "transformers", "datasets", "accelerate", "diffusers", "peft", "trl", "sagemaker", "mlflow", "optuna")
#: This test compares the installed environment with the lock; in the canary it fails by design.
EXPECTED_TO_FAIL = ("tests/test_requirements.py::test_installed_environment_matches_the_lock",)
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def pinned_versions(requirements: Path = ROOT / "requirements.txt") -> dict[str, str]:
    """{lower-case name: pinned version} of every `name==version` line."""
    pins = {}
    for line in requirements.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s#]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> int:
    """Run a command with its output appended to `log`; return its exit status."""
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n$ {' '.join(cmd)}\n")
        handle.flush()
        started = time.monotonic()
        status = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode
        handle.write(f"[exit {status} after {time.monotonic() - started:.0f} s]\n")
    return status


def installed_versions(python: Path) -> dict[str, str]:
    """{lower-case name: version} of what pip lists in an environment."""
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True)
    return {row["name"].lower(): row["version"] for row in json.loads(out.stdout or "[]")}


def junit_failures(path: Path) -> tuple[int, list[dict[str, str]]]:
    """(tests run, failures and errors as {test, message}) from a pytest --junitxml file."""
    if not path.exists():
        return 0, [{"test": path.name, "message": "no results: pytest did not run to the end (see the log)"}]
    root = ET.parse(path).getroot()
    cases = root.iter("testcase")
    total, failures = 0, []
    for case in cases:
        total += 1
        for problem in [*case.findall("failure"), *case.findall("error")]:
            name = f"{case.get('classname', '').replace('.', '/')}::{case.get('name')}"
            message = (problem.get("message") or problem.text or "").strip().splitlines()
            failures.append({"test": name, "message": (message[0] if message else "")[:300]})
    return total, failures


def write_report(out: Path, facts: dict[str, Any]) -> Path:
    """report.json with every fact and report.md, the short version for people."""
    (out / "report.json").write_text(json.dumps(facts, indent=2), encoding="utf-8")
    lines = [
        f"# Canary {out.name}",
        "",
        f"torch: {facts['torch_policy']}",
        "",
        "| library | pinned | canary |",
        "|---|---|---|",
    ]
    for name, (pinned, newest) in facts["versions"].items():
        moved = "" if pinned == newest.split("+")[0] else " (moved)"
        lines.append(f"| {name} | {pinned} | {newest}{moved} |")
    lines += ["", f"Install: {facts['install']}", ""]
    for part in ("unit", "notebooks"):
        result = facts.get(part)
        if not result:
            lines.append(f"{part}: not run")
            continue
        lines.append(f"{part}: {result['total']} run, {len(result['failures'])} failed")
        lines += [f"- `{f['test']}`: {f['message']}" for f in result["failures"]]
    verdict = facts["verdict"]
    lines += ["", f"**Verdict:** {verdict}", "", f"Full log: {facts['log']}"]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "report.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the Python that creates .venv-canary")
    parser.add_argument("--venv", type=Path, default=ROOT / ".venv-canary")
    parser.add_argument(
        "--torch",
        choices=("pin", "newest"),
        default="newest" if os.environ.get("CANARY_TORCH") == "1" else "pin",
        help="hold torch at its pin (default) or let it move (CANARY_TORCH=1)",
    )
    parser.add_argument(
        "--torch-index",
        default=os.environ.get("TORCH_INDEX", ""),
        help="install the pinned torch from this index first (as make setup TORCH_INDEX=... does)",
    )
    parser.add_argument("--reuse", action="store_true", help="do not install; rerun the tests in .venv-canary")
    parser.add_argument("--skip-notebooks", action="store_true", help="unit tests only")
    args = parser.parse_args(argv)

    out = ROOT / "runs" / f"canary-{datetime.now().strftime('%Y-%m-%dT%H-%M-%S')}"
    out.mkdir(parents=True)
    log = out / "canary.log"
    python = args.venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pins = pinned_versions()
    upgrade = [name for name in CORE if args.torch == "newest" or name != "torch"]
    facts: dict[str, Any] = {
        "torch_policy": f"held at the pin {pins['torch']}" if args.torch == "pin" else "newest release pip can reach",
        "log": str(log.relative_to(ROOT)),
    }
    print(f"canary: {out.relative_to(ROOT)} (log: {log.name}); torch {facts['torch_policy']}", flush=True)
    install_ok = True
    if not args.reuse:
        steps = []
        if not python.exists():
            steps.append([args.python, "-m", "venv", str(args.venv)])
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        if args.torch_index and args.torch == "pin":
            steps.append([*pip, f"torch=={pins['torch']}", "--index-url", args.torch_index])
        steps.append([*pip, "-r", str(ROOT / "requirements.txt")])
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write(f"torch=={pins['torch']}\n" if args.torch == "pin" else "")
        steps.append([*pip, "--upgrade", "-c", constraints.name, *upgrade])
        steps.append([*pip, "--no-deps", "-e", str(ROOT)])
        for step in steps:
            print(f"canary: {' '.join(step[2:6])} ...", flush=True)
            if run(step, log) != 0:
                install_ok = False
                tail = log.read_text(encoding="utf-8").strip().splitlines()[-8:]
                facts["install"] = "failed: " + " / ".join(line.strip() for line in tail if line.strip())
                break
        os.unlink(constraints.name)
    facts.setdefault("install", "resolved and installed" if install_ok else "failed")
    versions = installed_versions(python) if python.exists() else {}
    facts["versions"] = {name: (pins.get(name, "-"), versions.get(name, "not installed")) for name in CORE}

    if install_ok:
        env = {**os.environ, **OFFLINE_ENV, "VIRTUAL_ENV": str(args.venv)}
        deselect = [arg for test in EXPECTED_TO_FAIL for arg in ("--deselect", test)]
        print("canary: unit tests ...", flush=True)
        run([str(python), "-m", "pytest", "tests", "-q", *deselect, f"--junitxml={out / 'unit.xml'}"], log, env)
        total, failures = junit_failures(out / "unit.xml")
        facts["unit"] = {"total": total, "failures": failures}
        if not args.skip_notebooks:
            print("canary: notebooks at smoke size ...", flush=True)
            nb_env = {**env, "COURSE_SMOKE": "1", "IPYTHONDIR": str(ROOT / "tests" / "ipython")}
            cmd = [
                str(python),
                "-m",
                "pytest",
                "--nbval-lax",
                "--nbval-current-env",
                "--nbval-cell-timeout=600",
                "notebooks",
                "-q",
                f"--junitxml={out / 'notebooks.xml'}",
            ]
            run(cmd, log, nb_env)
            total, failures = junit_failures(out / "notebooks.xml")
            facts["notebooks"] = {"total": total, "failures": failures}
    broken = [f for part in ("unit", "notebooks") for f in facts.get(part, {}).get("failures", [])]
    moved = [name for name, (pinned, now) in facts["versions"].items() if pinned != now.split("+")[0]]
    if not install_ok:
        facts["verdict"] = "the newest core libraries do not install together with the other pins (see Install)"
    elif broken:
        facts["verdict"] = f"moving the pins ({', '.join(moved) or 'nothing moved'}) breaks {len(broken)} test(s)"
    else:
        facts["verdict"] = f"the pins could move ({', '.join(moved) or 'nothing moved'}): every test passes"
    report = write_report(out, facts)
    print(report.read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
