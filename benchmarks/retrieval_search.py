"""Benchmark for issue 19: FAISS search against exact numpy search on the course's documentation corpus (notebook
15's chunks, all-MiniLM-L6-v2 embeddings, the shipped QA questions as queries). Prints, per corpus size, the median
seconds of one batched search measured in one run, alternating the methods, and each method's ratio to numpy:

- numpy: `utils.retrieval.exact_search` (a matrix product and a partial sort), the baseline;
- FAISS Flat: exact inner-product search in FAISS's BLAS kernels (results must equal numpy's);
- FAISS HNSW32: an approximate graph index (Malkov & Yashunin, 2018), with its recall@10 against the exact result.

The real corpus has a few thousand chunks, where every method takes well under a millisecond. `--copies N` adds
N-1 perturbed copies of every chunk vector (Gaussian noise of standard deviation 0.02 per dimension, renormalised)
to show how the methods scale at the sizes a real document store reaches; the queries stay the real questions.
HNSW's recall against the exact top k is pessimistic on the grown corpus: the copies of one chunk are near-duplicates
with almost equal scores, and any of them answers the query as well as the one exact search ranks first.

    .venv/bin/python benchmarks/retrieval_search.py [--copies 1 10 100] [--repeats 7] [--k 10]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from utils import assets
from utils import retrieval as R
from utils.course import ROOT
from utils.offline import enable_offline_mode


def alternated_medians(methods: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per method, the methods run in turn in every round so that machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, work in methods.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def grown(vectors: np.ndarray, copies: int, seed: int = 0) -> np.ndarray:
    """The vectors plus copies-1 noisy, renormalised copies of them (float32, unit rows)."""
    rng = np.random.default_rng(seed)
    extra = [vectors + rng.normal(0, 0.02, vectors.shape).astype(np.float32) for _ in range(copies - 1)]
    matrix = np.concatenate([vectors, *extra]) if extra else vectors
    return np.ascontiguousarray(matrix / np.linalg.norm(matrix, axis=1, keepdims=True), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 10, 100], help="corpus sizes, in copies")
    parser.add_argument("--repeats", type=int, default=7, help="alternated rounds; medians are reported")
    parser.add_argument("--k", type=int, default=10, help="results per query")
    parser.add_argument("--chunk-words", type=int, default=60, help="chunk size, as notebook 15")
    args = parser.parse_args()
    if min(args.copies) < 1 or args.repeats < 1 or args.k < 1:
        parser.error("--copies, --repeats and --k must be positive")
    enable_offline_mode()
    import faiss

    embeddings = R.SentenceEmbeddings(assets.load_minilm("cpu"))
    chunks = R.chunk_documents(R.course_documents(ROOT, exclude=("15_",)), args.chunk_words)
    questions = R.load_jsonl(ROOT / "data" / "course_qa" / "questions.jsonl", ["question"])
    base = embeddings.embed_array([c.page_content for c in chunks])
    queries = embeddings.embed_array([q["question"] for q in questions])
    print(
        f"{len(chunks)} chunks x {base.shape[1]} dims, {len(queries)} queries, k={args.k}, "
        f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, medians of {args.repeats}"
    )
    print(
        f"{'vectors':>9} {'numpy ms':>9} {'Flat ms':>8} {'HNSW ms':>8} {'Flat/numpy':>10} {'HNSW/numpy':>10} "
        f"{'HNSW recall@k':>13} {'HNSW build s':>12}"
    )
    for copies in args.copies:
        matrix = grown(base, copies)
        flat = faiss.IndexFlatIP(matrix.shape[1])
        flat.add(matrix)
        start = time.perf_counter()
        hnsw = faiss.index_factory(matrix.shape[1], "HNSW32", faiss.METRIC_INNER_PRODUCT)
        hnsw.add(matrix)
        build = time.perf_counter() - start
        exact_rows = R.exact_search(matrix, queries, args.k)[1]
        assert (flat.search(queries, args.k)[1] == exact_rows).all(), "FAISS Flat disagrees with exact search"
        approx_rows = hnsw.search(queries, args.k)[1]
        recall = np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx_rows, exact_rows, strict=True)])
        times = alternated_medians(
            {
                "numpy": lambda m=matrix: R.exact_search(m, queries, args.k),
                "flat": lambda i=flat: i.search(queries, args.k),
                "hnsw": lambda i=hnsw: i.search(queries, args.k),
            },
            args.repeats,
        )
        print(
            f"{len(matrix):>9,} {times['numpy'] * 1e3:9.3f} {times['flat'] * 1e3:8.3f} {times['hnsw'] * 1e3:8.3f} "
            f"{times['flat'] / times['numpy']:10.2f} {times['hnsw'] / times['numpy']:10.2f} {recall:13.1%} "
            f"{build:12.2f}"
        )


if __name__ == "__main__":
    main()
