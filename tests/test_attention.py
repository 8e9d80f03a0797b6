"""Self-attention written out, against PyTorch's kernels and a real transformers BERT layer."""

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from utils.attention import MultiHeadSelfAttention, causal_mask, from_bert_self_attention, scaled_dot_product_attention


@pytest.mark.parametrize("shape", [(1, 1, 5, 8), (2, 4, 10, 16), (3, 2, 7, 32)])
@pytest.mark.parametrize("causal", [False, True])
def test_matches_torch_sdpa(shape, causal):
    q, k, v = torch.randn(3, *shape).unbind(0)
    ours, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=causal))
    torch.testing.assert_close(weights.sum(-1), torch.ones(shape[:-1]))


def test_boolean_mask_matches_torch_and_zeroes_masked_weights():
    q, k, v = torch.randn(3, 2, 3, 6, 8).unbind(0)
    mask = torch.rand(2, 1, 6, 6) > 0.5
    mask[..., 0] = True
    ours, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()


def test_causal_mask_is_lower_triangular():
    mask = causal_mask(4)
    assert mask.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


def test_multi_head_matches_torch_multihead_attention():
    ours = MultiHeadSelfAttention(32, 4)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight), ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight), ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(2, 9, 32)
    out, weights = ours(x)
    ref_out, ref_weights = ref(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(weights, ref_weights)


def test_width_must_split_evenly_over_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(30, 4)


def test_weights_copied_from_bert_reproduce_its_attention():
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    bert = BertModel(config, add_pooling_layer=False).eval()
    bert.set_attn_implementation("eager")
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        real = bert(input_ids=ids, output_attentions=True, output_hidden_states=True)
        _, ours = from_bert_self_attention(bert.encoder.layer[0].attention.self, heads=4)(real.hidden_states[0])
    torch.testing.assert_close(ours, real.attentions[0])
