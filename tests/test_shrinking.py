"""Shrinking (utils/shrinking.py), decode measurements (utils/decoding.py) and the deployed classifier's data
(utils/finetuning.py's sentence-embedding head, chapter 10's split), on tiny models: ONNX export equals PyTorch,
int8 stays close, distillation learns, byte counts match the model's parameters."""

import numpy as np
import pytest
import torch
from tiny_models import one_thread, tiny_classifier, tiny_generator  # noqa: F401 (a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from utils import decoding as D
from utils import finetuning as ft
from utils import shrinking as Z
from utils.serving import load_handlers

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, see tiny_models.one_thread


@pytest.fixture(scope="module")
def classifier():
    folder = tiny_classifier()
    model = load_handlers(folder).model_fn(str(folder))
    batch = model.tokenizer(
        ["To be, or not to be", "Now is the winter of our discontent made glorious"], padding=True, return_tensors="np"
    )
    return model, (batch["input_ids"], batch["attention_mask"])


@pytest.fixture(scope="module")
def onnx_files(classifier, tmp_path_factory):
    model, inputs = classifier
    folder = tmp_path_factory.mktemp("onnx")
    fp32 = Z.export_onnx(model.network, tuple(torch.from_numpy(x) for x in inputs), folder / "fp32.onnx")
    return fp32, Z.quantize_int8(fp32, folder / "int8.onnx")


def test_onnx_export_computes_what_pytorch_computes_at_any_batch_and_length(classifier, onnx_files):
    model, inputs = classifier
    reference, exported = Z.torch_runner(model.network), Z.OnnxModel(onnx_files[0])
    assert np.allclose(exported(*inputs), reference(*inputs), atol=1e-5)
    longer = model.tokenizer(["a"] * 3 + ["a much longer passage " * 8], padding=True, return_tensors="np")
    assert np.allclose(
        exported(longer["input_ids"], longer["attention_mask"]),
        reference(longer["input_ids"], longer["attention_mask"]),
        atol=1e-5,
    )


def test_int8_is_smaller_and_close(classifier, onnx_files):
    _, inputs = classifier
    fp32, int8 = onnx_files
    assert Z.file_size_mb(int8) < 0.5 * Z.file_size_mb(fp32)
    difference = np.abs(Z.OnnxModel(int8)(*inputs) - Z.OnnxModel(fp32)(*inputs)).max()
    assert 0 < difference < 0.1  # quantized, so not identical, but logits stay close


def test_latency_comparison_alternates_and_throughput_counts_examples(classifier, onnx_files):
    _, inputs = classifier
    variants = {"fp32": Z.OnnxModel(onnx_files[0]), "int8": Z.OnnxModel(onnx_files[1])}
    seconds = Z.compare_latency(variants, [inputs] * 5, warmup=1)
    assert set(seconds) == {"fp32", "int8"} and all(len(s) == 5 and min(s) > 0 for s in seconds.values())
    assert Z.throughput(variants["int8"], inputs, repeats=2) > 0


def test_peak_memory_of_a_fresh_process_grows_with_the_model(classifier, onnx_files):
    _, inputs = classifier
    floor = Z.peak_memory_mb("none", None, inputs)
    onnx = Z.peak_memory_mb("onnx", onnx_files[0], inputs)
    assert 10 < floor < onnx
    with pytest.raises(ValueError, match="kind"):
        Z.peak_memory_mb("pickle", None, inputs)


def test_keep_layers_copies_a_shallower_student_and_distillation_lowers_its_loss(classifier):
    model, inputs = classifier
    student = Z.keep_layers(model.network, [1])
    assert len(student.encoder.encoder.layer) == 1 and len(model.network.encoder.encoder.layer) == 2
    assert student.encoder.config.num_hidden_layers == 1
    batch = tuple(torch.from_numpy(x) for x in inputs)
    torch.manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1)  # far from what the student computes
    losses = Z.distill_embeddings(student, [batch], [target], epochs=20, lr=2e-3)
    assert not student.training
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="keep must name"):
        Z.keep_layers(model.network, [5])


# ---------------------------------------------------------------------------------------------------- decoding


def test_weight_bytes_count_a_tied_embedding_once_and_an_untied_one_as_a_row():
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    tied = LlamaForCausalLM(config)
    total = sum(p.numel() for p in tied.parameters()) * 4
    assert D.weight_bytes_per_token(tied) == total
    config.tie_word_embeddings = False
    untied = LlamaForCausalLM(config)
    untied_total = sum(p.numel() for p in untied.parameters()) * 4
    assert D.weight_bytes_per_token(untied) == untied_total - 1000 * 16 * 4 + 16 * 4
    assert D.kv_cache_bytes_per_token(config, context=10) == 2 * 1 * 10 * 1 * 8 * 4
    assert D.roofline_tokens_per_s(10.0, 1e9) == pytest.approx(10.0)


def test_step_times_has_one_entry_per_generated_token_and_the_cache_matters():
    folder = tiny_generator()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["Hello there"], return_tensors="pt")
    cached, uncached = D.step_times(model, inputs, 4), D.step_times(model, inputs, 4, use_cache=False)
    assert len(cached["step_s"]) == len(uncached["step_s"]) == 3 and cached["prefill_s"] > 0
    assert D.decode_tokens_per_s(model, inputs, 3, repeats=1) > 0
    assert D.skeleton_step_s(model, inputs, 3) > 0


def test_static_cache_loop_picks_what_generate_picks_and_the_linear_floor_is_a_time():
    folder = tiny_generator()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["Hello there"], return_tensors="pt")
    loop = D.static_cache_step_times(model, inputs, 6)
    greedy = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert loop["token_ids"] == greedy[0, inputs["input_ids"].shape[1] :].tolist() and len(loop["step_s"]) == 5
    assert 0 < D.linear_layers_s(model, repeats=2) < 1
    with pytest.raises(ValueError, match="one prompt"):
        D.static_cache_step_times(model, tokenizer(["a", "b"], return_tensors="pt"), 4)


def test_numpy_matvec_computes_what_pytorch_computes_and_restores_the_model():
    folder = tiny_generator()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    inputs = tokenizer(["Hello there"], return_tensors="pt")
    plain = D.static_cache_step_times(model, inputs, 6)["token_ids"]
    one_token = {"input_ids": inputs["input_ids"][:, :1]}
    with torch.inference_mode():
        reference = model(**one_token).logits
        with D.numpy_matvec_linears(model):
            swapped = model(**one_token).logits
            assert D.static_cache_step_times(model, inputs, 6)["token_ids"] == plain
    assert torch.allclose(swapped, reference, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert D.matvec_bandwidth_gb_s(256, 128, megabytes=16, repeats=1, library="numpy") > 0.1


def test_read_and_matvec_bandwidths_are_positive_rates():
    assert D.read_bandwidth_gb_s(megabytes=16, repeats=2) > 0.1
    assert D.matvec_bandwidth_gb_s(256, 128, megabytes=16, repeats=1) > 0.1


# ------------------------------------------------------------------------------------------ the genre classifier

PLAY = """ACT I. SCENE I.

[Enter two Lords.]

First Lord.
Good morrow, cousin. [Aside.] He sleeps.
What news abroad?

SECOND LORD
The king is dead, and all the realm is mourning his departure from the world.
"""


def test_genre_splits_are_chapter_10s_plays_balanced_by_genre():
    texts = {play: PLAY * 20 for play in ft.FOLIO_GENRES}
    train, test = ft.genre_splits(train_per_genre=9, test_per_genre=4, words=8, texts=texts)
    assert {p["play"] for p in test} == set(ft.TEST_PLAYS)
    assert not {p["play"] for p in train} & (set(ft.TEST_PLAYS) | set(ft.VALIDATION_PLAYS))
    for rows, per_genre in ((train, 9), (test, 4)):
        assert np.bincount(ft.labels_of(rows)).tolist() == [per_genre] * len(ft.GENRES)
        assert all(ft.FOLIO_GENRES[p["play"]] == p["label"] and "Lord" not in p["text"] for p in rows)
    with pytest.raises(ft.DatasetError, match="lacks"):
        ft.genre_splits(1, 1, texts={})


def test_fit_head_separates_separable_embeddings():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    labels = np.repeat(np.arange(3), 20)
    embeddings = centres[labels] + 0.05 * rng.standard_normal((60, 8))
    weight, bias = ft.fit_head(embeddings, labels)
    assert weight.shape == (3, 8) and bias.shape == (3,)
    assert ((embeddings @ weight.T + bias).argmax(1) == labels).all()
