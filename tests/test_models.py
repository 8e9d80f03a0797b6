"""Model factories: the three families build, count parameters like `sum(p.numel())`, and predict what they should."""

import pytest
import torch

from utils.models import count_parameters, small_bert, small_gpt, small_t5


@pytest.mark.parametrize(
    "factory",
    [lambda: small_gpt(100, 32, 2, 32, 4), lambda: small_bert(100, 32, 2, 32, 4), lambda: small_t5(100, 2, 32, 4)],
)
def test_parameter_count_matches_sum_of_numel(factory):
    model = factory()
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    for p in list(model.parameters())[:3]:
        p.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) < count_parameters(model)


def test_gpt_ties_input_and_output_embeddings():
    model = small_gpt(100, 32, 2, 32, 4)
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = sum(t.numel() for t in model.state_dict().values() if t.dtype.is_floating_point)
    assert count_parameters(model) == untied - 100 * 32  # the tied matrix counted once


def test_shapes_of_what_each_family_predicts():
    ids = torch.randint(3, 100, (2, 10))
    target = torch.randint(3, 100, (2, 4))
    assert small_gpt(100, 32, 2, 32, 4)(input_ids=ids).logits.shape == (2, 10, 100)
    assert small_bert(100, 32, 2, 32, 4)(input_ids=ids).logits.shape == (2, 10, 100)
    assert small_t5(100, 2, 32, 4)(input_ids=ids, decoder_input_ids=target).logits.shape == (2, 4, 100)


def test_dropout_switches_match_between_the_gpt_and_the_bert():
    gpt, bert = small_gpt(100, 32, 2, 32, 4), small_bert(100, 32, 2, 32, 4, dropout=0.0)
    assert gpt.config.resid_pdrop == gpt.config.attn_pdrop == 0.0
    assert bert.config.hidden_dropout_prob == bert.config.attention_probs_dropout_prob == 0.0
    assert small_bert(100, 32, 2, 32, 4).config.hidden_dropout_prob == 0.1  # BERT's own default
    ids = torch.randint(3, 100, (2, 10))
    bert.train()
    torch.testing.assert_close(bert(input_ids=ids).logits, bert(input_ids=ids).logits)  # no dropout noise
