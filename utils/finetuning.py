"""Fine-tuning a chat model on a labelled task: the First Folio genre dataset, chat-formatted examples with the
prompt masked out of the loss, rank classification with zero-shot and few-shot prompts, LoRA and full fine-tuning
with trl's SFTTrainer, adapters saved, merged and reloaded, and a linear head on sentence embeddings (the
classifier notebook 12 deploys and notebook 14 monitors, trained and tested on this module's split).

Defined for notebook 10 (book chapter 10, *Fine-Tuning and Evaluating*); chapters 11, 13 and 14 reuse the adapted
model through one call:

    from utils.finetuning import genre_dataset, load_genre_adapter, train_genre_adapter
    folder = train_genre_adapter()              # trains once (minutes on a CPU), then reuses the cached adapter
    model, tokenizer = load_genre_adapter(folder)

The task: given a short passage of a Shakespeare play, name its genre as the First Folio of 1623 catalogues it
(comedy, history or tragedy). Plays are split into train, validation and test as whole plays, so no passage of a
test play is ever trained on. Depends on `utils.assets` (SmolLM2-135M-Instruct and the Shakespeare texts); needs
torch, transformers, datasets, peft, trl, numpy and scikit-learn.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import TrainerCallback

from utils import assets

GENRES = ("comedy", "history", "tragedy")

#: The First Folio's catalogue (Heminges and Condell, 1623): 14 comedies, 10 histories and 12 tragedies (Troilus and
#: Cressida, printed between the histories and the tragedies, is counted with the tragedies as its own heading
#: calls it one). Keys are the `shakespeare` package's ids of the modern-spelling (Gutenberg) editions; Pericles and
#: the poems are not in the Folio and are left out.
FOLIO_GENRES: dict[str, str] = {
    **dict.fromkeys(
        [
            "tempest_gut",
            "two_gentlemen_of_verona_gut",
            "merry_wives_of_windsor_gut",
            "measure_for_measure_gut",
            "comedy_of_errors_gut",
            "much_ado_about_nothing_gut",
            "loves_labours_lost_gut",
            "midsummer_nights_dream_gut",
            "merchant_of_venice_gut",
            "as_you_like_it_gut",
            "taming_of_the_shrew_gut",
            "alls_well_that_ends_well_gut",
            "twelfth_night_gut",
            "winters_tale_gut",
        ],
        "comedy",
    ),
    **dict.fromkeys(
        [
            "john_gut",
            "richard_ii_gut",
            "henry_iv_part_1_gut",
            "henry_iv_part_2_gut",
            "henry_v_gut",
            "henry_vi_part_1_gut",
            "henry_vi_part_2_gut",
            "henry_vi_part_3_gut",
            "richard_iii_gut",
            "henry_viii_gut",
        ],
        "history",
    ),
    **dict.fromkeys(
        [
            "troilus_and_cressida_gut",
            "coriolanus_gut",
            "tragedy_of_titus_andronicus_gut",
            "romeo_and_juliet_gut",
            "timon_of_athens_gut",
            "julius_caesar_gut",
            "macbeth_gut",
            "hamlet_gut",
            "lear_gut",
            "othello_gut",
            "antony_and_cleopatra_gut",
            "cymbeline_gut",
        ],
        "tragedy",
    ),
}

#: Whole plays held out: two per genre for the test split, one per genre for validation. Stand-alone plays were
#: picked for the test (no history play in it continues a training play's story).
TEST_PLAYS = (
    "twelfth_night_gut",
    "much_ado_about_nothing_gut",
    "john_gut",
    "henry_viii_gut",
    "macbeth_gut",
    "othello_gut",
)
VALIDATION_PLAYS = ("measure_for_measure_gut", "richard_ii_gut", "julius_caesar_gut")

SYSTEM_PROMPT = "Name the genre of the Shakespeare passage: comedy, history or tragedy."


SPEAKER = re.compile(r"[A-Z][\w' ,&-]{0,40}\.|[A-Z][A-Z' ,&-]{0,40}")  # `Mar.`, `KING JOHN.`, `THESEUS`


class DatasetError(ValueError):
    """A dataset or example cannot be built as asked; the message says what to change."""


# ------------------------------------------------------------------------------------------------------ the data


def spoken_lines(text: str) -> list[list[str]]:
    """The speeches of a play in the Gutenberg layout (a speaker line such as `HAMLET.`, `Mar.` or `THESEUS`, then
    its lines, blocks separated by blank lines) as lists of spoken lines: speaker names, stage directions in
    brackets, act and scene headings and the cast list are dropped."""
    speeches = []
    for block in re.split(r"\n\s*\n", text):
        lines = [re.sub(r"\[[^\]]*\]", "", line).strip() for line in block.strip("\n").split("\n")]
        lines = [line for line in lines if line and not line.startswith("[")]
        if len(lines) < 2 or not SPEAKER.fullmatch(lines[0]) or len(lines[0].split()) > 4:
            continue  # not a speech: a heading, a direction, the cast list
        speeches.append([line for line in lines[1:] if not re.match(r"(ACT|SCENE|Scene) ", line)])
    return [speech for speech in speeches if speech]


def play_passages(text: str, words: int) -> list[str]:
    """Consecutive, non-overlapping passages of at least `words` words of spoken text (speeches joined in order,
    line breaks kept); the incomplete tail is dropped."""
    if words < 1:
        raise DatasetError(f"passages need at least one word, got words={words}")
    passages, current, count = [], [], 0
    for speech in spoken_lines(text):
        for line in speech:
            current.append(line)
            count += len(line.split())
            if count >= words:
                passages.append("\n".join(current))
                current, count = [], 0
    return passages


def split_of_play(text_id: str) -> str:
    """`test`, `validation` or `train` for a Folio play id (see TEST_PLAYS, VALIDATION_PLAYS)."""
    if text_id not in FOLIO_GENRES:
        raise DatasetError(f"{text_id!r} is not a First Folio play id; choose one of FOLIO_GENRES")
    return "test" if text_id in TEST_PLAYS else "validation" if text_id in VALIDATION_PLAYS else "train"


def genre_dataset(
    per_genre: dict[str, int] | None = None,
    words: int = 32,
    seed: int = 0,
    texts: dict[str, str] | None = None,
) -> dict[str, list[dict[str, str]]]:
    """The First Folio genre task as {split: [{"text", "label", "play"}, ...]}, balanced over the three genres.

    `per_genre` gives the passages per genre in each split (default 120 train, 15 validation, 30 test); each
    genre's quota is spread evenly over its plays in that split and drawn at random (seeded) from each play's
    passages of `words` words. `texts` defaults to the Shakespeare corpus of `utils.assets`. Raises DatasetError
    when a split cannot fill its quota (lower it or shorten the passages).
    """
    per_genre = {"train": 120, "validation": 15, "test": 30} | (per_genre or {})
    texts = texts if texts is not None else assets.shakespeare_texts()
    missing = [text_id for text_id in FOLIO_GENRES if text_id not in texts]
    if missing:
        raise DatasetError(f"the corpus lacks {missing[:3]}...; pass the `shakespeare` asset's texts")
    rng = random.Random(seed)
    out: dict[str, list[dict[str, str]]] = {split: [] for split in per_genre}
    for split, quota in per_genre.items():
        for genre in GENRES:
            plays = sorted(p for p, g in FOLIO_GENRES.items() if g == genre and split_of_play(p) == split)
            shares = [quota // len(plays) + (i < quota % len(plays)) for i in range(len(plays))]
            for play, share in zip(plays, shares, strict=True):
                pool = play_passages(texts[play], words)
                if share > len(pool):
                    raise DatasetError(f"{play} has {len(pool)} passages of {words} words, {share} asked for {split}")
                out[split] += [{"text": t, "label": genre, "play": play} for t in rng.sample(pool, share)]
        rng.shuffle(out[split])
    return out


def write_splits(data: dict[str, list[dict[str, str]]], folder: str | Path) -> Path:
    """Write each split as `<folder>/<split>.jsonl` (one example per line), e.g. as a training job's channel."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return folder


def read_splits(folder: str | Path, splits: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """Read `write_splits` files back, checking every example has text and a known genre label."""
    out = {}
    for split in splits:
        path = Path(folder) / f"{split}.jsonl"
        if not path.exists():
            raise DatasetError(f"{path} is missing: write the splits with utils.finetuning.write_splits")
        out[split] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for number, row in enumerate(out[split], start=1):
            if not str(row.get("text", "")).strip() or row.get("label") not in GENRES:
                raise DatasetError(f"{path}:{number}: needs a non-empty text and a label in {GENRES}")
    return out


# ---------------------------------------------------------------------------------------- chat format and masking


def genre_messages(passage: str, label: str | None = None, system: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The chat for one example: the instruction as the system turn, the passage as the user turn and, when
    `label` is given, the answer as the assistant turn."""
    if not passage.strip():
        raise DatasetError("the passage is empty; every example needs text to classify")
    if label is not None and label not in GENRES:
        raise DatasetError(f"label {label!r} is not one of {GENRES}")
    chat = [{"role": "system", "content": system}, {"role": "user", "content": passage}]
    return chat + ([{"role": "assistant", "content": label}] if label is not None else [])


def prompt_completion(example: dict[str, str]) -> dict[str, list[dict[str, str]]]:
    """An example in trl's conversational prompt-completion format, which SFTTrainer trains on with the loss on
    the completion only (`completion_only_loss`)."""
    chat = genre_messages(example["text"], example["label"])
    return {"prompt": chat[:-1], "completion": chat[-1:]}


def tokenize_example(tokenizer: Any, passage: str, label: str) -> dict[str, list[int]]:
    """Token ids of the chat-formatted example and its labels with every prompt token set to -100, so the loss
    counts only the answer (the label and the end-of-turn tokens). Raises DatasetError if the chat template does
    not render the prompt as a prefix of the full chat (then masking by position would be wrong)."""
    chat = genre_messages(passage, label)
    prompt = tokenizer.apply_chat_template(chat[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    if not full.startswith(prompt):
        raise DatasetError("the chat template does not render the prompt as a prefix of the chat; mask by search")
    prompt_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = tokenizer(full, add_special_tokens=False).input_ids
    if ids[: len(prompt_ids)] != prompt_ids:
        raise DatasetError("the prompt tokenizes differently alone and inside the chat; mask by search instead")
    return {"input_ids": ids, "labels": [-100] * len(prompt_ids) + ids[len(prompt_ids) :]}


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad tokenized examples into tensors: input_ids, attention_mask, and labels padded with -100."""
    width = max(len(e["input_ids"]) for e in examples)

    def padded(key: str, value: int) -> torch.Tensor:
        return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])

    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (width - len(e["input_ids"])) for e in examples])
    return {"input_ids": padded("input_ids", pad_id), "attention_mask": mask, "labels": padded("labels", -100)}


# ------------------------------------------------------------------------------------------- classifying by rank


def prompt_parts(tokenizer: Any, passage: str, shots: Sequence[dict[str, str]] = ()) -> tuple[str, str]:
    """The chat-formatted prompt for `passage` split into the part every example shares (system turn and the
    few-shot demonstrations, `shots` of {"text", "label"}) and the part that is the example's own."""
    demos = [turn for shot in shots for turn in genre_messages(shot["text"], shot["label"])[1:]]
    chat = genre_messages(passage)
    prefix = tokenizer.apply_chat_template(chat[:1] + demos, tokenize=False)
    full = tokenizer.apply_chat_template(chat[:1] + demos + chat[1:], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prefix):
        raise DatasetError("the chat template does not render turns one after another; cannot share a prefix")
    return prefix, full[len(prefix) :]


@torch.no_grad()
def completion_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    prefix: str = "",
    batch_size: int = 16,
) -> torch.Tensor:
    """Log-probability (nats, summed over tokens) of each completion after `prefix + prompt`: shape
    (len(prompts), len(completions)).

    The shared `prefix` is run once and its key-value cache reused for every batch; prompts are left-padded so
    that all rows end together and each completion's tokens can follow from the same cache. Only the logits the
    score needs are computed (`logits_to_keep`).
    """
    if not prompts or not completions:
        raise ValueError("need at least one prompt and one completion to score")
    model.eval()
    device = next(model.parameters()).device
    prefix_ids = tokenizer(prefix, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    prefix_cache = model(input_ids=prefix_ids, use_cache=True).past_key_values if prefix else None
    targets = [tokenizer(c, add_special_tokens=False).input_ids for c in completions]
    scores = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]),
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        rows, shared = batch.input_ids.shape[0], prefix_ids.shape[1] if prefix else 0
        mask = torch.cat(
            [torch.ones(rows, shared, dtype=batch.attention_mask.dtype, device=device), batch.attention_mask], dim=1
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        cache = None
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(rows)
        out = model(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        first = out.logits[:, -1].float().log_softmax(-1)
        row_scores = []
        for ids in targets:
            score = first[:, ids[0]].clone()
            if len(ids) > 1:
                follow = torch.tensor(ids, device=device).expand(rows, -1)
                more = (
                    model(
                        input_ids=follow[:, :-1],
                        past_key_values=copy.deepcopy(out.past_key_values),
                        attention_mask=torch.cat([mask, torch.ones_like(follow[:, :-1])], dim=1),
                        position_ids=positions[:, -1:] + torch.arange(1, len(ids), device=device),
                        use_cache=True,
                    )
                    .logits.float()
                    .log_softmax(-1)
                )
                score += more.gather(-1, follow[:, 1:, None]).squeeze(-1).sum(-1)
            row_scores.append(score)
        scores.append(torch.stack(row_scores, dim=1))
    return torch.cat(scores).cpu()


def classify(
    model: Any, tokenizer: Any, passages: Sequence[str], shots: Sequence[dict[str, str]] = (), batch_size: int = 16
) -> tuple[list[str], torch.Tensor]:
    """Rank classification: the genre whose answer (label plus end-of-turn token) the chat model finds most
    likely after the prompt, zero-shot or after `shots` demonstrations. Returns the predicted labels and the
    probabilities renormalised over the three answers, shape (len(passages), 3)."""
    parts = [prompt_parts(tokenizer, passage, shots) for passage in passages]
    end = tokenizer.eos_token or ""
    scores = completion_logprobs(
        model,
        tokenizer,
        [suffix for _, suffix in parts],
        [g + end for g in GENRES],
        prefix=parts[0][0],
        batch_size=batch_size,
    )
    probs = scores.softmax(-1)
    return [GENRES[i] for i in probs.argmax(-1).tolist()], probs


# ------------------------------------------------------------------------------------- training: LoRA and full

#: LoRA on every linear map of the attention and the MLP (Hu et al., 2021 adapted only the attention's query and
#: value maps; adapting all of them, as QLoRA does, Dettmers et al., 2023, works better at small ranks).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_NAME = "smollm2-genre-lora"
COMPLETE_MARKER = ".complete.json"
#: Saved with every adapter (`save_adapter`); `train_genre_adapter` reuses a cached adapter only if it matches. Raised
#: whenever training changes what the same settings produce: 2 since the first warm-up step learns (`warmup_factor`).
ADAPTER_RECIPE_VERSION = 2


def lora_config(rank: int = 8, alpha: int = 16, targets: Sequence[str] = LORA_TARGETS) -> Any:
    """A peft LoraConfig for a causal LM: rank-`rank` updates scaled by alpha / rank on the `targets` modules."""
    from peft import LoraConfig

    if rank < 1 or alpha <= 0:
        raise ValueError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets), task_type="CAUSAL_LM")


def lora_model(model: torch.nn.Module, config: Any, base_dtype: torch.dtype = torch.float32) -> Any:
    """`model` wrapped in place with the LoRA adapters of `config` (peft's `get_peft_model`), its frozen base
    weights first cast to `base_dtype`. The adapters and so their gradients and AdamW's moments stay fp32 whatever
    the base (peft's `autocast_adapter_dtype`, on by default, upcasts bf16 adapters); each adapted layer runs the
    base matmul in `base_dtype` and the adapter's in fp32, and hands back `base_dtype` activations.

    `torch.bfloat16` halves the frozen weights' memory (SmolLM2-135M: about 540 MB of fp32 to 270 MB), the
    low-precision frozen base QLoRA trains against (Dettmers et al., 2023, with a 4-bit base that needs
    bitsandbytes and a GPU). The bf16 activations round away part of an adapter's first, small updates (bf16 keeps
    8 significant bits), so early losses read higher than on an fp32 base although the adapters learn almost the
    same; they can be evaluated or merged on the fp32 base. fp32 stays the default: not every CPU has native bf16
    matmuls, and chapter 10 trains in fp32 (`benchmarks/lora_vs_full.py --base-dtype` measures both)."""
    from peft import get_peft_model

    if not base_dtype.is_floating_point:
        raise ValueError(f"base_dtype must be a floating-point dtype such as torch.bfloat16, got {base_dtype}")
    return get_peft_model(model.to(base_dtype), config, autocast_adapter_dtype=True)


def count_trainable(model: torch.nn.Module) -> int:
    """Parameters that receive gradients (for a peft model: the adapters only)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def bf16_available() -> bool:
    """True on a CUDA GPU that supports bf16; the course trains in fp32 everywhere else."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def warmup_factor(step: int, warmup: int) -> float:
    """The learning-rate multiplier of optimizer step `step` (0 for the first): (step + 1) / (warmup + 1) during
    the `warmup` warm-up steps, then 1. Unlike transformers' `get_constant_schedule_with_warmup` (step / warmup,
    so 0 at the first step), every step learns: with warmup 2 the rates are 1/3, 2/3, then the full rate."""
    return min(1.0, (step + 1) / (warmup + 1))


def sft_trainer(
    model: Any,
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    output_dir: str | Path,
    steps: int,
    lr: float,
    batch_size: int = 8,
    lora: Any = None,
    seed: int = 0,
    warmup: int = 2,
) -> Any:
    """trl's SFTTrainer for the genre task: chat template applied, loss on the answer only (prompt-completion
    data with `completion_only_loss`), AdamW at a constant rate `lr` after `warmup` steps of linear warm-up
    (`warmup_factor`: the first step already learns, at lr / (warmup + 1); a fixed count, not a share of `steps`,
    so the model after k steps of a longer run is the model a k-step run ends with, which is what lets `sft_sweep`
    read every step count off one run), no checkpoints, and fp32
    unless a GPU with bf16 is present (trl's configs default to bf16 autocast, on CPUs too, and leave the trained
    model's forward wrapped in it). No activation checkpointing (trl turns it on by default): recomputing every
    block in the backward pass costs about a third more compute, and a 135M model's activations fit a laptop.
    `lora` (a LoraConfig) trains adapters instead of every weight; it wraps `model` in place. Two trainers with
    the same `seed` and examples see the same batches in the same order, from the same initial adapter (the seed
    is set before the adapter is created)."""
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    if steps < 1 or batch_size < 1 or not examples or warmup < 0:
        raise ValueError(
            f"need steps >= 1, batch_size >= 1, warmup >= 0 and examples "
            f"(got {steps}, {batch_size}, {warmup}, {len(examples)})"
        )

    class WarmupSFTTrainer(SFTTrainer):
        """SFTTrainer with `warmup_factor`'s schedule: transformers' "constant_with_warmup" runs its first step at
        a rate of exactly 0, a step that changes nothing."""

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                factor = functools.partial(warmup_factor, warmup=warmup)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
                self._created_lr_scheduler = True
            return self.lr_scheduler

    config = SFTConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="constant",  # replaced by WarmupSFTTrainer's schedule
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        bf16=bf16_available(),
        completion_only_loss=True,
        max_length=512,
        dataloader_num_workers=0,
        dataloader_pin_memory=bf16_available(),
        activation_checkpointing=False,
        disable_tqdm=os.environ.get("TQDM_DISABLE") == "1",
    )
    data = Dataset.from_list([prompt_completion(e) for e in examples])
    set_seed(seed)
    return quiet(
        WarmupSFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=lora)
    )


class ValidationCurve(TrainerCallback):
    """A trainer callback that measures rank-classification accuracy (`classify`) on held-out `examples` every
    `every` optimizer steps and at the last step, and keeps a copy of the trainable weights at the best step so far
    (the earliest, on ties). `points` holds {"step", "accuracy", "predicted" (label counts), "train_seconds"
    (wall time spent training up to that step, evaluation excluded), "tokens" (trained on up to that step, from
    trl's log line of that step; None if no line falls on it)}."""

    def __init__(self, tokenizer: Any, examples: Sequence[dict[str, str]], every: int) -> None:
        if every < 1 or not examples:
            raise ValueError(f"need every >= 1 and validation examples, got every={every}, {len(examples)} examples")
        self.tokenizer, self.examples, self.every = tokenizer, list(examples), every
        self.points: list[dict[str, Any]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best: dict[str, Any] | None = None
        self._start = self._evaluating = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start, self._evaluating = time.perf_counter(), 0.0

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        began = time.perf_counter()
        predicted, _ = classify(model, self.tokenizer, [e["text"] for e in self.examples])
        model.train()
        accuracy = sum(p == e["label"] for p, e in zip(predicted, self.examples, strict=True)) / len(predicted)
        point = {
            "step": state.global_step,
            "accuracy": accuracy,
            "tokens": None,  # filled in by on_log
            "predicted": {g: predicted.count(g) for g in GENRES},
            "train_seconds": began - self._start - self._evaluating,
        }
        self.points.append(point)
        if self.best is None or accuracy > self.best["accuracy"]:
            self.best = point
            self.best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        self._evaluating += time.perf_counter() - began

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.points and self.points[-1]["step"] == state.global_step and "num_tokens" in (logs or {}):
            self.points[-1]["tokens"] = logs["num_tokens"]  # trl logs the tokens trained on after on_step_end


def sft_sweep(
    model: Any,
    tokenizer: Any,
    train: Sequence[dict[str, str]],
    validation: Sequence[dict[str, str]],
    output_dir: str | Path,
    lrs: Sequence[float],
    steps: int,
    every: int,
    batch_size: int = 8,
    rank: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the learning rate and the number of SFT steps on the validation split: one run of `steps` steps per
    learning rate in `lrs` (a copy of `model` each; LoRA of rank `rank`, or every weight when `rank` is None), its
    validation accuracy measured every `every` steps (`ValidationCurve`), so the steps dimension costs only the
    evaluations. The choice is the highest validation accuracy; ties go to fewer steps, then to the earlier rate in
    `lrs`. The test split plays no part.

    Returns {"curves": {lr: points}, "losses": {lr: [(step, loss), ...]}, "lr", "steps", "accuracy", "point" (the
    chosen checkpoint's point), "trainer"}: the chosen run's trainer, its model reset to the chosen step's weights
    (which, with the fixed warm-up of `sft_trainer`, are the weights a fresh run of that many steps ends with)."""
    if not lrs or steps < 1:
        raise ValueError(f"need at least one learning rate and steps >= 1, got lrs={list(lrs)}, steps={steps}")
    curves, losses, chosen = {}, {}, None
    for lr in lrs:
        lora = lora_config(rank, 2 * rank) if rank else None
        trainer = sft_trainer(
            copy.deepcopy(model),
            tokenizer,
            train,
            Path(output_dir) / f"lr_{lr:g}",
            steps,
            lr,
            batch_size,
            lora=lora,
            seed=seed,
        )
        curve = ValidationCurve(tokenizer, validation, every)
        trainer.add_callback(curve)
        trainer.train()
        curves[lr] = curve.points
        losses[lr] = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
        key = (curve.best["accuracy"], -curve.best["step"])
        if chosen is None or key > chosen[0]:
            with torch.no_grad():
                for name, parameter in trainer.model.named_parameters():
                    if name in curve.best_state:
                        parameter.copy_(curve.best_state[name])
            chosen = (key, lr, curve.best, trainer)
        del curve.best_state
    _, lr, point, trainer = chosen
    trainer.model.eval()
    return {
        "curves": curves,
        "losses": losses,
        "lr": lr,
        "steps": point["step"],
        "accuracy": point["accuracy"],
        "point": point,
        "trainer": trainer,
    }


def describe_sweep(name: str, sweep: dict[str, Any], seconds: float) -> str:
    """An `sft_sweep` result as text: each learning rate's validation accuracy at every checkpoint with the answer
    counts [comedy/history/tragedy], then the choice and the sweep's wall `seconds`."""
    lines = [f"{name}: validation accuracy at each checkpoint [answers {'/'.join(GENRES)}]"]
    for lr, points in sweep["curves"].items():
        shown = [f"{p['step']}: {p['accuracy']:.0%} [{'/'.join(map(str, p['predicted'].values()))}]" for p in points]
        lines.append(f"  lr {lr:g}: " + "  ".join(shown))
    lines.append(
        f"  chosen: lr {sweep['lr']:g}, {sweep['steps']} steps ({sweep['accuracy']:.0%}), sweep {seconds:.0f} s"
    )
    return "\n".join(lines)


def quiet(trainer: Any) -> Any:
    """The trainer without the callback that prints every log line when progress bars are off (headless runs);
    the lines stay in `trainer.state.log_history`."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def adapter_dir(name: str = ADAPTER_NAME) -> Path:
    """Where `train_genre_adapter` keeps an adapter: `<asset cache>/adapters/<name>` (`$COURSE_CACHE` aware)."""
    return assets.cache_dir() / "adapters" / name


def save_adapter(model: Any, tokenizer: Any, folder: str | Path, info: dict[str, Any]) -> Path:
    """Save a peft model's adapter weights and config, the tokenizer, and `info` (settings and results, JSON)
    into `folder`, atomically: written to a staging folder that replaces `folder` only once complete. `info` is
    saved with `ADAPTER_RECIPE_VERSION` added."""
    import shutil

    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    info = {**info, "recipe_version": ADAPTER_RECIPE_VERSION}
    (staging / COMPLETE_MARKER).write_text(json.dumps(info, indent=1, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    return folder


def adapter_info(folder: str | Path) -> dict[str, Any]:
    """The settings and results saved with an adapter; FileNotFoundError naming the fix if it is not complete."""
    marker = Path(folder) / COMPLETE_MARKER
    if not marker.exists():
        raise FileNotFoundError(f"no complete adapter in {folder}: train one with utils.finetuning.train_genre_adapter")
    return json.loads(marker.read_text())


def load_genre_adapter(folder: str | Path | None = None, merge: bool = False, device: str = "cpu") -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct with the saved adapter in `folder` (default `adapter_dir()`), in eval mode, and its
    tokenizer. `merge=True` folds the adapter into the weights (`merge_and_unload`): a plain transformers model,
    as fast as the base model, that no longer needs peft."""
    from peft import PeftModel

    folder = Path(folder) if folder is not None else adapter_dir()
    adapter_info(folder)
    base, tokenizer = assets.load_smollm2(device)
    model = PeftModel.from_pretrained(base, folder).eval()
    return (model.merge_and_unload().eval() if merge else model), tokenizer


#: The genre adapter's recipe: SFT steps, examples per step, learning rate, LoRA rank, words per passage. Steps and
#: learning rate are notebook 10's choice on the validation plays (`sft_sweep` over lr 2e-4 and 1e-3, validation
#: accuracy every 4 steps of batches of 8); the test plays played no part in it. It is the best of a poor set: 36% on
#: validation, where every setting tried answered one label for most passages (chance is 33%).
GENRE_ADAPTER = {"steps": 4, "batch_size": 8, "lr": 2e-4, "rank": 8, "words": 24}


def train_genre_adapter(
    folder: str | Path | None = None,
    steps: int = GENRE_ADAPTER["steps"],
    batch_size: int = GENRE_ADAPTER["batch_size"],
    lr: float = GENRE_ADAPTER["lr"],
    rank: int = GENRE_ADAPTER["rank"],
    words: int = GENRE_ADAPTER["words"],
    force: bool = False,
    data: dict[str, list[dict[str, str]]] | None = None,
) -> Path:
    """Train SmolLM2-135M-Instruct's LoRA adapter for the genre task (notebook 10's recipe, `GENRE_ADAPTER`) and
    save it with `save_adapter`; returns the folder. A complete adapter trained with the same settings and
    `ADAPTER_RECIPE_VERSION` is reused unless `force`. `data` ({"train": [...], "validation": [...]}) defaults to
    `genre_dataset(words=words)`. At the defaults, training takes about half a minute on one CPU core, plus loading
    and a validation pass."""
    folder = Path(folder) if folder is not None else adapter_dir()
    settings = {"steps": steps, "batch_size": batch_size, "lr": lr, "rank": rank, "words": words}
    if not force and (folder / COMPLETE_MARKER).exists():
        cached = adapter_info(folder)
        if cached.get("settings") == settings and cached.get("recipe_version") == ADAPTER_RECIPE_VERSION:
            return folder
    data = data if data is not None else genre_dataset(words=words)
    model, tokenizer = assets.load_smollm2()
    trainer = sft_trainer(
        model,
        tokenizer,
        data["train"],
        folder.with_name(folder.name + ".run"),
        steps,
        lr,
        batch_size,
        lora=lora_config(rank, 2 * rank),
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predictions, _ = classify(trainer.model, tokenizer, [e["text"] for e in data["validation"]])
    accuracy = sum(p == e["label"] for p, e in zip(predictions, data["validation"], strict=True)) / len(predictions)
    info = {"settings": settings, "train_seconds": seconds, "validation_accuracy": accuracy, "labels": GENRES}
    return save_adapter(trainer.model, tokenizer, folder, info)


# ------------------------------------------------------------------------- small models: heads and the course GPT


def fit_classifier(
    model: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 32,
    seed: int = 0,
) -> list[float]:
    """Fine-tune any transformers classifier (`model(**batch, labels=y).loss`: a GPT-2 or BERT sequence
    classifier, a ViT image classifier) for `steps` AdamW steps on random batches of `inputs` (a dict of tensors
    with one row per example); returns the loss per step. Every weight with requires_grad is trained."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"need steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    if any(len(v) != len(labels) for v in inputs.values()):
        raise ValueError("every input tensor needs one row per label")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, len(labels), (min(batch_size, len(labels)),), generator=generator)
        loss = model(**{k: v[rows] for k, v in inputs.items()}, labels=labels[rows]).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


def course_gpt_classifier(folder: str | Path, pretrained: bool, pad_id: int, seed: int = 0) -> torch.nn.Module:
    """A three-way genre classifier (`GPT2ForSequenceClassification`, which reads the last token's state) on the
    course GPT saved in `folder` by `pretrain_course_gpt`: its pretrained weights, or, with `pretrained=False`, the
    same architecture from random weights (the control that measures what pretraining bought). The new head is
    drawn after `torch.manual_seed(seed)`, so both copies start from the same head."""
    from transformers import AutoConfig, GPT2ForSequenceClassification

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(folder, num_labels=len(GENRES), pad_token_id=pad_id)
    if pretrained:
        return GPT2ForSequenceClassification.from_pretrained(folder, config=config)
    return GPT2ForSequenceClassification(config)


@torch.no_grad()
def predict_classes(model: torch.nn.Module, inputs: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """Arg-max class of a transformers classifier for every row of `inputs`."""
    model.eval()
    rows = len(next(iter(inputs.values())))
    return torch.cat(
        [
            model(**{k: v[i : i + batch_size] for k, v in inputs.items()}).logits.argmax(-1)
            for i in range(0, rows, batch_size)
        ]
    )


def pretrain_course_gpt(
    data: str | Path,
    output: str | Path,
    steps: int,
    lr: float = 3e-3,
    batch_size: int = 16,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
    extra: Sequence[str] = (),
) -> tuple[Path, list[float]]:
    """Pretrain the course's GPT with its own training program, exactly as a user runs it (`python -m
    utils.train`, chapters 5 and 9) on the token shards in `data`; returns the folder of the saved model
    (`<output>/model`, loadable with transformers) and the training loss of every step (from the program's
    `metrics.jsonl`). Raises RuntimeError with the program's last output if it fails. The one place chapter 10
    calls the program: adapt the flags and the log format here if they change."""
    import subprocess
    import sys

    flags = [
        "--data",
        str(data),
        "--output",
        str(output),
        "--steps",
        str(steps),
        "--lr",
        str(lr),
        "--batch-size",
        str(batch_size),
        "--layers",
        str(layers),
        "--width",
        str(width),
        "--heads",
        str(heads),
        "--warmup",
        str(max(steps // 10, 1)),
        "--log-every",
        "1",
        "--checkpoint-every",
        "0",
        "--peak-flops",
        "1e11",
        *extra,
    ]  # a nominal peak skips the start-up matmul (MFU unused)
    done = subprocess.run(
        [sys.executable, "-m", "utils.train", *flags],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if done.returncode != 0:
        raise RuntimeError(f"python -m utils.train failed ({done.returncode}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in (Path(output) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return Path(output) / "model", [row["loss"] for row in rows]


# ----------------------------------------------------- a linear head on sentence embeddings (chapters 12 and 14)

#: Words per passage for the sentence-embedding head: about three lines of verse, enough for a sentence embedding to
#: carry some style.
HEAD_PASSAGE_WORDS = 40


def genre_splits(
    train_per_genre: int,
    test_per_genre: int,
    words: int = HEAD_PASSAGE_WORDS,
    seed: int = 0,
    texts: dict[str, str] | None = None,
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, test) passages of the genre task, each {"text", "label", "play"}, balanced over GENRES, for the
    classifier notebook 12 deploys: `train_per_genre` per genre from the training plays, `test_per_genre` from the
    test plays, so its accuracy is comparable with notebook 10's models. The validation plays are left out: the head
    has no setting chosen on held-out data. `texts` defaults to the course's Shakespeare asset; raises DatasetError
    when a split cannot fill its quota."""
    splits = {"train": train_per_genre, "validation": 0, "test": test_per_genre}
    data = genre_dataset(splits, words=words, seed=seed, texts=texts)
    return data["train"], data["test"]


def labels_of(passages: list[dict[str, str]]) -> np.ndarray:
    """Genre indices (into GENRES) of the passages' labels."""
    return np.array([GENRES.index(p["label"]) for p in passages])


def fit_head(embeddings: np.ndarray, labels: np.ndarray, c: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on (unit-length) sentence embeddings, classes weighted by their inverse
    frequency; returns its (weight [classes, dim], bias [classes]) for a linear layer, as float32. `c` is the inverse
    L2 penalty (scikit-learn's C)."""
    model = LogisticRegression(C=c, max_iter=2000, class_weight="balanced").fit(embeddings, labels)
    return np.ascontiguousarray(model.coef_, np.float32), np.ascontiguousarray(model.intercept_, np.float32)


# ---------------------------------------------------------------------------------------- command line (SageMaker)


def main(argv: list[str] | None = None) -> int:
    """`python -m utils.finetuning --steps 4 ...`: train and save the genre adapter (defaults: `GENRE_ADAPTER`).

    On SageMaker the adapter goes to $SM_MODEL_DIR (uploaded as model.tar.gz); elsewhere to `--output` or
    `adapter_dir()`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m utils.finetuning", description=main.__doc__.splitlines()[0])
    for name, kind in [("steps", int), ("batch-size", int), ("lr", float), ("rank", int), ("words", int)]:
        default = GENRE_ADAPTER[name.replace("-", "_")]
        parser.add_argument(f"--{name}", f"--{name.replace('-', '_')}", type=kind, default=default)
    parser.add_argument("--output", default=os.environ.get("SM_MODEL_DIR"), help="default: $SM_MODEL_DIR or the cache")
    parser.add_argument(
        "--data",
        default=os.environ.get("SM_CHANNEL_TRAINING"),
        help="folder with train.jsonl and validation.jsonl (default: $SM_CHANNEL_TRAINING, else built)",
    )
    args = parser.parse_args(argv)
    if min(args.steps, args.batch_size, args.rank, args.words) < 1 or args.lr <= 0:
        parser.error("steps, batch size, rank and words must be positive integers and lr a positive number")
    data = read_splits(args.data, ("train", "validation")) if args.data else None
    folder = Path(args.output) / ADAPTER_NAME if args.output else None
    folder = train_genre_adapter(folder, args.steps, args.batch_size, args.lr, args.rank, args.words, True, data)
    print(json.dumps({"adapter": str(folder), **adapter_info(folder)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
