"""Tiny random models in real model folders, for tests where the serving contract, not the model, is under test.

They use the real tokenizers of SmolLM2 and MiniLM (from the course's asset cache) and the course's handlers, so
everything but the weights is what the notebook serves; the weights are random and a few MB.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from utils import assets
from utils.serving import write_model_folder

GENRES = ["comedy", "history", "tragedy"]
_BUILT: dict[str, Path] = {}  # one build per kind and limits per test process
_ROOT = Path(tempfile.mkdtemp(prefix="tiny-models-"))
atexit.register(shutil.rmtree, _ROOT, True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine threads that wait for each other at
    every operator make them many times slower; restored afterwards for the other tests. A test module imports it
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smollm2_tokenizer():
    """SmolLM2's real tokenizer (vocabulary, chat template, pad and EOS ids) from the asset cache."""
    return AutoTokenizer.from_pretrained(assets.smollm2_dir())


def tiny_llama(tokenizer, seed: int = 0, **config) -> LlamaForCausalLM:
    """A random 2-layer, 32-wide Llama in eval mode with `tokenizer`'s vocabulary and pad id; `config` adds or
    overrides LlamaConfig fields (EOS id, context, tied embeddings)."""
    torch.manual_seed(seed)
    shape = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    base = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **shape}
    return LlamaForCausalLM(LlamaConfig(**base | config)).eval()


def tiny_generator(limits: dict[str, int] | None = None) -> Path:
    """`tiny_generator_folder` built once per test process (and per `limits`)."""
    key = "generator" + json.dumps(limits or {}, sort_keys=True)
    if key not in _BUILT:
        _BUILT[key] = tiny_generator_folder(_ROOT / f"generator-{len(_BUILT)}", limits)
    return _BUILT[key]


def tiny_classifier() -> Path:
    """`tiny_classifier_folder` built once per test process."""
    if "classifier" not in _BUILT:
        _BUILT["classifier"] = tiny_classifier_folder(_ROOT / "classifier")
    return _BUILT["classifier"]


def tiny_generator_folder(dest: Path, limits: dict[str, int] | None = None) -> Path:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer and chat template, served as text-generation."""
    weights = dest.parent / f"{dest.name}-weights"
    tokenizer = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    model = tiny_llama(
        tokenizer,
        pad_token_id=None,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.save_pretrained(weights)
    tokenizer.save_pretrained(weights)
    manifest = {
        "task": "text-generation",
        "max_input_tokens": 128,
        "max_new_tokens": 64,
        "default_new_tokens": 8,
        "max_inputs": 4,
    } | (limits or {})
    return write_model_folder(dest, weights, manifest)


def tiny_classifier_folder(dest: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer and a random 3-genre head, served as text-classification."""
    torch.manual_seed(0)
    weights = dest.parent / f"{dest.name}-weights"
    config = BertConfig(
        vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    BertModel(config).save_pretrained(weights)
    AutoTokenizer.from_pretrained(assets.verify("minilm")).save_pretrained(weights)
    head = weights.parent / f"{dest.name}-head.safetensors"
    save_file({"weight": torch.randn(len(GENRES), 32), "bias": torch.zeros(len(GENRES))}, head)
    manifest = {"task": "text-classification", "labels": GENRES, "max_input_tokens": 64, "max_inputs": 8}
    return write_model_folder(dest, weights, manifest, extra_files={"head.safetensors": head})
