"""Benchmark for notebook 12: int8 against fp32, batched against unbatched serving, and decoding against the
memory-bandwidth roofline. Prints ratios measured in one run.

Targets (issue 18):
- ONNX Runtime int8 (dynamic quantization) at least 1.5x lower p50 latency than ONNX Runtime fp32, for the course's
  MiniLM genre classifier on single held-out passages, with the change in accuracy and agreement reported;
- the course's server with dynamic batching at least 3x the generated tokens/s of the same server without it, with
  16 concurrent clients, SmolLM2-135M-Instruct;
- SmolLM2's batch-1 decode speed at least 50% of (measured memory bandwidth / bytes read per token).

Every process uses `--threads` torch threads (the servers through OMP_NUM_THREADS), as notebook 12 does.

    .venv/bin/python benchmarks/serving_speed.py [--threads 1] [--clients 16] [--answer-tokens 12 32] [--repeats 5]
        [--new-tokens 12] [--passages 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
import numpy as np
import torch
from safetensors.torch import save_file

from utils.offline import enable_offline_mode


def classifier_ratios(work: Path, passages: int) -> dict[str, float]:
    """Train the genre head, serve-format the folder, export fp32 and int8 ONNX; p50 latency and quality."""
    from utils import assets, serving, shrinking
    from utils import finetuning as ft

    train, test = ft.genre_splits(train_per_genre=112, test_per_genre=32)  # chapter 10's training and test plays
    encoder = assets.load_minilm()
    embeddings = encoder.encode([p["text"] for p in train], normalize_embeddings=True)
    weight, bias = ft.fit_head(embeddings, ft.labels_of(train))
    save_file({"weight": torch.from_numpy(weight), "bias": torch.from_numpy(bias)}, work / "head.safetensors")
    folder = serving.write_model_folder(
        work / "genre",
        assets.verify("minilm"),
        {"task": "text-classification", "labels": list(ft.GENRES)},
        extra_files={"head.safetensors": work / "head.safetensors"},
    )
    served = serving.load_handlers(folder).model_fn(str(folder))

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = served.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
        return batch["input_ids"], batch["attention_mask"]

    example = tuple(torch.from_numpy(x) for x in encode([test[0]["text"], test[1]["text"]]))
    fp32 = shrinking.export_onnx(served.network, example, work / "fp32.onnx")
    int8 = shrinking.quantize_int8(fp32, work / "int8.onnx")
    runners = {"fp32": shrinking.OnnxModel(fp32), "int8": shrinking.OnnxModel(int8)}
    texts = [p["text"] for p in test]
    seconds = shrinking.compare_latency(runners, [encode([t]) for t in (texts * 4)[:passages]])
    predictions = {k: shrinking.predict_in_batches(run, encode, texts).argmax(1) for k, run in runners.items()}
    labels = ft.labels_of(test)
    return {
        "p50_fp32_ms": 1000 * float(np.median(seconds["fp32"])),
        "p50_int8_ms": 1000 * float(np.median(seconds["int8"])),
        "accuracy_fp32": float((predictions["fp32"] == labels).mean()),
        "accuracy_int8": float((predictions["int8"] == labels).mean()),
        "agreement": float((predictions["fp32"] == predictions["int8"]).mean()),
        "test_passages": len(texts),
    }


def batching_ratios(
    work: Path, clients: int, answer_tokens: list[int], threads: int, repeats: int
) -> dict[int, dict[str, list[float]]]:
    """Generated tokens/s of the course's server with dynamic batching (its default ServerSettings) and without it
    (max_batch 1), `clients` concurrent clients sending one request each, for each answer length in
    `answer_tokens`. Both servers run side by side and take turns, `repeats` times, so that other load on the
    machine slows them alike; returns {answer tokens: {"unbatched", "batched", "passes": [...] per repeat}}, where
    "passes" counts the batched server's forward passes (generate calls) per burst."""
    from utils import assets, serving

    folder = serving.write_model_folder(work / "smollm2", assets.smollm2_dir(), {"task": "text-generation"})
    env = {"OMP_NUM_THREADS": str(threads)}
    prompts = ["Name a play by Shakespeare.", "What is a stage?", "Say hello in French.", "Describe a storm."]
    settings = {"unbatched": serving.ServerSettings(max_batch=1), "batched": serving.ServerSettings()}
    servers = {
        name: serving.start_server(folder, port=serving.free_port(8080 + i), env=env, settings=s, wait=False)
        for i, (name, s) in enumerate(settings.items())
    }
    rates = {n: {"unbatched": [], "batched": [], "passes": []} for n in answer_tokens}
    try:
        for server in servers.values():
            server.wait_ready()
            serving.load_test(server.url, [{"inputs": "Hi", "parameters": {"max_new_tokens": 2}}], 1, 1)  # warm-up
        for _ in range(repeats):
            for n in answer_tokens:
                payloads = [{"inputs": p, "parameters": {"max_new_tokens": n}} for p in prompts]
                for name, server in servers.items():
                    before = httpx.get(f"{server.url}/stats").json()["batches"]
                    result = serving.load_test(server.url, payloads, clients=clients, requests_per_client=1)
                    if set(result.statuses) != {200}:
                        raise RuntimeError(f"{name} server answered {dict(result.statuses)}: {result.errors[:2]}")
                    rates[n][name].append(result.tokens_per_s)
                    if name == "batched":
                        rates[n]["passes"].append(httpx.get(f"{server.url}/stats").json()["batches"] - before)
    finally:
        for server in servers.values():
            server.stop()
    return rates


def roofline_fraction(new_tokens: int) -> dict[str, float]:
    """SmolLM2's batch-1 decode tokens/s against bandwidth / bytes per token, both measured here."""
    from utils import assets
    from utils import decoding as D
    from utils.machine import measure_memory_bandwidth

    model, tokenizer = assets.load_smollm2()
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me about the theatre."}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    bandwidth = measure_memory_bandwidth(megabytes=512)
    context = chat["input_ids"].shape[1] + new_tokens
    bytes_per_token = D.weight_bytes_per_token(model) + D.kv_cache_bytes_per_token(model.config, context)
    measured = D.decode_tokens_per_s(model, chat, 2 * new_tokens, repeats=3)
    overhead = D.skeleton_step_s(model, chat, new_tokens)
    with D.numpy_matvec_linears(model):  # numpy's matrix-vector kernel for single tokens, same weights
        steps = [s for _ in range(3) for s in D.static_cache_step_times(model, chat, 2 * new_tokens)["step_s"]]
    return {
        "numpy_kernel": 1 / statistics.median(steps),
        "numpy_matvec_gb_s": D.matvec_bandwidth_gb_s(1536, 576, library="numpy"),
        "bandwidth_gb_s": bandwidth,
        "mb_per_token": bytes_per_token / 1e6,
        "measured": measured,
        "roofline": D.roofline_tokens_per_s(bandwidth, bytes_per_token),
        "overhead_ms": 1000 * overhead,
        "weights_gb_s": bytes_per_token / (1 / measured - overhead) / 1e9,
        "read_gb_s": D.read_bandwidth_gb_s(),
        "matvec_gb_s": D.matvec_bandwidth_gb_s(1536, 576),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent load-test clients")
    parser.add_argument("--new-tokens", type=int, default=12, help="tokens per batch-1 decode in the roofline part")
    parser.add_argument(
        "--answer-tokens",
        type=int,
        nargs="+",
        default=[12, 32],
        help="tokens per load-test request, one load test per value (32: the course server's default answer length)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="alternated load tests per server and answer length")
    parser.add_argument("--passages", type=int, default=100, help="single passages timed per classifier variant")
    args = parser.parse_args()
    enable_offline_mode()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        work = Path(tmp)
        classifier = classifier_ratios(work, args.passages)
        rates = batching_ratios(work, args.clients, args.answer_tokens, args.threads, args.repeats)
        decode = roofline_fraction(args.new_tokens)
    print(f"torch {torch.__version__}, {args.threads} thread(s) per process")
    speedup = classifier["p50_fp32_ms"] / classifier["p50_int8_ms"]
    print(
        f"classifier p50, one passage: fp32 {classifier['p50_fp32_ms']:.1f} ms, int8 "
        f"{classifier['p50_int8_ms']:.1f} ms -> {speedup:.2f}x   (target >= 1.5x)"
    )
    print(
        f"  quality on {classifier['test_passages']} held-out passages: accuracy fp32 "
        f"{classifier['accuracy_fp32']:.1%}, int8 {classifier['accuracy_int8']:.1%}; predictions agree on "
        f"{classifier['agreement']:.1%}"
    )
    for n, rate in rates.items():
        ratios = [b / u for b, u in zip(rate["batched"], rate["unbatched"], strict=True)]
        print(
            f"server, {args.clients} clients, {n}-token answers ({len(ratios)} alternated repeats): unbatched "
            f"{statistics.median(rate['unbatched']):.1f} tokens/s, batched {statistics.median(rate['batched']):.1f} "
            f"tokens/s -> median {statistics.median(ratios):.2f}x (repeats {min(ratios):.2f}-{max(ratios):.2f}x; "
            f"{'/'.join(map(str, rate['passes']))} batched passes per burst)   (target >= 3x)"
        )
    fraction = decode["measured"] / decode["roofline"]
    print(
        f"decode at batch 1: {decode['measured']:.1f} tokens/s; bound {decode['roofline']:.1f} tokens/s "
        f"({decode['bandwidth_gb_s']:.1f} GB/s / {decode['mb_per_token']:.0f} MB per token) -> {fraction:.0%}"
        f"   (target >= 50%)"
    )
    print(
        f"  a step: {1000 / decode['measured']:.0f} ms, {decode['overhead_ms']:.0f} ms of it without weights (the "
        f"model's skeleton); weights read at {decode['weights_gb_s']:.1f} GB/s; on the same threads a plain read "
        f"reaches {decode['read_gb_s']:.1f} GB/s and fp32 matrix x vector "
        f"{decode['matvec_gb_s']:.1f} GB/s (numpy's kernel {decode['numpy_matvec_gb_s']:.1f})"
    )
    print(
        f"  with numpy's matrix-vector kernel (D.numpy_matvec_linears, static-cache loop): "
        f"{decode['numpy_kernel']:.1f} tokens/s -> {decode['numpy_kernel'] / decode['roofline']:.0%} of the bound"
    )


if __name__ == "__main__":
    main()
