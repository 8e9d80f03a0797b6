"""Benchmark for notebook 12: int8 against fp32, batched against unbatched serving, and decoding against the
memory-bandwidth roofline. Prints ratios measured in one run.

Targets (issue 18):
- ONNX Runtime int8 (dynamic quantization) at least 1.5x lower p50 latency than ONNX Runtime fp32, for the course's
  MiniLM genre classifier on single held-out passages, with the change in accuracy and agreement reported;
- the course's server with dynamic batching at least 3x the generated tokens/s of the same server without it, with
  16 concurrent clients, SmolLM2-135M-Instruct;
- SmolLM2's batch-1 decode speed at least 50% of (measured memory bandwidth / bytes read per token).

Every process uses `--threads` torch threads (the servers through OMP_NUM_THREADS), as notebook 12 does.

    .venv/bin/python benchmarks/serving_speed.py [--threads 1] [--clients 16] [--new-tokens 12] [--passages 100]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

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


def batching_ratio(work: Path, clients: int, new_tokens: int, threads: int) -> dict[str, float]:
    """Generated tokens/s of the course's server with and without dynamic batching, `clients` concurrent clients."""
    from utils import assets, serving

    folder = serving.write_model_folder(work / "smollm2", assets.smollm2_dir(), {"task": "text-generation"})
    env = {"OMP_NUM_THREADS": str(threads)}
    prompts = ["Name a play by Shakespeare.", "What is a stage?", "Say hello in French.", "Describe a storm."]
    payloads = [{"inputs": p, "parameters": {"max_new_tokens": new_tokens}} for p in prompts]
    rates = {}
    for name, settings in [("unbatched", serving.ServerSettings(max_batch=1)), ("batched", serving.ServerSettings())]:
        with serving.start_server(folder, env=env, settings=settings) as server:
            serving.load_test(server.url, payloads[:1], clients=1, requests_per_client=1)  # warm-up
            result = serving.load_test(server.url, payloads, clients=clients, requests_per_client=1)
            if set(result.statuses) != {200}:
                raise RuntimeError(f"{name} server answered {dict(result.statuses)}: {result.errors[:2]}")
            rates[name] = result.tokens_per_s
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
    parser.add_argument("--new-tokens", type=int, default=12, help="tokens per generation request")
    parser.add_argument("--passages", type=int, default=100, help="single passages timed per classifier variant")
    args = parser.parse_args()
    enable_offline_mode()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        work = Path(tmp)
        classifier = classifier_ratios(work, args.passages)
        rates = batching_ratio(work, args.clients, args.new_tokens, args.threads)
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
    ratio = rates["batched"] / rates["unbatched"]
    print(
        f"server, {args.clients} clients: unbatched {rates['unbatched']:.1f} tokens/s, batched {rates['batched']:.1f}"
        f" tokens/s -> {ratio:.2f}x   (target >= 3x)"
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
