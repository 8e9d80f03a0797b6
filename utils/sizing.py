"""Sizing calculators for transformers: exact parameter counts from hyperparameters, training FLOPs, and the
memory that model states take per device under data parallelism and ZeRO / FSDP sharding.

Written for book chapters 3 and 9 (notebook 02 uses them; chapters 5 and 9 compare them with measurements).
Parameter counts equal `sum(p.numel() for p in model.parameters())` of the matching transformers model exactly
(tests build GPT-2, BERT, T5 and Llama on the meta device). Standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TransformerShape:
    """The hyperparameters that fix a transformer's parameter count.

    `context` > 0 means learned absolute position embeddings of that length (GPT-2, BERT); 0 means none (rotary
    or relative positions: Llama, T5). `kv_heads` < `heads` is grouped-query attention. `head_dim` defaults to
    width // heads. `bias`: linear layers carry biases. `gated_ffn`: SwiGLU/GEGLU feed-forward with three
    matrices instead of two. `tied_embeddings`: the output projection reuses the input embedding matrix.
    """

    vocab_size: int
    width: int
    layers: int
    heads: int
    ffn: int
    context: int = 0
    kv_heads: int | None = None
    head_dim: int | None = None
    bias: bool = True
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    gated_ffn: bool = False
    tied_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "width", "layers", "heads", "ffn"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kv_heads is not None and self.heads % self.kv_heads:
            raise ValueError(f"heads ({self.heads}) must be a multiple of kv_heads ({self.kv_heads})")

    @property
    def inner(self) -> int:
        """Width of the concatenated attention heads (query and output projections)."""
        return self.heads * (self.head_dim or self.width // self.heads)

    @property
    def kv_inner(self) -> int:
        """Width of the key and value projections (smaller under grouped-query attention)."""
        return (self.kv_heads or self.heads) * (self.head_dim or self.width // self.heads)


def _norm(shape: TransformerShape) -> int:
    """LayerNorm has a scale and a shift per channel; RMSNorm only a scale."""
    return 2 * shape.width if shape.norm == "layernorm" else shape.width


def _attention(shape: TransformerShape) -> int:
    d, inner, kv = shape.width, shape.inner, shape.kv_inner
    weights = d * inner + 2 * d * kv + inner * d  # query, key, value, output
    return weights + (inner + 2 * kv + d if shape.bias else 0)


def _ffn(shape: TransformerShape) -> int:
    d, f = shape.width, shape.ffn
    matrices = 3 if shape.gated_ffn else 2
    return matrices * d * f + ((matrices - 1) * f + d if shape.bias else 0)


def _embeddings(shape: TransformerShape) -> int:
    return shape.vocab_size * shape.width + shape.context * shape.width


def decoder_parameters(shape: TransformerShape) -> int:
    """Parameters of a decoder-only LM (GPT-2 `GPT2LMHeadModel`, Llama `LlamaForCausalLM`): embeddings, per layer
    two norms + attention + FFN, a final norm, and an untied output projection if any."""
    per_layer = 2 * _norm(shape) + _attention(shape) + _ffn(shape)
    head = 0 if shape.tied_embeddings else shape.vocab_size * shape.width
    return _embeddings(shape) + shape.layers * per_layer + _norm(shape) + head


def encoder_parameters(shape: TransformerShape, token_types: int = 2, pooler: bool = True) -> int:
    """Parameters of a BERT-style encoder (`BertModel`): word, position and token-type embeddings with a norm,
    per layer attention + norm + FFN + norm, and the optional pooler (a width x width dense layer on [CLS])."""
    embeddings = _embeddings(shape) + token_types * shape.width + _norm(shape)
    per_layer = _attention(shape) + _ffn(shape) + 2 * _norm(shape)
    return embeddings + shape.layers * per_layer + (shape.width**2 + shape.width if pooler else 0)


def encoder_decoder_parameters(shape: TransformerShape, decoder_layers: int | None = None, buckets: int = 32) -> int:
    """Parameters of a T5-style encoder-decoder (`T5ForConditionalGeneration`): shared embeddings, encoder layers
    (self-attention + FFN), decoder layers (self-attention + cross-attention + FFN), a final norm per stack, and a
    relative-position bias table of `buckets` x heads in the first layer of each stack (Raffel et al., 2020)."""
    decoder_layers = shape.layers if decoder_layers is None else decoder_layers
    encoder_layer = _attention(shape) + _ffn(shape) + 2 * _norm(shape)
    decoder_layer = 2 * _attention(shape) + _ffn(shape) + 3 * _norm(shape)
    relative = 2 * buckets * shape.heads
    head = 0 if shape.tied_embeddings else shape.vocab_size * shape.width
    stacks = shape.layers * encoder_layer + decoder_layers * decoder_layer + 2 * _norm(shape)
    return _embeddings(shape) + stacks + relative + head


def non_embedding_parameters(shape: TransformerShape) -> int:
    """Decoder parameters without the embedding matrices: the N of Kaplan et al. (2020), whose scaling laws
    exclude embeddings."""
    return (
        decoder_parameters(shape)
        - _embeddings(shape)
        - (0 if shape.tied_embeddings else shape.vocab_size * shape.width)
    )


def training_flops(parameters: float, tokens: float) -> float:
    """The 6ND rule: training FLOPs ~ 6 x parameters x tokens (2 for the forward multiply-adds, 4 for the
    backward), ignoring attention over the context (Kaplan et al., 2020, section 2.1)."""
    return 6.0 * parameters * tokens


def matmul_weights(shape: TransformerShape) -> int:
    """Weights that take part in a matrix multiply per token of a decoder: every attention and feed-forward matrix
    in every layer, plus the output projection onto the vocabulary (vocab x width), whether or not it shares its
    weights with the input embedding. Biases, norms and the embedding lookups do no multiply-adds and are left out."""
    d, inner, kv = shape.width, shape.inner, shape.kv_inner
    attention = d * inner + 2 * d * kv + inner * d
    ffn = (3 if shape.gated_ffn else 2) * d * shape.ffn
    return shape.layers * (attention + ffn) + shape.vocab_size * d


def gpt_shape_for(
    parameters: float, vocab_size: int, context: int, aspect_ratio: int = 64, head_dim: int = 64
) -> TransformerShape:
    """A GPT-2-style decoder (feed-forward 4 x width, heads of `head_dim`, tied embeddings, learned positions) whose
    `matmul_weights` come closest to `parameters`, with width about `aspect_ratio` x layers: the shape to price a
    model that so far exists only as a parameter count (a scaling-law plan). GPT-2 small's ratio is 64 (768 / 12),
    Llama-2-7B's 128; Kaplan et al. (2020, figure 5) found the loss within a few percent over ratios of about 20-200."""
    if parameters <= 0 or aspect_ratio < 1 or head_dim < 1:
        raise ValueError("parameters, aspect_ratio and head_dim must be positive")
    candidates = []
    for layers in range(1, 513):
        width = max(head_dim, round(aspect_ratio * layers / head_dim) * head_dim)
        shape = TransformerShape(vocab_size, width, layers, width // head_dim, 4 * width, context=context)
        candidates.append((abs(math.log(matmul_weights(shape) / parameters)), layers, shape))
    return min(candidates, key=lambda c: c[:2])[2]


def training_flops_per_token(shape: TransformerShape, context: int, recompute_activations: bool = False) -> float:
    """Training FLOPs per token of a decoder, counting every matrix multiply the model runs, the output projection
    onto the vocabulary included: 6 M + 12 L H Q T.

    This is PaLM's formula (Chowdhery et al., 2022, appendix B: 6N + 12LHQT) with N taken as `matmul_weights`, the
    convention of nanoGPT's `estimate_mfu` (whose N keeps the tied token embedding, which is the output
    projection). Kaplan et al.'s 6N uses non-embedding parameters and so leaves the vocabulary projection out
    (a third of the work at vocabulary 8,192 and width 256). M: weights in matrix multiplies, L layers, H heads,
    Q head width, T tokens of context; 6 = 2 FLOPs per multiply-add forward + 4 backward; the attention term
    counts the full T x T score and value products, as PaLM does (a causal kernel may skip half).

    `recompute_activations=True` counts the hardware FLOPs of a step with activation checkpointing, which runs
    each block's forward twice (the output projection is outside the blocks and runs once): divide a throughput
    by the default count for MFU, by this one for HFU (Korthikanti et al., 2022, section 5). It is an upper bound:
    torch's non-reentrant checkpoint stops recomputing once the tensors backward needs are back, so it skips the
    last matrix multiply of each block (FlopCounterMode measures the rest). Tests check both against torch's
    FlopCounterMode on a real GPT-2."""
    head_dim = shape.head_dim or shape.width // shape.heads
    attention = 2 * 2 * shape.layers * shape.heads * head_dim * context  # QK^T and AV, per token, forward
    flops = 6 * matmul_weights(shape) + 3 * attention
    if recompute_activations:  # one more forward of every block
        flops += 2 * (matmul_weights(shape) - shape.vocab_size * shape.width) + attention
    return flops


def model_flops_utilisation(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """MFU: achieved model FLOP/s (throughput x FLOPs per token) over the hardware's peak FLOP/s."""
    if peak_flops <= 0:
        raise ValueError("peak_flops must be positive")
    return tokens_per_second * flops_per_token / peak_flops


def model_state_bytes_per_device(
    parameters: float, devices: int = 1, zero_stage: int = 0, mixed_precision: bool = True
) -> dict[str, float]:
    """Bytes per device for parameters, gradients and Adam optimizer states (activations excluded).

    Mixed precision (Rajbhandari et al., 2020, ZeRO, section 3.1): 2 bytes of bf16/fp16 weights, 2 of gradients,
    and 12 of optimizer state (fp32 master weights, momentum, variance) per parameter, 16 in all. Pure fp32:
    4 + 4 + 8. ZeRO stage 1 shards the optimizer states over `devices`, stage 2 also the gradients, stage 3 (and
    FSDP's full sharding) also the parameters.
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if devices < 1:
        raise ValueError(f"devices must be at least 1, got {devices}")
    weights, grads, optimizer = (2.0, 2.0, 12.0) if mixed_precision else (4.0, 4.0, 8.0)
    return {
        "parameters": parameters * weights / (devices if zero_stage >= 3 else 1),
        "gradients": parameters * grads / (devices if zero_stage >= 2 else 1),
        "optimizer": parameters * optimizer / (devices if zero_stage >= 1 else 1),
    }


def activation_bytes_per_layer(
    batch: int, context: int, width: int, heads: int, bytes_per_value: int = 2, checkpointing: bool = False
) -> float:
    """Activation memory one transformer layer keeps for the backward pass, in bytes.

    Without recomputation: s b h (34 + 5 a s / h) for 16-bit activations (Korthikanti et al., 2022, "Reducing
    Activation Recomputation in Large Transformer Models", equation 1; s context, b batch, h width, a heads),
    scaled by bytes_per_value / 2. With full activation checkpointing only the layer's input is kept, s b h
    values, and everything else is recomputed during the backward pass.
    """
    values = context * batch * width
    if checkpointing:
        return values * bytes_per_value
    return values * (34 + 5 * heads * context / width) * bytes_per_value / 2


def training_time_seconds(flops: float, devices: int, peak_flops_per_device: float, mfu: float) -> float:
    """Wall time to spend `flops` on `devices` accelerators, each at `mfu` (0-1] of its peak FLOP/s."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu is a fraction in (0, 1], got {mfu}")
    if devices < 1 or peak_flops_per_device <= 0:
        raise ValueError("need at least one device with a positive peak")
    return flops / (devices * peak_flops_per_device * mfu)
