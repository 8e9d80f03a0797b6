"""Ask an instruction-tuned causal language model one question through its chat template, and time the answer.

Defined for notebook 00 (SmolLM2-135M-Instruct's first replies); reused wherever the course prompts a chat model
(chapters 1, 10 and 13). Works with any transformers causal LM whose tokenizer has a chat template.
"""

from __future__ import annotations

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
