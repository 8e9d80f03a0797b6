"""TROUBLESHOOTING.md quotes what the course really prints: each message the Makefile, utils.assets, the course
runner and make doctor produce for a known failure is regenerated here (the failure simulated) and must appear in
the page word for word, with its fix. Every entry says the message, why, and the fix."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from utils import assets, course, doctor

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "TROUBLESHOOTING.md").read_text(encoding="utf-8")
SECTIONS = dict(re.findall(r"^## ([^\n]+)\n(.*?)(?=^## |\Z)", PAGE, re.MULTILINE | re.DOTALL))
REQUIRED = [
    "Wrong Python version",
    "Missing C compiler or Python headers",
    "pip downloads several GB of CUDA libraries",
    "ModuleNotFoundError: No module named 'utils'",
    "An asset is missing or corrupt",
    "The training program refuses its data (exit 2)",
    "The kernel appears to have died (out of memory)",
    "The port is already in use for make lab",
    "A very slow CPU",
    "Proxy or TLS failure while fetching packages",
]
needs_make = pytest.mark.skipif(shutil.which("make") is None or os.name == "nt", reason="needs make and a POSIX shell")


def _quoted(text: str) -> None:
    for line in text.strip().splitlines():
        assert line.rstrip() in PAGE, f"TROUBLESHOOTING.md does not quote: {line}"


def test_every_issue_has_an_entry_with_the_message_why_and_fix():
    assert list(SECTIONS) == REQUIRED
    for title, body in SECTIONS.items():
        assert "```text" in body and "**Why.**" in body and "**Fix.**" in body, title


def _fake_python(tmp_path: Path, version: tuple[int, int, int]) -> Path:
    script = tmp_path / "python3.11"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        f"\"import sys; sys.version_info = {(*version, 'final', 0)!r}; sys.executable = '/usr/bin/python3.11'; "
        f'exec(sys.argv[1])" "$2"\n'
    )
    script.chmod(0o755)
    return script


def _make(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`make` in another folder, as a learner runs it (not as a sub-make of `make test` or `make canary`)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", *args], cwd=cwd, capture_output=True, text=True, env=env)


@needs_make
def test_wrong_python_message_is_the_makefiles(tmp_path):
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path)
    result = _make(["setup", f"PYTHON={_fake_python(tmp_path, (3, 11, 2))}"], tmp_path)
    assert result.returncode != 0 and not (tmp_path / ".venv").exists()
    _quoted("\n".join(line for line in result.stderr.splitlines() if not re.match(r"make(\[\d+\])?: ", line)))


@needs_make
def test_a_failed_pip_install_prints_the_makefiles_hint(tmp_path):
    """pip failing (any of: no compiler, no headers, proxy, TLS, Python too old) ends with the hint to this page."""
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path)
    venv_python = tmp_path / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("#!/bin/sh\necho \"$@\" >> calls.log\necho 'ERROR: Failed building wheel' >&2\nexit 1\n")
    venv_python.chmod(0o755)
    result = _make([".venv/.installed", "TORCH_INDEX=https://download.pytorch.org/whl/cpu"], tmp_path)
    assert result.returncode != 0 and not (tmp_path / ".venv" / ".installed").exists()
    hint = [line for line in result.stderr.splitlines() if line.startswith("pip could not install")]
    assert hint and "TROUBLESHOOTING.md" in hint[0]
    _quoted(hint[0])
    # TORCH_INDEX: the pinned torch from that index is what pip is asked for first.
    first = (tmp_path / "calls.log").read_text().splitlines()[0]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in first


def test_asset_messages_are_the_ones_utils_assets_raises(tmp_path, monkeypatch):
    """Missing (smollm2), truncated (minilm), changed in place (shakespeare) and cached by an older course (the
    manifest without per-file hashes, as a cache from before verify-on-load has)."""
    monkeypatch.setenv("COURSE_CACHE", str(tmp_path / "cache"))
    original = b"{}"
    for name, content in (("minilm", b"{"), ("shakespeare", b"[]")):
        folder = tmp_path / "cache" / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_bytes(content)
        entry = {"bytes": len(original), "sha256": hashlib.sha256(original).hexdigest()}
        (folder / ".complete.json").write_text(json.dumps({"files": {"config.json": entry}}))
    older = tmp_path / "cache" / "older" / "minilm"
    for name in ("smollm2", "minilm", "shakespeare"):
        with pytest.raises(assets.AssetError) as raised:
            assets.verify(name)
        _quoted(f"utils.assets.AssetError: {raised.value}".replace(str(tmp_path / "cache"), "data/cache"))
    older.mkdir(parents=True)
    (older / ".complete.json").write_text(json.dumps({"files": {"config.json": 2}}))
    monkeypatch.setenv("COURSE_CACHE", str(older.parent))
    with pytest.raises(assets.AssetError) as raised:
        assets.verify("minilm")
    _quoted(f"utils.assets.AssetError: {raised.value}")


def test_dead_kernel_hint_is_the_runners(monkeypatch):
    import psutil

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"total": 25.3e9})())
    _quoted(course.dead_kernel_hint(54e6, "01_oom.ipynb"))
    assert "'The kernel appears to have died'" in course.dead_kernel_hint(1, "01") and any(
        title.startswith("The kernel appears to have died") for title in SECTIONS
    )


def test_doctor_lines_are_the_doctors(monkeypatch):
    probe = {
        "torch": "2.13.0",
        "torch_cuda": "13.0",
        "cuda_available": False,
        "threads": 2,
        "matmul": {"size": 1024, "gflops": 9.0},
    }
    timings = {
        "reference": {"cores": 2, "matmul_gflops": 88.0},
        "notebooks": {
            "00_course_tour.ipynb": {"wall_s": 330.0, "peak_rss_mb": 1.0},
            "01_foundation_models.ipynb": {"wall_s": 1300.0, "peak_rss_mb": 1.0},
        },
    }
    monkeypatch.setattr(doctor, "port_is_free", lambda port, host="127.0.0.1": port != 8888)
    checks = [doctor.check_torch_build(probe), doctor.check_lab_port(8888), doctor.check_speed(probe, timings)]
    _quoted("\n".join(doctor.render(checks).splitlines()[:-1]))
