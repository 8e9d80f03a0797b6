"""Machine description and the matmul throughput measurement."""

import importlib.metadata

import torch

from utils.machine import describe_machine, library_versions, measure_matmul_throughput, pick_device


def test_pick_device_follows_what_torch_sees():
    device = pick_device()
    assert device in {"cuda", "mps", "cpu"}
    assert (device == "cuda") == torch.cuda.is_available()


def test_describe_machine_has_the_facts_notebooks_print():
    info = describe_machine()
    for key in ("cpu", "logical_cores", "memory_gib", "device", "python", "torch", "transformers"):
        assert key in info
    assert info["logical_cores"] >= 1 and info["memory_gib"] > 0


def test_library_versions_marks_missing_packages():
    versions = library_versions(("torch", "no-such-package-xyz"))
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["no-such-package-xyz"] == "not installed"


def test_matmul_throughput_is_2n3_flops_over_the_median_time():
    result = measure_matmul_throughput(64, min_run_time=0.05)
    assert result["size"] == 64 and result["seconds"] > 0
    assert abs(result["gflops"] - 2 * 64**3 / result["seconds"] / 1e9) < 1e-9
    assert result["best_gflops"] >= result["gflops"] * 0.999


def test_memory_bandwidth_is_a_plausible_rate():
    from utils.machine import measure_memory_bandwidth

    rate = measure_memory_bandwidth(megabytes=64, repeats=3)
    assert 0.1 < rate < 10_000  # GB/s: from a throttled laptop to a GPU's HBM
