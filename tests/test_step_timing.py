"""Step timing for notebook 09: alternated rounds time every variant alike, and a paired speed-up reports its spread."""

import pytest
import torch

from utils.models import small_gpt
from utils.step_timing import alternated_step_times, paired_speedup, quartiles, training_step


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return small_gpt(64, context=8, layers=1, width=16, heads=2)


def test_training_step_trains_and_autocast_keeps_fp32_weights():
    model, ids = _model(), torch.randint(0, 64, (2, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = [training_step(model, ids, optimizer)[1] for _ in range(5)]
    assert losses[-1] < losses[0]  # the step really updates the weights
    seconds, loss = training_step(model, ids, optimizer, autocast_dtype=torch.bfloat16)
    assert seconds > 0 and loss == loss
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="batch x tokens"):
        training_step(model, ids[0], optimizer)


def test_alternated_times_every_model_every_round_and_leaves_models_apart():
    models = {"a": _model(), "b": _model()}
    before = models["b"].transformer.wte.weight.detach().clone()
    times = alternated_step_times(models, torch.randint(0, 64, (2, 8)), rounds=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t > 0 for v in times.values() for t in v)
    assert not torch.equal(before, models["b"].transformer.wte.weight)  # b trained with its own optimizer
    with pytest.raises(ValueError):
        alternated_step_times(models, torch.randint(0, 64, (2, 8)), rounds=0)
    batches = {"a": torch.randint(0, 64, (1, 8)), "b": torch.randint(0, 64, (4, 8))}  # one batch per model
    assert [len(v) for v in alternated_step_times(models, batches, rounds=2, warmup=0).values()] == [2, 2]


def test_paired_speedup_uses_per_round_ratios():
    result = paired_speedup([2.0, 4.0, 3.0, 8.0], [1.0, 2.0, 3.0, 2.0])  # ratios 2, 2, 1, 4
    assert result["median"] == 2.0 and result["min"] == 1.0 and result["max"] == 4.0 and result["rounds"] == 4
    assert result["q1"] == 1.75 and result["q3"] == 2.5
    assert quartiles([1.0, 2.0, 3.0]) == (1.5, 2.0, 2.5)
    with pytest.raises(ValueError):
        paired_speedup([1.0, 2.0], [1.0])
