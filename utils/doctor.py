"""Will the course run here, and how long will it take? `make doctor` (`python -m utils.doctor`).

    python -m utils.doctor                     # every check; exit status 1 if any says "problem"
    python -m utils.doctor --quick             # skip the matrix-multiply measurement (about 2 s)
    python -m utils.doctor --json              # the same checks as JSON, for scripts and CI

Each line says `ok`, `warning` (the course runs, with a caveat) or `problem` (something will fail), and every
warning and problem names the command that fixes it. The checks: the Python version against the range the pins
install on (`requires-python` in pyproject.toml), a C compiler that can build against the Python headers, free
disk, memory and cores against the peak memory the notebooks were measured to need, whether the CPU has native
bf16 matrix instructions, the offline assets present and verified, the course kernel registered and able to import
`utils`, loopback sockets (kernels and tests talk over them), a free port for `make lab`, and this machine's
matrix-multiply throughput, which scales the recorded notebook times (`data/course_timings.json`) to this machine.

It needs only the standard library and its one `utils` dependency, `utils.assets` (itself standard library only),
so it runs before `make setup` with any Python 3.8 or newer, e.g. the system `python3`. Checks that need the
course's virtual environment (torch, jupyter) run inside `.venv/bin/python` as a subprocess; before setup they say
"run `make setup` first". Defined for the course's README and TROUBLESHOOTING.md (issue 22).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from utils import assets

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv"
TIMINGS_FILE = ROOT / "data" / "course_timings.json"
COURSE_KERNEL = "pretrain-course"
COURSE_KERNEL_DISPLAY = "Python (pretrain course)"
LAB_PORT = 8888  # JupyterLab's default; `make lab LAB_PORT=...` changes it
OK, WARNING, PROBLEM = "ok", "warning", "problem"

#: Disk the course needs, in GB. Measured on the reference machine (2026-11-28, Linux, Python 3.11): `.venv` with the
#: CPU build of torch 2.8 GB, the unpacked assets 0.7 GB (`du -sh .venv data/cache`). With Linux's default CUDA
#: build of torch, its wheels alone are 2.8 GB to download (torch 2.14.1 and its nvidia-* set) and several GB more
#: once installed; pip keeps a cache of what it downloads; runs/ and outputs stay under 1 GB.
DISK_SETUP_GB = 10.0
DISK_AFTER_SETUP_GB = 2.0

#: A machine whose matrix multiplies run this many times slower than the reference machine's gets a warning.
SLOW_CPU_FACTOR = 3.0
#: A notebook's recorded time is "rough" when other programs kept more than this many cores busy while it ran (the
#: runner's `other_cpu_cores`): a quarter of a core steals about 12% of a 2-core machine. Our choice, not a standard.
BUSY_OTHER_CORES = 0.25
SETUP_FIX = "make setup"
NOT_PROBED = "not checked: the course's virtual environment could not be probed (see the setup line)"

#: Run by `.venv/bin/python` in a subprocess (this module may run on a Python without torch): what only torch,
#: jupyter_client and utils.machine, installed in the course's environment, can tell.
PROBE = r"""
import importlib, json, sys
import torch
from jupyter_client.kernelspec import KernelSpecManager
machine = importlib.import_module("utils.machine")  # the course's, as installed in .venv
has_fast_cpu_bf16, measure_matmul_throughput = machine.has_fast_cpu_bf16, machine.measure_matmul_throughput
size = int(sys.argv[1])
out = {
    "python": list(sys.version_info[:3]),
    "torch": torch.__version__,
    "torch_cuda": torch.version.cuda,
    "cuda_available": torch.cuda.is_available(),
    "fast_bf16": has_fast_cpu_bf16(),
    "threads": torch.get_num_threads(),
    "kernels": {
        name: {"argv0": spec["spec"]["argv"][0], "display_name": spec["spec"]["display_name"],
               "dir": spec["resource_dir"]}
        for name, spec in KernelSpecManager().get_all_specs().items()
    },
}
# jupyter_client starts a spec whose command is a bare "python" with the server's own interpreter.
bare = {"python", "python%i" % sys.version_info[0], "python%i.%i" % sys.version_info[:2]}
for kernel in out["kernels"].values():
    if kernel["argv0"] in bare:
        kernel["argv0"] = sys.executable
if size:
    out["matmul"] = measure_matmul_throughput(size, min_run_time=1.0)
print(json.dumps(out))
"""


@dataclass
class Check:
    """One line of the report: what was checked, the verdict, what was found, and the command that fixes it."""

    name: str
    status: str  # OK, WARNING or PROBLEM
    detail: str
    fix: str = ""


# ------------------------------------------------------------------------------------------------ facts to check


def requires_python(pyproject: Path = ROOT / "pyproject.toml") -> list[tuple[str, tuple[int, ...]]]:
    """The clauses of pyproject.toml's `requires-python`, e.g. [(">=", (3, 11, 5)), ("<", (3, 13))]."""
    match = re.search(r'^requires-python\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise ValueError(f"{pyproject} has no requires-python line")
    clauses = []
    for part in match.group(1).split(","):
        op, version = re.fullmatch(r"\s*(>=|<=|==|!=|<|>)\s*([\d.]+)\s*", part).groups()  # type: ignore[union-attr]
        clauses.append((op, tuple(int(x) for x in version.split("."))))
    return clauses


def version_allowed(version: tuple[int, ...], clauses: list[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether a Python version satisfies every clause (versions compared padded with zeros, as PEP 440 does)."""

    def pad(v: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(v) + (0,) * (3 - len(v))

    compare = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        ">": lambda a, b: a > b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
    }
    return all(compare[op](pad(version), pad(bound)) for op, bound in clauses)


def describe_range(clauses: list[tuple[str, tuple[int, ...]]]) -> str:
    """'3.11.5-3.12' for >=3.11.5,<3.13: the range as a person says it."""
    low = next((b for op, b in clauses if op == ">="), None)
    high = next((b for op, b in clauses if op == "<"), None)
    if low and high and len(high) >= 2:
        return f"{'.'.join(map(str, low))}-{high[0]}.{high[1] - 1}"
    return ",".join(op + ".".join(map(str, b)) for op, b in clauses)


def interpreter_facts(python: str) -> dict[str, Any] | None:
    """Version, executable and header folders of another Python interpreter; None if it cannot be run."""
    code = (
        "import json, sys, sysconfig; "
        "print(json.dumps({'version': list(sys.version_info[:3]), 'executable': sys.executable, "
        "'include': sysconfig.get_paths().get('include'), 'platinclude': sysconfig.get_paths().get('platinclude')}))"
    )
    try:
        result = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return json.loads(result.stdout)


def find_compiler() -> str | None:
    """The C compiler pip and torch.compile would use: `$CC`, else cc, gcc or clang on the PATH."""
    candidates = [os.environ["CC"].split()[0]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def compiles_against_headers(compiler: str, include_dirs: list[str]) -> tuple[bool, str]:
    """Whether `#include <Python.h>` compiles (syntax only) with these include folders; (ok, compiler's message)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "probe.c"
        source.write_text("#include <Python.h>\nint main(void) { return Py_IsInitialized(); }\n")
        cmd = [compiler, "-fsyntax-only", *[f"-I{d}" for d in include_dirs if d], str(source)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as err:
            return False, str(err)
    message = (result.stderr or result.stdout).strip().splitlines()
    return result.returncode == 0, message[0] if message else ""


def memory_gb() -> tuple[float, float]:
    """(total, available) physical memory in GB (1e9 bytes): psutil when installed, else /proc/meminfo, else
    sysconf (which knows no "available", so total is returned for both)."""
    try:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total / 1e9, vm.available / 1e9
    except ImportError:
        pass
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        kib = {key: int(value.split()[0]) for key, value in fields.items()}
        return kib["MemTotal"] * 1024 / 1e9, kib.get("MemAvailable", kib["MemTotal"]) * 1024 / 1e9
    except (OSError, KeyError, ValueError):
        pass
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return total, total


def loopback_roundtrip(payload: bytes = b"course-doctor") -> tuple[bool, str]:
    """Send bytes to ourselves over TCP on 127.0.0.1 (Jupyter kernels and the tests need exactly this)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            server.settimeout(5)
            with socket.create_connection(server.getsockname(), timeout=5) as client:
                peer, _ = server.accept()
                with peer:
                    client.sendall(payload)
                    received = peer.recv(len(payload))
        return received == payload, "" if received == payload else f"sent {payload!r}, received {received!r}"
    except OSError as err:
        return False, f"{type(err).__name__}: {err}"


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on host:port now (SO_REUSEADDR set, as Jupyter's server sets it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def next_free_port(start: int, tries: int = 50) -> int | None:
    """The first free port from `start` on, trying as many as Jupyter's `port_retries` (50) does."""
    return next((port for port in range(start, start + tries + 1) if port_is_free(port)), None)


def run_probe(venv_python: Path, matmul_size: int) -> dict[str, Any]:
    """Run PROBE in the course's virtual environment (`matmul_size` 0 skips the throughput measurement)."""
    result = subprocess.run(
        [str(venv_python), "-c", PROBE, str(matmul_size)], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-3:])
        raise RuntimeError(tail or f"exit status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def kernel_imports_utils(argv0: str) -> tuple[bool, str]:
    """Whether a kernel's Python can import the course's `utils`, started from notebooks/ as JupyterLab starts it."""
    try:
        result = subprocess.run(
            [argv0, "-c", "import utils.course"], capture_output=True, text=True, timeout=120, cwd=ROOT / "notebooks"
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    lines = result.stderr.strip().splitlines()
    return result.returncode == 0, lines[-1] if lines else ""


def load_timings(path: Path = TIMINGS_FILE) -> dict[str, Any] | None:
    """The reference machine's recorded notebook times and peak memory (written by tools/course_timings.py)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def format_duration(seconds: float) -> str:
    """'40 s', '4 min', '1 h 20 min': rounded the way a person says it."""
    if seconds < 90:
        return f"{max(1, round(seconds / 10) * 10 if seconds >= 20 else round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{int(seconds // 3600)} h {round(seconds % 3600 / 60)} min"


# ----------------------------------------------------------------------------------------------------- the checks


def python_install_hint(range_text: str) -> str:
    """How to get a Python the pins install on, for this operating system."""
    system = platform.system()
    if system == "Darwin":
        get = "brew install python@3.11 (or pyenv install 3.11)"
    elif system == "Windows":
        get = "install Python 3.11 from python.org (or use WSL)"
    else:  # not the distribution's package: Debian 12's python3.11 is 3.11.2, below the range
        get = "pyenv install 3.11 (or conda create -n course python=3.11)"
    return f"{get}, then: make PYTHON=/path/to/python3.11 setup  (the course needs {range_text})"


def check_python(python: str, facts: dict[str, Any] | None, in_venv: bool) -> Check:
    """The interpreter the course runs on: `.venv`'s when it exists, else the one `make setup` would use."""
    clauses = requires_python()
    range_text = describe_range(clauses)
    if facts is None:
        return Check("python", PROBLEM, f"cannot run {python!r}", python_install_hint(range_text))
    version = tuple(facts["version"])
    where = ".venv" if in_venv else "make setup would use"
    detail = f"Python {'.'.join(map(str, version))} ({where} {facts['executable']}); the pins need {range_text}"
    if version_allowed(version, clauses):
        return Check("python", OK, detail)
    fix = python_install_hint(range_text)
    return Check("python", PROBLEM, detail, f"rm -rf .venv; {fix}" if in_venv else fix)


def compiler_fix(version: tuple[int, ...]) -> str:
    """The package command that installs a C compiler and the Python headers, for this system."""
    if platform.system() == "Darwin":
        return "xcode-select --install"
    if platform.system() == "Windows":
        return "install the Microsoft C++ Build Tools, or run the course in WSL"
    minor = f"{version[0]}.{version[1]}" if len(version) >= 2 else "3.11"
    return (
        f"sudo apt install build-essential python{minor}-dev  (Fedora: sudo dnf install gcc python3-devel; "
        "pyenv/conda/python.org Pythons ship the headers)"
    )


def check_compiler(facts: dict[str, Any] | None) -> Check:
    """A C compiler, and Python.h of the course's interpreter: pip builds sagemaker-training's C extension and
    torch.compile generates C++ (notebook 09)."""
    version = tuple(facts["version"]) if facts else (3, 11)
    compiler = find_compiler()
    if compiler is None:
        return Check("compiler", PROBLEM, "no C compiler (cc, gcc or clang) on the PATH", compiler_fix(version))
    if facts is None:
        return Check("compiler", WARNING, f"{compiler} found; Python headers not checked (no usable Python)")
    ok, message = compiles_against_headers(compiler, [facts["include"], facts["platinclude"]])
    if ok:
        return Check("compiler", OK, f"{compiler} compiles against Python.h in {facts['include']}")
    return Check("compiler", PROBLEM, f"{compiler} cannot compile against Python.h: {message}", compiler_fix(version))


def check_disk(root: Path, venv_exists: bool) -> Check:
    """Free disk where the course lives: the venv, pip's cache and the assets before setup; room for runs after."""
    free_gb = shutil.disk_usage(root).free / 1e9
    need = DISK_AFTER_SETUP_GB if venv_exists else DISK_SETUP_GB
    what = "for runs and outputs" if venv_exists else "for .venv, pip's cache and the assets"
    detail = f"{free_gb:.1f} GB free on {root}; about {need:.0f} GB needed {what}"
    if free_gb >= need:
        return Check("disk", OK, detail)
    fix = "free disk space (pip cache purge frees pip's cache), or clone the course onto a larger disk"
    return Check("disk", PROBLEM, detail, fix)


def check_memory(timings: dict[str, Any] | None) -> Check:
    """Memory against the largest peak resident memory a notebook was measured to need at default size."""
    total, available = memory_gb()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    peaks = {
        name: nb["peak_rss_mb"] / 1e3
        for name, nb in (timings or {}).get("notebooks", {}).items()
        if nb.get("peak_rss_mb")
    }
    detail = f"{total:.1f} GB memory ({available:.1f} GB available), {cores} CPU core(s)"
    if not peaks:
        return Check(
            "memory",
            OK if total >= 8 else WARNING,
            detail + "; no recorded peaks to compare with",
            "" if total >= 8 else "the course is sized for 8 GB or more; close other programs",
        )
    heaviest = max(peaks, key=peaks.__getitem__)
    need = peaks[heaviest]
    detail += f"; the heaviest notebook, {heaviest[:2]}, peaked at {need:.1f} GB"
    if total < need * 1.2:
        return Check(
            "memory", PROBLEM, detail, "run at smoke size (COURSE_SMOKE=1 make lab), or use a machine with more memory"
        )
    if available < need * 1.2 or cores < 2:
        fix = "close other programs before running the heaviest notebooks" if available < need * 1.2 else ""
        fix = fix or "expect longer run times than the table in README.md (measured on 2 cores)"
        return Check("memory", WARNING, detail, fix)
    return Check("memory", OK, detail)


def check_assets() -> Check:
    """Every offline asset present and verified by utils.assets; the fix is the one utils.assets prints."""
    rows = assets.status()
    bad = [row["asset"] for row in rows if not row["verified"]]
    if not bad:
        total = sum(row["size_mb"] for row in rows)
        return Check("assets", OK, f"{len(rows)} assets verified in {assets.cache_dir()} ({total:.0f} MB)")
    messages = []
    for name in bad:
        try:
            assets.verify(name)
        except assets.AssetError as err:
            messages.append(str(err))
    fixes = sorted({m.split("To fix: ", 1)[1].rstrip(".") for m in messages if "To fix: " in m})
    return Check(
        "assets", PROBLEM, "; ".join(messages) or f"not verified: {', '.join(bad)}", "; ".join(fixes) or "make assets"
    )


def register_kernel_command() -> str:
    """What `make lab` runs to register the course kernel."""
    return (
        f'.venv/bin/python -m ipykernel install --user --name {COURSE_KERNEL} --display-name "{COURSE_KERNEL_DISPLAY}"'
    )


def check_kernels(probe: dict[str, Any] | None) -> list[Check]:
    """The course kernel registered and importing `utils`; and `python3`, the kernel the notebooks name, resolving
    to a Python that imports `utils` in the lab `make lab` starts (a user-wide python3 spec can shadow .venv's)."""
    if probe is None:
        return [Check("kernel", WARNING, NOT_PROBED, SETUP_FIX)]
    kernels = probe["kernels"]
    checks = []
    course = kernels.get(COURSE_KERNEL)
    if course is None:
        checks.append(
            Check(
                "kernel",
                WARNING,
                f"kernel {COURSE_KERNEL!r} is not registered (make lab registers it)",
                register_kernel_command(),
            )
        )
    else:
        ok, error = kernel_imports_utils(course["argv0"])
        checks.append(
            Check("kernel", OK, f"{COURSE_KERNEL!r} registered ({course['argv0']}) and imports utils")
            if ok
            else Check(
                "kernel",
                PROBLEM,
                f"{COURSE_KERNEL!r} runs {course['argv0']}, which cannot import utils: {error}",
                register_kernel_command(),
            )
        )
    native = kernels.get("python3")
    if native is not None:
        ok, error = kernel_imports_utils(native["argv0"])
        if not ok:
            checks.append(
                Check(
                    "kernel",
                    PROBLEM,
                    f"the notebooks' kernel 'python3' resolves to {native['argv0']} (spec in {native['dir']}), which "
                    f"cannot import utils: {error}",
                    "jupyter kernelspec remove python3  "
                    f"(or in JupyterLab: Kernel > Change Kernel > {COURSE_KERNEL_DISPLAY})",
                )
            )
    return checks


def check_bf16(probe: dict[str, Any] | None) -> Check:
    """Native bf16 matrix instructions (AMX or AVX512-BF16) or not; the course defaults to fp32 on CPU either way."""
    if probe is None:
        return Check("bf16", WARNING, NOT_PROBED, SETUP_FIX)
    if probe["fast_bf16"]:
        return Check("bf16", OK, "the CPU has native bf16 matrix instructions (AMX or AVX512-BF16)")
    return Check("bf16", OK, "no native bf16 on this CPU: bf16 would be emulated and slower, so the course uses fp32")


def check_torch_build(probe: dict[str, Any] | None) -> Check | None:
    """A CUDA build of torch on a machine without a GPU: several GB installed for nothing."""
    if probe is None or not probe.get("torch_cuda") or probe.get("cuda_available"):
        return None
    return Check(
        "torch",
        WARNING,
        f"torch {probe['torch']} is a CUDA {probe['torch_cuda']} build (several GB with its nvidia-* packages) and "
        "no GPU is visible",
        "rm -rf .venv && make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu",
    )


def check_loopback() -> Check:
    ok, error = loopback_roundtrip()
    if ok:
        return Check("loopback", OK, "TCP on 127.0.0.1 works (kernels, the tests and the lab talk over it)")
    return Check(
        "loopback",
        PROBLEM,
        f"cannot talk to 127.0.0.1: {error}; Jupyter kernels and the tests need it",
        "bring the loopback interface up (sudo ip link set lo up) or allow 127.0.0.1 in your firewall",
    )


def check_lab_port(port: int) -> Check:
    if port_is_free(port):
        return Check("lab port", OK, f"port {port} is free for make lab")
    free = next_free_port(port + 1)
    moved = f"JupyterLab would move to port {free}" if free else "no free port in the next 50 either"
    return Check(
        "lab port",
        WARNING,
        f"port {port} is in use ({moved}; another lab still running?)",
        f"jupyter server list; jupyter server stop {port}  (or make lab LAB_PORT={free or port + 100})",
    )


def timed_on_a_busy_machine(entry: dict[str, Any], cores: int | None) -> bool:
    """Whether other work competed for the CPUs while this notebook's time was recorded: the cores other programs
    kept busy during the notebook (`other_cpu_cores`, measured by the runner) above BUSY_OTHER_CORES, or, for times
    recorded before the runner measured that, the 15-minute load average at the end of the run above the core count."""
    other = entry.get("other_cpu_cores")
    if other is not None:
        return other > BUSY_OTHER_CORES
    load = entry.get("load_average_15min")
    return bool(load and cores and load > cores)


def check_speed(probe: dict[str, Any] | None, timings: dict[str, Any] | None) -> Check:
    """This machine's fp32 matmul throughput against the reference machine's, and the course's time scaled by it."""
    if probe is None:
        return Check("speed", WARNING, NOT_PROBED, SETUP_FIX)
    if "matmul" not in probe:
        return Check("speed", OK, "not measured (--quick)")
    here = probe["matmul"]["gflops"]
    size = probe["matmul"]["size"]
    detail = f"{here:.0f} GFLOP/s on a {size}x{size} fp32 matmul ({probe['threads']} threads)"
    if not timings:
        return Check("speed", OK, detail + f"; no reference timings ({TIMINGS_FILE.name}) to scale")
    reference = timings["reference"]
    # Each notebook scales by the throughput measured in its own run: times recorded on different days mix.
    walls = {
        name: nb["wall_s"] * nb.get("matmul_gflops", reference["matmul_gflops"]) / here
        for name, nb in timings["notebooks"].items()
    }
    factor = reference["matmul_gflops"] / here  # how many times longer than on the reference machine
    slowest = max(walls, key=walls.__getitem__)
    detail += (
        f"; the reference machine ({reference.get('cores', '?')} cores) did {reference['matmul_gflops']:.0f}. "
        f"Estimated here, the {len(walls)} notebooks with recorded times: about {format_duration(sum(walls.values()))} "
        f"in all (reference {format_duration(sum(nb['wall_s'] for nb in timings['notebooks'].values()))}), the "
        f"slowest, {slowest[:2]}, about {format_duration(walls[slowest])}"
    )
    busy = [
        name[:2] for name, nb in timings["notebooks"].items() if timed_on_a_busy_machine(nb, reference.get("cores"))
    ]
    if busy:
        detail += f" (rough: {', '.join(busy)} were timed while the reference machine was busy with other work)"
    if factor > SLOW_CPU_FACTOR:
        return Check(
            "speed",
            WARNING,
            f"very slow CPU ({factor:.1f}x slower than the reference): {detail}",
            "explore at smoke size first (COURSE_SMOKE=1 make lab); close other programs; on a laptop, plug in "
            "and pick the performance power mode",
        )
    return Check("speed", OK, detail)


def run_checks(
    target_python: str = sys.executable, port: int = LAB_PORT, quick: bool = False, venv: Path = VENV
) -> list[Check]:
    """Every check, in the order a reader fixes things: interpreter, build tools, resources, then the course."""
    venv_python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    venv_ready = venv_python.exists() and (venv / ".installed").exists()
    timings = load_timings()
    python = str(venv_python) if venv_python.exists() else target_python
    facts = interpreter_facts(python)
    checks = [check_python(python, facts, venv_python.exists()), check_compiler(facts)]
    checks += [check_disk(ROOT, venv_ready), check_memory(timings)]
    if not venv_ready:
        skipped = "no .venv yet; after setup (which also fetches the assets) the doctor also checks bf16, the assets, "
        checks.append(Check("setup", WARNING, skipped + "the kernels and this machine's speed", SETUP_FIX))
        return checks + [check_loopback(), check_lab_port(port)]
    try:
        size = 0 if quick else int((timings or {}).get("reference", {}).get("matmul_size", 1024))
        probe = run_probe(venv_python, size)
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError) as err:
        checks.append(
            Check("setup", PROBLEM, f".venv exists but cannot import the course: {err}", "rm -rf .venv && make setup")
        )
        probe = None
    checks += [check_bf16(probe), check_assets(), *check_kernels(probe)]
    torch_build = check_torch_build(probe)
    checks += [torch_build] if torch_build else []
    checks += [check_loopback(), check_lab_port(port), check_speed(probe, timings)]
    return checks


def render(checks: list[Check]) -> str:
    """The report as aligned lines; warnings and problems get a `fix:` line under them."""
    lines = []
    for check in checks:
        lines.append(f"{check.status:8} {check.name:9} {check.detail}")
        if check.fix and check.status != OK:
            lines.append(f"{'':18} fix: {check.fix}")
    problems = sum(c.status == PROBLEM for c in checks)
    warnings = sum(c.status == WARNING for c in checks)
    lines.append(f"{problems} problem(s), {warnings} warning(s)" + ("" if problems else ": the course can run here"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter make setup would use")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LAB_PORT", LAB_PORT)), help="lab port")
    parser.add_argument("--quick", action="store_true", help="skip the matrix-multiply measurement")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.add_argument("--venv", type=Path, default=VENV, help="the course's virtual environment (default: .venv)")
    args = parser.parse_args(argv)
    checks = run_checks(args.python or sys.executable, args.port, args.quick, args.venv)
    print(json.dumps([asdict(c) for c in checks], indent=2) if args.json else render(checks))
    return 1 if any(c.status == PROBLEM for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
