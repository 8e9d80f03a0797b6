"""Benchmark for issue 15: what does checking the cached assets on every load cost? Prints seconds measured in one
run (medians): each asset's load, `verify` with its stat stamps (what every load runs), and `verify(full=True)`,
which re-hashes every file (what every load would cost without the stamps). Page cache warm.

    .venv/bin/python benchmarks/asset_verification.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from utils import assets
from utils.offline import enable_offline_mode


def median_seconds(work: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per row; medians are reported")
    args = parser.parse_args()
    enable_offline_mode()
    converted = assets.cache_dir() / assets.SMOLLM2_CONVERTED
    rows = [  # (what is loaded, the load, the folder its load checks, the check with stamps, the full check)
        (
            "shakespeare_texts",
            assets.shakespeare_texts,
            assets.asset_dir("shakespeare"),
            lambda: assets.verify("shakespeare"),
            lambda: assets.verify("shakespeare", full=True),
        ),
        (
            "load_minilm",
            assets.load_minilm,
            assets.asset_dir("minilm"),
            lambda: assets.verify("minilm"),
            lambda: assets.verify("minilm", full=True),
        ),
        (
            "load_smollm2",
            assets.load_smollm2,
            converted,
            assets.smollm2_dir,
            lambda: assets._verify_folder(converted, "smollm2", "", full=True),
        ),
    ]
    print(
        f"{'load':>18} {'MB':>7} {'load s':>7} {'stamps ms':>9} {'full hash s':>11} {'stamps/load':>11} "
        f"{'full/load':>9}"
    )
    for name, load, folder, stamped, full in rows:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        loading = median_seconds(load, args.repeats)
        stamps = median_seconds(stamped, args.repeats)
        hashing = median_seconds(full, args.repeats)
        print(
            f"{name:>18} {size / 1e6:7.1f} {loading:7.2f} {stamps * 1e3:9.2f} {hashing:11.3f} "
            f"{stamps / loading:11.3%} {hashing / loading:9.1%}"
        )


if __name__ == "__main__":
    main()
