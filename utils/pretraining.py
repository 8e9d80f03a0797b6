"""Pretraining from scratch on a token stream: batches, a training loop, and the losses that tell whether a
language model learned anything (against a unigram baseline, in nats per token and bits per byte).

Defined for notebook 01 (book chapter 1: causal and masked language modelling); chapter 2's scaling sweep reuses
the loop and `gpt_sweep`. Works with any transformers model whose forward returns `.loss`. Needs torch,
transformers and tqdm; `gpt_sweep` also needs `utils.models`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup


def encode_texts(tokenizer: Tokenizer, texts: list[str], eos_id: int) -> torch.Tensor:
    """All texts tokenized and concatenated into one 1-D int64 stream, each text followed by `eos_id`."""
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def random_windows(ids: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`batch` windows of `length` consecutive tokens at random offsets of the stream: shape (batch, length)."""
    if len(ids) <= length:
        raise ValueError(f"the token stream ({len(ids)} tokens) is shorter than one window of {length}")
    starts = torch.randint(0, len(ids) - length, (batch,), generator=generator)
    return torch.stack([ids[s : s + length] for s in starts.tolist()])


def unigram_cross_entropy(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats/token) on `eval_ids` of a model that ignores context and predicts each token with its
    training-set frequency (add-one smoothed). A language model that does not beat this has learned nothing
    beyond word counts."""
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + 1.0
    log_probs = (counts / counts.sum()).log()
    return -log_probs[eval_ids].mean().item()


@torch.no_grad()
def causal_lm_loss(model: torch.nn.Module, ids: torch.Tensor, context: int, batch: int = 8) -> float:
    """Mean next-token cross-entropy (nats/token) of a causal LM over `ids`, cut into non-overlapping blocks of
    `context` tokens (each block predicts its last context - 1 tokens; a final partial block is dropped)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    blocks = ids[: len(ids) // context * context].view(-1, context)
    if len(blocks) == 0:
        raise ValueError(f"need at least {context} tokens to evaluate, got {len(ids)}")
    total, count = 0.0, 0
    for chunk in blocks.split(batch):
        chunk = chunk.to(device)
        total += model(input_ids=chunk, labels=chunk).loss.item() * chunk.shape[0] * (context - 1)
        count += chunk.shape[0] * (context - 1)
    model.train(was_training)
    return total / count


def bits_per_byte(nats_per_token: float, n_tokens: int, n_bytes: int) -> float:
    """Convert a loss in nats per token to bits per UTF-8 byte of text, the unit that compares models with
    different tokenizers (a model with bigger tokens has a higher per-token loss for the same skill)."""
    return nats_per_token * n_tokens / n_bytes / math.log(2)


def train(
    model: torch.nn.Module,
    make_batch: Callable[[int], dict[str, torch.Tensor]],
    steps: int,
    lr: float,
    evaluate: Callable[[], float],
    eval_every: int,
    on_eval: Callable[[int, float], None] | None = None,
    warmup: int | None = None,
) -> list[dict[str, float]]:
    """A plain pretraining loop: AdamW, linear warmup then cosine decay, gradient clipping at 1.0.

    `make_batch(step)` returns the model's keyword inputs (with labels); `evaluate()` returns a validation loss,
    computed at step 0, every `eval_every` steps and at the end, when `on_eval(step, loss)` is also called.
    Returns one row per step: step, train_loss, lr, and val_loss where evaluated. AdamW's betas (0.9, 0.95) and
    weight decay 0.1 follow GPT-3's recipe (Brown et al., 2020, appendix B). A progress bar shows unless
    TQDM_DISABLE=1 (the headless runner sets it).
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup if warmup is not None else steps // 20, steps)
    history: list[dict[str, float]] = []

    def run_eval(step: int) -> float:
        loss = evaluate()
        if on_eval is not None:
            on_eval(step, loss)
        model.train()
        return loss

    history.append({"step": 0, "val_loss": run_eval(0)})
    model.train()
    quiet = os.environ.get("TQDM_DISABLE") == "1"  # tqdm's notebook bar ignores the variable, so pass it on
    for step in tqdm(range(1, steps + 1), desc="training", leave=False, disable=quiet):
        loss = model(**make_batch(step)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        row = {"step": step, "train_loss": loss.item(), "lr": schedule.get_last_lr()[0]}
        if step % eval_every == 0 or step == steps:
            row["val_loss"] = run_eval(step)
        history.append(row)
    model.eval()
    return history


@torch.no_grad()
def masked_token_rank(model: torch.nn.Module, tokenizer: Any, text: str, answer: str) -> int:
    """Rank (1 = top guess) of `answer` among a masked LM's predictions for the single mask token in `text`.

    `answer` must be exactly one token of `tokenizer` (with byte-level BPE, include its leading space). Raises
    ValueError otherwise, or when `text` does not hold exactly one mask token.
    """
    answer_ids = tokenizer(answer, add_special_tokens=False).input_ids
    if len(answer_ids) != 1:
        raise ValueError(f"answer {answer!r} is {len(answer_ids)} tokens in this vocabulary; pick a one-token answer")
    encoded = tokenizer(text, return_tensors="pt").to(next(model.parameters()).device)
    positions = (encoded.input_ids[0] == tokenizer.mask_token_id).nonzero().flatten()
    if len(positions) != 1:
        raise ValueError(f"text must hold exactly one {tokenizer.mask_token}, found {len(positions)}")
    model.eval()
    logits = model(**encoded).logits[0, positions[0]]
    return int((logits > logits[answer_ids[0]]).sum().item()) + 1


@torch.no_grad()
def masked_prediction_report(
    model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], tokenizer: Any
) -> dict[str, float]:
    """What a masked LM's top guess is at the positions its labels score (labels != -100), over `batches`.

    A token is a *word* when its string in `tokenizer` (`convert_ids_to_tokens`) holds a letter (" be", "ing"),
    so line breaks, commas and full stops are not. Returns accuracy (top guess = the hidden token),
    word_accuracy (the same, over hidden tokens that are words) and guesses_that_are_words (the share of top
    guesses that are words, whatever the target): early in training a masked LM guesses the commonest tokens
    (line breaks, commas) everywhere, and this share is what shows it moving on to words.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    guesses, targets = [], []
    for batch in batches:
        labels = batch["labels"]
        logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels"}).logits.cpu()
        scored = labels != -100
        guesses.append(logits.argmax(-1)[scored])
        targets.append(labels[scored])
    model.train(was_training)
    guess, target = torch.cat(guesses), torch.cat(targets)
    if len(target) == 0:
        raise ValueError("no position has a label other than -100; nothing was masked")
    tokens = tokenizer.convert_ids_to_tokens(torch.cat([target, guess]).tolist())
    is_word = torch.tensor([any(ch.isalpha() for ch in token) for token in tokens], dtype=torch.bool)
    word_target, word_guess = is_word[: len(target)], is_word[len(target) :]
    return {
        "accuracy": (guess == target).float().mean().item(),
        "word_accuracy": (guess == target)[word_target].float().mean().item() if word_target.any() else 0.0,
        "guesses_that_are_words": word_guess.float().mean().item(),
    }


def gpt_sweep(
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    vocab_size: int,
    shapes: list[tuple[int, int]],
    steps: list[int],
    batch: int,
    context: int,
    lr: float = 3e-3,
    seed: int = 0,
) -> list[dict[str, float]]:
    """Train one small GPT per (layers, width) in `shapes` and step count in `steps`, each from scratch with its
    own full warmup + cosine schedule (as Hoffmann et al., 2022 did, rather than reading one run's intermediate
    losses). Returns one row per run: layers, width, parameters, non_embedding (Kaplan's N), tokens, flops
    (6 x non_embedding x tokens), val_loss and seconds."""
    from utils.models import count_parameters, small_gpt

    rows = []
    for layers, width in tqdm(shapes, desc="model sizes", disable=os.environ.get("TQDM_DISABLE") == "1"):
        for n_steps in steps:
            torch.manual_seed(seed)
            model = small_gpt(vocab_size, context, layers, width, heads=max(width // 32, 1))
            windows = torch.Generator().manual_seed(seed)

            def make_batch(step: int, model_windows: torch.Generator = windows) -> dict[str, torch.Tensor]:
                x = random_windows(train_ids, batch, context, model_windows)
                return {"input_ids": x, "labels": x}

            start = time.perf_counter()
            history = train(
                model, make_batch, n_steps, lr, lambda m=model: causal_lm_loss(m, val_ids, context), n_steps
            )
            embedding = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
            n = count_parameters(model) - embedding
            tokens = n_steps * batch * context
            rows.append(
                {
                    "layers": layers,
                    "width": width,
                    "parameters": count_parameters(model),
                    "non_embedding": n,
                    "tokens": tokens,
                    "flops": 6.0 * n * tokens,
                    "val_loss": history[-1]["val_loss"],
                    "seconds": time.perf_counter() - start,
                }
            )
    return rows
