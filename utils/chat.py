"""Ask an instruction-tuned causal language model one question through its chat template, and time the answer;
measure how generation speed changes with the number of sequences decoded together; continue plain text greedily.

Defined for notebook 00 (SmolLM2-135M-Instruct's first replies, and whether its generation is limited by memory
or by arithmetic); reused wherever the course prompts a chat model (chapters 1, 10 and 13; chapter 1 also probes
with `continue_text` whether SmolLM2 has read its validation plays). `chat` needs a tokenizer with a chat template;
the other functions work with any transformers causal LM and its tokenizer.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ChatReply:
    """The model's answer, how many tokens it generated, and the wall time generation took (seconds)."""

    text: str
    new_tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")


def chat(model: Any, tokenizer: Any, message: str, max_new_tokens: int = 64, system: str | None = None) -> ChatReply:
    """Answer one user `message` (optionally after a `system` instruction) with greedy decoding.

    Greedy decoding makes the reply reproducible run to run, which is what a course wants; pass the model to
    `model.generate` yourself for sampling. Raises ValueError for an empty message or a tokenizer without a chat
    template (base models have none: prompt them with plain text instead).
    """
    if not message.strip():
        raise ValueError("chat() needs a non-empty message")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this tokenizer has no chat template; it is probably a base model, so prompt it directly")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
    seconds = time.perf_counter() - start
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return ChatReply(tokenizer.decode(new_tokens, skip_special_tokens=True).strip(), len(new_tokens), seconds)


def generation_throughput(
    model: Any, tokenizer: Any, prompt: str, batch_sizes: list[int], new_tokens: int = 32, repeats: int = 3
) -> list[dict[str, float]]:
    """Greedy decoding of exactly `new_tokens` tokens for `batch` copies of `prompt` at once, for each batch size.

    Each step of decoding reads every weight of the model once, whatever the batch, while the arithmetic grows
    with the batch. So if tokens per second (summed over the batch) grow almost in proportion to the batch, a step
    was limited by reading the weights (memory bandwidth, plus fixed per-step overheads), not by the multiply
    throughput; once arithmetic dominates, the total rate flattens. Each size is timed `repeats` times after one
    warm-up run and the median is kept. Returns one row per size: batch, seconds (median), tokens_per_s (summed
    over the batch), per_sequence_tokens_per_s and relative_spread ((max - min) / median of the timings).
    """
    if new_tokens < 1 or not batch_sizes or min(batch_sizes) < 1:
        raise ValueError("need new_tokens >= 1 and batch sizes >= 1")
    rows = []
    for batch in batch_sizes:
        inputs = tokenizer([prompt] * batch, return_tensors="pt").to(model.device)
        times = []
        for run in range(repeats + 1):
            start = time.perf_counter()
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.eos_token_id,
                )
            if run:  # the first run warms caches and allocator up and is not counted
                times.append(time.perf_counter() - start)
        assert output.shape == (batch, inputs["input_ids"].shape[1] + new_tokens)
        median = statistics.median(times)
        rows.append(
            {
                "batch": batch,
                "seconds": median,
                "tokens_per_s": batch * new_tokens / median,
                "per_sequence_tokens_per_s": new_tokens / median,
                "relative_spread": (max(times) - min(times)) / median,
            }
        )
    return rows


def continue_text(model: Any, tokenizer: Any, text: str, max_new_tokens: int = 4) -> str:
    """The greedy continuation of plain `text` (no chat template): the next `max_new_tokens` tokens, decoded.

    Prompting a model with the start of a known passage and checking whether it goes on verbatim is the simplest
    probe for whether the passage was in its training data (notebook 01 probes SmolLM2 with famous lines).
    """
    ids = tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
