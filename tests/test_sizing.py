"""Sizing calculators against transformers models built on the meta device (no memory), and the FLOP and
memory arithmetic by hand."""

import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from utils.sizing import (
    TransformerShape,
    activation_bytes_per_layer,
    decoder_parameters,
    encoder_decoder_parameters,
    encoder_parameters,
    gpt_shape_for,
    matmul_weights,
    model_flops_utilisation,
    model_state_bytes_per_device,
    non_embedding_parameters,
    training_flops,
    training_flops_per_token,
    training_time_seconds,
)


def _count(model_class, config):
    with torch.device("meta"):
        model = model_class(config)
    return sum(p.numel() for p in model.parameters())


GPT2_SIZES = {"small": (768, 12, 12), "medium": (1024, 24, 16), "large": (1280, 36, 20), "xl": (1600, 48, 25)}


@pytest.mark.parametrize("name", GPT2_SIZES)
def test_gpt2_counts_are_exact(name):
    width, layers, heads = GPT2_SIZES[name]
    shape = TransformerShape(50257, width, layers, heads, 4 * width, context=1024)
    config = GPT2Config(n_embd=width, n_layer=layers, n_head=heads)
    assert decoder_parameters(shape) == _count(GPT2LMHeadModel, config)


def test_gpt2_small_is_the_published_124m():
    assert decoder_parameters(TransformerShape(50257, 768, 12, 12, 3072, context=1024)) == 124_439_808


@pytest.mark.parametrize("width,layers,heads", [(768, 12, 12), (1024, 24, 16)])
def test_bert_base_and_large_counts_are_exact(width, layers, heads):
    shape = TransformerShape(30522, width, layers, heads, 4 * width, context=512)
    config = BertConfig(
        hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=4 * width
    )
    assert encoder_parameters(shape) == _count(BertModel, config)


@pytest.mark.parametrize("width,layers,heads,ffn", [(512, 6, 8, 2048), (768, 12, 12, 3072)])
def test_t5_small_and_base_counts_are_exact(width, layers, heads, ffn):
    shape = TransformerShape(32128, width, layers, heads, ffn, head_dim=64, bias=False, norm="rmsnorm")
    config = T5Config(d_model=width, num_layers=layers, num_heads=heads, d_ff=ffn, d_kv=64)
    assert encoder_decoder_parameters(shape) == _count(T5ForConditionalGeneration, config)


def test_llama_2_7b_count_is_exact():
    shape = TransformerShape(
        32000, 4096, 32, 32, 11008, bias=False, norm="rmsnorm", gated_ffn=True, tied_embeddings=False
    )
    config = LlamaConfig(
        vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, intermediate_size=11008
    )
    assert decoder_parameters(shape) == _count(LlamaForCausalLM, config) == 6_738_415_616


def test_grouped_query_attention_is_counted():
    shape = TransformerShape(49152, 576, 30, 9, 1536, kv_heads=3, bias=False, norm="rmsnorm", gated_ffn=True)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        intermediate_size=1536,
        tie_word_embeddings=True,
    )
    assert decoder_parameters(shape) == _count(LlamaForCausalLM, config) == 134_515_008  # SmolLM2-135M


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        TransformerShape(100, 64, 2, 8, 256, kv_heads=3)
    with pytest.raises(ValueError, match="width must be positive"):
        TransformerShape(100, 0, 2, 8, 256)


def test_flops_rules():
    assert training_flops(1e9, 20e9) == 1.2e20
    shape = TransformerShape(50257, 768, 12, 12, 3072, context=1024)
    assert non_embedding_parameters(shape) == 124_439_808 - 50257 * 768 - 1024 * 768
    per_token = training_flops_per_token(shape, 1024)
    layer_matrices = 12 * (4 * 768 * 768 + 2 * 768 * 3072)  # attention (q, k, v, out) + feed-forward, 12 layers
    assert matmul_weights(shape) == layer_matrices + 50257 * 768  # the output projection onto the vocabulary
    assert per_token == 6 * matmul_weights(shape) + 12 * 12 * 12 * 64 * 1024
    assert model_flops_utilisation(1000, per_token, per_token * 2000) == 0.5


def _counted_flops_per_token(recompute: bool) -> float:
    """Every matrix multiply of one training step of a real GPT-2, counted by torch (eager attention, so its
    score and value products are bmm calls the counter sees), per token."""
    from torch.utils.flop_counter import FlopCounterMode

    from utils.models import small_gpt

    torch.manual_seed(0)
    model = small_gpt(512, 32, 2, 64, 4)
    model.set_attn_implementation("eager")
    if recompute:
        model.activation_checkpointing_enable()
    ids = torch.randint(0, 512, (2, 32))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops() / ids.numel()


def test_flops_per_token_equal_a_count_of_the_model_s_matrix_multiplies():
    shape = TransformerShape(512, 64, 2, 4, 256, context=32)
    assert _counted_flops_per_token(recompute=False) == training_flops_per_token(shape, 32)
    counted = _counted_flops_per_token(recompute=True)  # checkpointing recomputes most of each block's forward
    assert training_flops_per_token(shape, 32) < counted <= training_flops_per_token(shape, 32, True)


def test_zero_stages_divide_model_states():
    n = 1e9
    assert sum(model_state_bytes_per_device(n).values()) == 16e9  # 16 bytes per parameter, mixed precision
    assert sum(model_state_bytes_per_device(n, mixed_precision=False).values()) == 16e9  # 4 + 4 + 8
    stage1 = model_state_bytes_per_device(n, devices=8, zero_stage=1)
    assert stage1 == {"parameters": 2e9, "gradients": 2e9, "optimizer": 1.5e9}
    stage3 = model_state_bytes_per_device(n, devices=8, zero_stage=3)
    assert sum(stage3.values()) == 2e9
    with pytest.raises(ValueError, match="zero_stage"):
        model_state_bytes_per_device(n, zero_stage=4)


def test_model_state_bytes_match_a_measured_fp32_adam_step():
    from utils.models import small_gpt

    model = small_gpt(512, 64, 2, 64, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 512, (2, 64))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    measured = {
        "parameters": sum(p.numel() * p.element_size() for p in model.parameters()),
        "gradients": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
        "optimizer": sum(
            t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step"
        ),
    }
    assert measured == model_state_bytes_per_device(n, mixed_precision=False)


def test_activation_memory_formula_and_checkpointing():
    full = activation_bytes_per_layer(batch=1, context=2048, width=4096, heads=32)
    assert full == 2048 * 4096 * (34 + 5 * 32 * 2048 / 4096)
    assert activation_bytes_per_layer(1, 2048, 4096, 32, checkpointing=True) == 2048 * 4096 * 2
    assert activation_bytes_per_layer(1, 2048, 4096, 32, bytes_per_value=4) == 2 * full


def test_training_time():
    assert training_time_seconds(1e18, devices=2, peak_flops_per_device=1e15, mfu=0.5) == 1000
    with pytest.raises(ValueError, match="fraction"):
        training_time_seconds(1e18, 1, 1e15, 1.5)


def test_gpt_shape_for_a_parameter_count():
    shape = gpt_shape_for(124e6, 50257, 1024)  # GPT-2 small's ratio of width to depth is 64
    assert (shape.layers, shape.width, shape.heads, shape.ffn) == (12, 768, 12, 3072)
    for target, vocab in ((3e5, 1024), (1e9, 32000), (7e10, 32000)):
        shape = gpt_shape_for(target, vocab, 2048, aspect_ratio=128)
        assert abs(math.log(matmul_weights(shape) / target)) < 0.3 and shape.width % 64 == 0
    with pytest.raises(ValueError):
        gpt_shape_for(0, 1000, 64)
