"""The machine a notebook runs on: device choice, a description of the hardware and software, and its measured
matrix-multiply throughput.

Defined for notebook 00; every notebook prints `describe_machine()` first so its numbers can be read in context,
and chapters 4 and 9 compare the measured FLOP/s with accelerators' data-sheet peaks. Needs torch and psutil.
"""

from __future__ import annotations

import importlib.metadata
import platform
import statistics
import time
from typing import Any

import psutil
import torch
from torch.utils import benchmark

#: Libraries whose versions every notebook prints (the ones whose behaviour the course depends on most).
KEY_LIBRARIES = ("torch", "transformers", "tokenizers", "datasets", "accelerate", "diffusers", "sagemaker")


def pick_device() -> str:
    """The best available device: "cuda", then "mps" (Apple silicon), then "cpu"."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, else what `platform` reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux only; empty elsewhere), e.g. `avx512_bf16` or `amx_bf16`."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_fast_cpu_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX512-BF16); without them bf16 matmuls are
    emulated and run many times slower than fp32, so the course defaults to fp32 on such CPUs."""
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def library_versions(names: tuple[str, ...] = KEY_LIBRARIES) -> dict[str, str]:
    """Installed version of each named distribution ("not installed" when absent), plus Python's."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def describe_machine() -> dict[str, Any]:
    """Hardware and software facts worth printing at the top of a notebook (memory in GiB)."""
    gib = 1024**3
    info: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": cpu_model(),
        "physical_cores": psutil.cpu_count(logical=False),
        "logical_cores": psutil.cpu_count(logical=True),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / gib, 1),
        "cpu_bf16_instructions": has_fast_cpu_bf16(),
        "device": pick_device(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{torch.cuda.device_count()} x {props.name}"
        info["gpu_memory_gib"] = round(props.total_memory / gib, 1)
    info.update(library_versions())
    return info


def measure_matmul_throughput(
    size: int, dtype: torch.dtype = torch.float32, device: str = "cpu", min_run_time: float = 0.5
) -> dict[str, float]:
    """Measured throughput of a square `size` x `size` matrix multiply, in GFLOP/s.

    One multiply of two n x n matrices costs 2 n^3 floating-point operations (n^3 multiply-adds). Timing uses
    `torch.utils.benchmark.Timer.blocked_autorange`, which synchronises CUDA and repeats the statement until
    `min_run_time` seconds have passed; the median over its blocks is reported, being robust to a noisy machine.
    Returns size, median seconds per multiply, median and best GFLOP/s, and the relative spread of the blocks.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    timer = benchmark.Timer(stmt="a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    flops = 2 * size**3
    return {
        "size": size,
        "seconds": measurement.median,
        "gflops": flops / measurement.median / 1e9,
        "best_gflops": flops / min(measurement.times) / 1e9,
        "relative_spread": statistics.pstdev(measurement.times) / measurement.mean
        if len(measurement.times) > 1
        else 0.0,
    }


def measure_memory_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Measured main-memory bandwidth in GB/s: the median time to copy a `megabytes` fp32 buffer into another,
    counting the bytes read plus the bytes written (STREAM's "copy" convention, McCalpin 1995). Use a buffer much
    larger than the CPU caches, or the figure measures the cache."""
    source = torch.ones(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats + 1):  # the first copy also faults the pages in; it is dropped
        start = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - start)
    return 2 * source.numel() * 4 / statistics.median(times[1:]) / 1e9
