"""`make doctor`: each check says ok when things are fine and, with each failure simulated, says warning or problem
with the command that fixes it; the exit status is non-zero on a problem; it runs before setup on a bare Python."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from utils import doctor

ROOT = Path(__file__).resolve().parents[1]
BASE_PYTHON = getattr(sys, "_base_executable", sys.executable)  # the interpreter .venv was made from: no course
TIMINGS = {
    "reference": {"cores": 2, "matmul_size": 1024, "matmul_gflops": 100.0},
    "notebooks": {
        "00_course_tour.ipynb": {"wall_s": 30.0, "peak_rss_mb": 1200.0, "matmul_gflops": 100.0},
        "01_foundation_models.ipynb": {"wall_s": 300.0, "peak_rss_mb": 3000.0, "matmul_gflops": 100.0},
    },
}
PROBE = {
    "torch": "2.13.0+cpu",
    "torch_cuda": None,
    "cuda_available": False,
    "fast_bf16": False,
    "threads": 2,
    "kernels": {},
    "matmul": {"size": 1024, "gflops": 100.0},
}


def makefile_python_check() -> str:
    """The Python code of the Makefile's interpreter check (the `-c '...'` of the .venv/bin/python rule)."""
    rule = (ROOT / "Makefile").read_text().split("$(BIN)/python:", 1)[1]
    return re.search(r"-c '(.*?)'\n", rule, re.DOTALL).group(1).replace("\\\n\t", "\n")


def fake_python(tmp_path: Path, version: tuple[int, int, int]) -> Path:
    """An executable that runs `-c CODE` with the real interpreter but reports `version` as sys.version_info."""
    script = tmp_path / f"python{'.'.join(map(str, version))}"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        f'"import sys; sys.version_info = {(*version, "final", 0)!r}; exec(sys.argv[1])" "$2"\n'
    )
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("version", [(3, 10, 14), (3, 11, 2), (3, 11, 5), (3, 12, 9), (3, 13, 1)])
def test_makefile_and_doctor_accept_the_same_pythons_as_pyproject(tmp_path, version):
    result = subprocess.run(
        [fake_python(tmp_path, version), "-c", makefile_python_check()], capture_output=True, text=True
    )
    allowed = doctor.version_allowed(version, doctor.requires_python())
    assert (result.returncode == 0) == allowed == ((3, 11, 5) <= version < (3, 13))
    if not allowed:
        shown = ".".join(map(str, version))
        assert f"is {shown}." in result.stderr and "make PYTHON=/path/to/python3.11 setup" in result.stderr


@pytest.mark.skipif(shutil.which("make") is None or os.name == "nt", reason="needs make and a POSIX shell")
def test_make_setup_with_an_old_python_stops_with_the_fix_and_creates_nothing(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    old = fake_python(tmp_path, (3, 11, 2))  # Debian 12's python3.11
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # not a sub-make
    result = subprocess.run(
        ["make", ".venv/bin/python", f"PYTHON={old}"], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and not (tmp_path / ".venv").exists()
    assert "The course needs Python 3.11.5-3.12" in result.stderr and "is 3.11.2." in result.stderr
    assert "Fix: install Python 3.11" in result.stderr


def test_python_check_names_the_version_and_how_to_get_a_good_one():
    facts = {"version": [3, 10, 14], "executable": "/usr/bin/python3"}
    check = doctor.check_python("/usr/bin/python3", facts, in_venv=False)
    assert check.status == doctor.PROBLEM and "3.10.14" in check.detail and "3.11.5-3.12" in check.detail
    assert "make PYTHON=/path/to/python3.11 setup" in check.fix
    assert doctor.check_python("python3", {**facts, "version": [3, 11, 9]}, in_venv=False).status == doctor.OK
    assert doctor.check_python("/nonexistent/python", None, in_venv=False).status == doctor.PROBLEM
    assert "rm -rf .venv" in doctor.check_python("x", facts, in_venv=True).fix


def test_missing_compiler_is_a_problem_with_the_install_command(monkeypatch):
    monkeypatch.setattr(doctor, "find_compiler", lambda: None)
    monkeypatch.setattr(doctor.platform, "system", lambda: "Linux")
    check = doctor.check_compiler({"version": [3, 11, 7], "include": "x", "platinclude": "x"})
    assert check.status == doctor.PROBLEM and "sudo apt install build-essential python3.11-dev" in check.fix


@pytest.mark.skipif(doctor.find_compiler() is None, reason="no C compiler here")
def test_missing_python_headers_are_found_by_compiling(tmp_path):
    facts = doctor.interpreter_facts(sys.executable)
    assert doctor.check_compiler(facts).status == doctor.OK
    headless = {**facts, "include": str(tmp_path), "platinclude": str(tmp_path)}  # a folder without Python.h
    check = doctor.check_compiler(headless)
    assert check.status == doctor.PROBLEM and "Python.h" in check.detail and "-dev" in check.fix


def test_low_disk_is_a_problem(monkeypatch):
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100e9, 99e9, 3e9))
    assert doctor.check_disk(ROOT, venv_exists=True).status == doctor.OK
    check = doctor.check_disk(ROOT, venv_exists=False)
    assert check.status == doctor.PROBLEM and "3.0 GB free" in check.detail and "pip cache purge" in check.fix


def test_memory_is_compared_with_the_heaviest_notebook(monkeypatch):
    monkeypatch.setattr(doctor, "memory_gb", lambda: (32.0, 20.0))
    assert doctor.check_memory(TIMINGS).status == doctor.OK
    monkeypatch.setattr(doctor, "memory_gb", lambda: (32.0, 2.0))
    busy = doctor.check_memory(TIMINGS)
    assert busy.status == doctor.WARNING and "notebook, 01, peaked at 3.0 GB" in busy.detail
    assert "close other programs" in busy.fix
    monkeypatch.setattr(doctor, "memory_gb", lambda: (2.0, 1.5))
    small = doctor.check_memory(TIMINGS)
    assert small.status == doctor.PROBLEM and "COURSE_SMOKE=1 make lab" in small.fix


def test_memory_reading_without_psutil_uses_the_system():
    total, available = doctor.memory_gb()
    assert total > 0.5 and 0 < available <= total


def test_bf16_is_reported_either_way():
    assert "native bf16" in doctor.check_bf16({**PROBE, "fast_bf16": True}).detail
    check = doctor.check_bf16(PROBE)
    assert check.status == doctor.OK and "uses fp32" in check.detail


def test_missing_and_corrupt_assets_are_problems_with_the_fix_utils_assets_prints(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path))
    missing = doctor.check_assets()
    assert missing.status == doctor.PROBLEM and "python -m utils.assets fetch smollm2" in missing.fix
    folder = tmp_path / "minilm"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / ".complete.json").write_text(json.dumps({"files": {"config.json": 999}}))  # recorded size differs
    corrupt = doctor.check_assets()
    assert "fetch minilm --force" in corrupt.fix


def test_assets_in_this_checkout_verify():
    assert doctor.check_assets().status == doctor.OK


def test_kernel_missing_is_a_warning_and_one_without_the_course_a_problem():
    check = doctor.check_kernels(PROBE)[0]
    assert check.status == doctor.WARNING and "ipykernel install --user --name pretrain-course" in check.fix
    stale = {**PROBE, "kernels": {"pretrain-course": {"argv0": BASE_PYTHON, "display_name": "x", "dir": "d"}}}
    (check,) = doctor.check_kernels(stale)
    assert check.status == doctor.PROBLEM and "No module named 'utils'" in check.detail
    shadowed = {**PROBE, "kernels": {"python3": {"argv0": BASE_PYTHON, "display_name": "Python 3", "dir": "/u"}}}
    problem = doctor.check_kernels(shadowed)[1]
    assert problem.status == doctor.PROBLEM and "jupyter kernelspec remove python3" in problem.fix
    good = {**PROBE, "kernels": {"pretrain-course": {"argv0": sys.executable, "display_name": "x", "dir": "d"}}}
    assert [c.status for c in doctor.check_kernels(good)] == [doctor.OK]


def test_cuda_torch_without_a_gpu_is_a_warning_with_the_cpu_index():
    assert doctor.check_torch_build(PROBE) is None
    check = doctor.check_torch_build({**PROBE, "torch": "2.13.0", "torch_cuda": "12.8"})
    assert check.status == doctor.WARNING and "make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu" in check.fix


def test_loopback_failure_is_a_problem(monkeypatch):
    assert doctor.check_loopback().status == doctor.OK

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(doctor.socket, "create_connection", refuse)
    check = doctor.check_loopback()
    assert check.status == doctor.PROBLEM and "Connection refused" in check.detail and "ip link set lo up" in check.fix


def test_a_taken_lab_port_is_a_warning_naming_a_free_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        check = doctor.check_lab_port(port)
    assert check.status == doctor.WARNING and f"port {port} is in use" in check.detail
    assert "make lab LAB_PORT=" in check.fix and f"jupyter server stop {port}" in check.fix


def test_speed_scales_the_recorded_times_and_warns_on_a_very_slow_cpu():
    same = doctor.check_speed(PROBE, TIMINGS)
    assert same.status == doctor.OK and "recorded times: about 6 min in all" in same.detail
    assert "the slowest, 01, about 5 min" in same.detail
    slow = doctor.check_speed({**PROBE, "matmul": {"size": 1024, "gflops": 10.0}}, TIMINGS)
    assert slow.status == doctor.WARNING and "10.0x slower" in slow.detail and "about 55 min in all" in slow.detail
    assert "COURSE_SMOKE=1 make lab" in slow.fix
    assert doctor.check_speed(PROBE, None).status == doctor.OK


def test_exit_status_is_one_exactly_when_a_check_says_problem(monkeypatch, capsys):
    monkeypatch.setattr(doctor, "run_checks", lambda *a, **k: [doctor.Check("disk", doctor.WARNING, "low", "x")])
    assert doctor.main([]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == ["warning  disk      low", f"{'':18} fix: x"]
    monkeypatch.setattr(doctor, "run_checks", lambda *a, **k: [doctor.Check("disk", doctor.PROBLEM, "full", "rm")])
    assert doctor.main(["--json"]) == 1
    (row,) = json.loads(capsys.readouterr().out)
    assert row == {"name": "disk", "status": "problem", "detail": "full", "fix": "rm"}


def test_before_setup_it_runs_on_a_bare_python_and_says_make_setup(tmp_path):
    """No .venv, no psutil, no torch: the stdlib checks run and the rest waits for `make setup`."""
    result = subprocess.run(
        [BASE_PYTHON, "-m", "utils.doctor", "--venv", str(tmp_path / "none"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "warning  setup     no .venv yet" in result.stdout and "fix: make setup" in result.stdout, result.stderr
    assert "python " in result.stdout and "loopback" in result.stdout
    assert result.returncode == (1 if "problem  " in result.stdout else 0)
