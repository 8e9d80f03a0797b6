"""How fast a causal language model generates, step by step, and the memory-bandwidth bound on it.

Defined for notebook 12 (book chapter 12). Needs torch, transformers and numpy (threadpoolctl, which scikit-learn
installs, to give numpy's BLAS the same thread count as PyTorch).

Generating one token at batch size 1 reads every weight of the model once (the KV cache holds the earlier tokens'
keys and values, so only the new token is computed), but does only about 2 FLOPs per weight: far too little
arithmetic to keep a processor busy. Its speed is therefore bounded by memory bandwidth:

    tokens/s  <=  bandwidth (bytes/s) / bytes read per token (weights + the KV cache so far)

the "decode roofline" (the roofline model is Williams, Waterman & Patterson, 2009). A batch of B sequences reads
the weights once for B tokens, which is why batching raises throughput until arithmetic becomes the limit.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import types
from collections.abc import Iterator
from typing import Any

import torch
from threadpoolctl import threadpool_limits
from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList, StaticCache


class _StepClock(LogitsProcessor):
    """Notes the time whenever generate has computed a step's logits (once per generated token)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.times.append(time.perf_counter())
        return scores


def step_times(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int, use_cache: bool = True) -> dict[str, Any]:
    """Greedy-generate exactly `new_tokens` tokens and time each step: "prefill_s" (the prompt's forward pass and
    the first token) and "step_s" (one entry per further token). use_cache=False recomputes the whole sequence
    at every step, which is what the KV cache saves."""
    clock = _StepClock()
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=use_cache,
            logits_processor=LogitsProcessorList([clock]),
            pad_token_id=model.generation_config.eos_token_id,
        )
    times = [start, *clock.times]
    return {"prefill_s": times[1] - times[0], "step_s": [b - a for a, b in zip(times[1:], times[2:], strict=False)]}


def decode_tokens_per_s(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int, repeats: int = 3) -> float:
    """Decode speed with the KV cache, in tokens/s per sequence: one over the median step time (prefill
    excluded) over `repeats` generations; with a batch of B prompts, multiply by B for the total."""
    steps = [s for _ in range(repeats) for s in step_times(model, inputs, new_tokens)["step_s"]]
    return 1.0 / statistics.median(steps)


def static_cache_step_times(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int) -> dict[str, list]:
    """Greedy decoding of one prompt written out as a serving engine's loop, timing each step after the first
    token (s): a static KV cache allocated once for the whole generation (nothing grows or is copied as the sequence
    lengthens), one forward pass per token under torch.inference_mode, the next token chosen by argmax, and none
    of generate's per-step machinery (logits processors, stopping criteria, input preparation). Batch 1 only.
    Returns {"step_s": one time per token after the first, "token_ids": the `new_tokens` tokens chosen}, the
    tokens being those of greedy `generate`."""
    ids = inputs["input_ids"]
    if ids.shape[0] != 1 or new_tokens < 2:
        raise ValueError(f"needs one prompt and new_tokens >= 2, got shape {tuple(ids.shape)}, {new_tokens}")
    cache = StaticCache(config=model.config, max_cache_len=ids.shape[1] + new_tokens)
    times, tokens, position = [], [], ids.shape[1]
    with torch.inference_mode():
        logits = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(position)).logits
        tokens.append(logits[:, -1].argmax(-1, keepdim=True))
        for _ in range(new_tokens - 1):
            start = time.perf_counter()
            logits = model(input_ids=tokens[-1], past_key_values=cache, cache_position=torch.tensor([position])).logits
            tokens.append(logits[:, -1].argmax(-1, keepdim=True))
            times.append(time.perf_counter() - start)
            position += 1
    return {"step_s": times, "token_ids": torch.cat(tokens, dim=1)[0].tolist()}


def linear_layers_s(model: torch.nn.Module, repeats: int = 3) -> float:
    """Median time (s) to multiply one token's activations by every weight matrix of the model's linear layers
    (the output projection included) and do nothing else: the floor that PyTorch's matrix kernels set for a
    batch-1 decoding step, with no attention, norms, Python or sampling around them (inside
    `numpy_matvec_linears`, the floor numpy's kernel sets)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    inputs = {m.in_features: torch.randn(1, 1, m.in_features, dtype=m.weight.dtype) for m in linears}
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for linear in linears:
                linear(inputs[linear.in_features])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def skeleton_step_s(model: Any, inputs: dict[str, torch.Tensor], new_tokens: int = 16, head_size: int = 8) -> float:
    """Median decode-step time (s) of a random model with `model`'s architecture (layers, heads, vocabulary,
    operators) but heads of only `head_size` features: it launches every operator a real step launches while
    reading almost no weights, so its step time is the part of a step that memory bandwidth does not explain
    (Python, operator dispatch, sampling, cache bookkeeping)."""
    config = copy.deepcopy(model.config)
    config.hidden_size = config.num_attention_heads * head_size
    config.intermediate_size = 2 * config.hidden_size
    if hasattr(config, "head_dim"):
        config.head_dim = head_size
    skeleton = AutoModelForCausalLM.from_config(config).eval()
    return statistics.median(step_times(skeleton, inputs, new_tokens)["step_s"])


def read_bandwidth_gb_s(megabytes: int = 512, repeats: int = 5) -> float:
    """Measured read-only bandwidth (GB/s): the median time to sum a `megabytes` fp32 buffer, reading each byte
    once and writing nothing (a copy, as utils.machine measures it, counts the bytes written too)."""
    data = torch.ones(megabytes * 2**20 // 4)
    times = []
    for _ in range(repeats + 1):  # the first pass also faults the pages in; it is dropped
        start = time.perf_counter()
        data.sum()
        times.append(time.perf_counter() - start)
    return data.numel() * 4 / statistics.median(times[1:]) / 1e9


def matvec_bandwidth_gb_s(
    rows: int, columns: int, megabytes: int = 512, repeats: int = 3, library: str = "torch"
) -> float:
    """Measured rate (GB/s) at which a fp32 matrix-vector product reads weights: one vector times enough distinct
    `rows` x `columns` matrices to fill `megabytes` (so that they come from memory, not cache), the operation a
    batch-1 decoding step is made of. `library` "torch" times PyTorch's kernel (MKL or oneDNN in its CPU build),
    "numpy" the BLAS numpy ships (OpenBLAS in its wheels), with as many threads as PyTorch uses. Best of `repeats`."""
    if library not in ("torch", "numpy"):
        raise ValueError(f"library must be 'torch' or 'numpy', got {library!r}")
    count = max(1, megabytes * 2**20 // (rows * columns * 4))
    matrices = [torch.randn(rows, columns) for _ in range(count)]
    vector = torch.randn(1, columns)
    if library == "numpy":
        matrices, vector = [m.numpy() for m in matrices], vector.numpy()[0]
    times = []
    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        for _ in range(repeats):
            start = time.perf_counter()
            for matrix in matrices:
                matrix @ vector if library == "numpy" else vector @ matrix.T
            times.append(time.perf_counter() - start)
    return count * rows * columns * 4 / min(times) / 1e9


@contextlib.contextmanager
def numpy_matvec_linears(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, each nn.Linear of `model` multiplies a single token's activations (an input of one row)
    with numpy's matrix-vector product on the same weights (shared, not copied), with as many BLAS threads as
    PyTorch uses; inputs of several rows (a prompt, a batch) still go to PyTorch. This swaps only the kernel of a
    batch-1 decoding step, so the numbers are PyTorch's up to float rounding and greedy decoding picks the same
    tokens (the tests check both). The model is restored on leaving the block."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1] or x.dtype != torch.float32 or module.weight.dtype != torch.float32:
            return torch.nn.functional.linear(x, module.weight, module.bias)
        out = module.weight.detach().numpy() @ x.detach().reshape(-1).numpy()
        if module.bias is not None:
            out += module.bias.detach().numpy()
        return torch.from_numpy(out).view(*x.shape[:-1], out.shape[0])

    with threadpool_limits(limits=torch.get_num_threads(), user_api="blas"):
        try:
            for linear in linears:
                linear.forward = types.MethodType(forward, linear)
            yield model
        finally:
            for linear in linears:
                linear.__dict__.pop("forward", None)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decoding step reads: every parameter once, except that an input embedding table is
    only looked up (one row per token) unless it is tied to the output projection, which reads all of it."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = embedding.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    if tied:
        return total
    return total - embedding.numel() * embedding.element_size() + embedding.shape[1] * embedding.element_size()


def kv_cache_bytes_per_token(config: Any, context: int, bytes_per_value: int = 4) -> int:
    """Bytes of keys and values one decoding step reads from the cache at `context` tokens: 2 (K and V) x layers x
    context x key-value heads x head size x bytes per value."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * context * heads * head_size * bytes_per_value


def roofline_tokens_per_s(bandwidth_gb_s: float, bytes_per_token: float) -> float:
    """The memory-bandwidth bound on batch-1 decoding: bandwidth (GB/s, 10^9 bytes) / bytes read per token."""
    if bandwidth_gb_s <= 0 or bytes_per_token <= 0:
        raise ValueError("bandwidth and bytes per token must be positive")
    return bandwidth_gb_s * 1e9 / bytes_per_token
