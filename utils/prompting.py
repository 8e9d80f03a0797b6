"""Prompt engineering, measured: prompt templates rendered through a chat template, few-shot demonstrations drawn
reproducibly, rank classification over fixed answers, generation with answer parsing (chain of thought), majority
votes over sampled answers (self-consistency), a reproducible log of prompt runs, and classifier-free guidance for a
small class-conditional diffusion model.

Defined for notebook 13 (book chapter 13, *Prompt Engineering*); notebook 15 reuses the scoring, generation and
parsing to use a chat model as a classifier. Works with any transformers causal LM whose tokenizer has a chat
template, peft-wrapped ones included (prompt tuning, prefix tuning, LoRA). Needs torch and transformers, and
diffusers for the guidance functions.

    template = PromptTemplate("plain", "Name the genre of the passage: comedy, history or tragedy.")
    shots = sample_shots(pool, k=4, seed=0)                  # the same 4 examples, in the same order, every run
    prompts = [template.render(tokenizer, row["text"], shots) for row in rows]
    scores = choice_logprobs(model, tokenizer, prompts, ["comedy", "history", "tragedy"])
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# ------------------------------------------------------------------------------------------------------ templates


def _fields(text: str) -> set[str]:
    """The `{name}` placeholders of a format string (ValueError for a malformed one, e.g. an unmatched brace)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as err:
        raise ValueError(f"malformed template {text!r}: {err}; write a literal brace as {{{{ or }}}}") from err


@dataclass(frozen=True)
class PromptTemplate:
    """One way of asking: an instruction, how each input is shown (`user`, with a `{text}` slot) and how an answer
    is written (`answer`, with a `{label}` slot, used for few-shot demonstrations and for scoring).

    `system=True` puts the instruction in the chat's system turn; `False` prepends it to the first user turn (the
    model then gets its chat template's default system turn, if it has one). Few-shot demonstrations become
    earlier user/assistant turns, the way chat models saw examples in instruction tuning.
    """

    name: str
    instruction: str
    user: str = "{text}"
    answer: str = "{label}"
    system: bool = True

    def __post_init__(self) -> None:
        if not self.instruction.strip():
            raise ValueError(f"template {self.name!r} has an empty instruction")
        for field, slot in (("user", "text"), ("answer", "label")):
            found = _fields(getattr(self, field))
            if found != {slot}:
                raise ValueError(f"template {self.name!r}: `{field}` needs exactly one {{{slot}}} slot, has {found}")

    def messages(self, text: str, shots: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
        """The chat for `text` after the demonstrations `shots` (dicts with "text" and "label")."""
        if not text.strip():
            raise ValueError("the input text is empty")
        turns: list[dict[str, str]] = []
        for shot in shots:
            turns.append({"role": "user", "content": self.user.format(text=shot["text"])})
            turns.append({"role": "assistant", "content": self.answer.format(label=shot["label"])})
        turns.append({"role": "user", "content": self.user.format(text=text)})
        if self.system:
            return [{"role": "system", "content": self.instruction}, *turns]
        turns[0] = {"role": "user", "content": f"{self.instruction}\n\n{turns[0]['content']}"}
        return turns

    def render(self, tokenizer: Any, text: str, shots: Sequence[dict[str, str]] = ()) -> str:
        """The exact string the model reads: the chat template applied, ending where the assistant's answer
        starts (`add_generation_prompt`). Raises ValueError for a tokenizer without a chat template."""
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; prompt a base model with plain text instead")
        return tokenizer.apply_chat_template(self.messages(text, shots), tokenize=False, add_generation_prompt=True)

    def choices(self, labels: Sequence[str]) -> list[str]:
        """The answer strings rank classification scores, one per label."""
        return [self.answer.format(label=label) for label in labels]


# ------------------------------------------------------------------------------------------- few-shot examples


def sample_shots(
    pool: Sequence[dict[str, str]], k: int, seed: int, balanced: bool = True, exclude: Sequence[str] = ()
) -> list[dict[str, str]]:
    """`k` demonstrations drawn from `pool` (dicts with "text" and "label") with `random.Random(seed)`: the same
    pool and seed give the same examples in the same order on every machine and Python version.

    `balanced` deals the labels round-robin (in an order the seed shuffles), so k = 3 gives one of each of three
    labels and k = 4 one label twice; then the chosen examples are shuffled, so the order is part of the draw.
    Texts in `exclude` (the evaluation set) are never drawn. Raises ValueError when the pool cannot supply k.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    banned = set(exclude)
    usable = [row for row in pool if row["text"] not in banned]
    for number, row in enumerate(usable):
        if not str(row.get("text", "")).strip() or not row.get("label"):
            raise ValueError(f"pool example {number} needs a non-empty 'text' and a 'label'")
    if k > len(usable):
        raise ValueError(f"asked for {k} shots from a pool of {len(usable)} usable examples")
    rng = random.Random(seed)
    if not balanced:
        return rng.sample(usable, k)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in usable:
        by_label.setdefault(row["label"], []).append(row)
    labels = sorted(by_label)
    rng.shuffle(labels)
    queues = {label: rng.sample(rows, len(rows)) for label, rows in sorted(by_label.items())}
    chosen: list[dict[str, str]] = []
    while len(chosen) < k:
        for label in labels:
            if len(chosen) < k and queues[label]:
                chosen.append(queues[label].pop())
        if not any(queues.values()) and len(chosen) < k:
            break
    rng.shuffle(chosen)
    return chosen


# ------------------------------------------------------------------------------------------ scoring fixed answers


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest run of leading tokens that every row shares."""
    shortest = min(len(row) for row in rows)
    for i in range(shortest):
        if any(row[i] != rows[0][i] for row in rows):
            return i
    return shortest


def is_prompt_learning(model: Any) -> bool:
    """True for a peft model whose active adapter is prompt or prefix tuning (virtual tokens the model adds in
    front of every input, so a key-value cache of a shared prompt cannot be reused)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _pad_right(rows: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.tensor([list(row) + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


def _continuation_logprobs(
    model: Any, past: Any, mask: torch.Tensor, ends: Sequence[int], choice_ids: Sequence[Sequence[int]], pad: int
) -> torch.Tensor:
    """Log-probability of every choice's tokens after its first, shape (len(ends), len(choice_ids)), continuing
    each prompt row from `past`, the key-value cache of the right-padded prompt rows (attention `mask`, real
    lengths `ends`). Each (prompt, choice) becomes a row holding the choice's tokens but its last, placed right
    after its prompt's last real token (explicit positions; the prompt's padding stays masked)."""
    tails = [list(ids[:-1]) for ids in choice_ids]  # inputs whose next tokens are the choice's 2nd, 3rd, ...
    width, prompts, n = max(len(t) for t in tails), len(ends), len(choice_ids)
    device = mask.device
    ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=device).repeat(prompts, 1)
    tail_mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tails], device=device)
    mask = torch.cat([mask.repeat_interleave(n, dim=0), tail_mask.to(mask.dtype).repeat(prompts, 1)], dim=1)
    positions = (torch.tensor(ends, device=device)[:, None] + torch.arange(width, device=device)).repeat_interleave(
        n, dim=0
    )
    past.batch_repeat_interleave(n)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past, use_cache=True)
    logprobs = out.logits.float().log_softmax(-1).view(prompts, n, width, -1)
    scores = torch.zeros(prompts, n)
    for c, ids_c in enumerate(choice_ids):
        if len(ids_c) > 1:
            targets = torch.tensor(ids_c[1:], device=device)
            scores[:, c] = logprobs[:, c, torch.arange(len(targets), device=device), targets].sum(-1).cpu()
    return scores


@torch.no_grad()
def choice_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    choices: Sequence[str],
    batch_size: int = 8,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Log-probability (nats, summed over its tokens) of each choice as the continuation of each prompt, shape
    (len(prompts), len(choices)): rank classification, the way multiple-choice benchmarks score a model.

    Prompts are full strings (e.g. `PromptTemplate.render`). Tokens every prompt shares (the instruction and
    the few-shot demonstrations) are run once and their key-value cache reused (`share_prefix`, skipped for
    prompt- and prefix-tuned peft models). Leading tokens every choice shares ("Genre:" in "Genre: comedy") are
    moved into the prompt: their log-probability, the same for every choice, is left out of the scores, which
    changes neither the ranking nor the probabilities renormalised over the choices.

    Each prompt is one row: its last position scores every choice's first token. Choices of several tokens
    then continue from that row's key-value cache, one short row per (prompt, choice) holding only the
    choice's remaining tokens, so the prompt is run once, not once per choice (prompt- and prefix-tuned models,
    whose virtual tokens peft adds on every call, run every (prompt, choice) pair as a whole row instead).
    Rows are right-padded, `batch_size` prompts of similar length make one forward pass, and the vocabulary
    projection runs only on the last positions a batch needs (`logits_to_keep`). Raises ValueError for empty
    or duplicate inputs.
    """
    if not prompts or not choices:
        raise ValueError("need at least one prompt and one choice to score")
    if len(set(choices)) != len(choices):
        raise ValueError(f"the choices must differ, got {list(choices)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    device = next(model.parameters()).device
    prompt_ids = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    choice_ids = [tokenizer(c, add_special_tokens=False).input_ids for c in choices]
    if min(len(ids) for ids in prompt_ids + choice_ids) == 0:
        raise ValueError("a prompt or a choice is empty after tokenization")
    common = min(_common_prefix(choice_ids), min(len(ids) for ids in choice_ids) - 1)
    prompt_ids = [ids + choice_ids[0][:common] for ids in prompt_ids]
    choice_ids = [ids[common:] for ids in choice_ids]
    shared = 0
    if share_prefix and not is_prompt_learning(model):
        shared = min(_common_prefix(prompt_ids), min(len(ids) for ids in prompt_ids) - 1)
    cache = None
    if shared:
        cache = model(input_ids=torch.tensor([prompt_ids[0][:shared]], device=device), use_cache=True).past_key_values
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    single = all(len(ids) == 1 for ids in choice_ids)
    per_prompt = single or not is_prompt_learning(model)  # one row per prompt; else one per (prompt, choice)
    first = [ids[0] for ids in choice_ids]
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    scores = torch.zeros(len(prompt_ids), len(choice_ids))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        suffixes = [prompt_ids[i][shared:] for i in chunk]
        rows = suffixes if per_prompt else [s + c for s in suffixes for c in choice_ids]
        ids, mask = _pad_right(rows, pad, device)
        past = None
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(ids))
            mask = torch.cat([torch.ones(len(ids), shared, dtype=mask.dtype, device=device), mask], dim=1)
        keep = ids.shape[1] - min(len(s) for s in suffixes) + 1  # from the shortest prompt's last token on
        use_cache = past is not None or (per_prompt and not single)  # the choices continue from this cache
        out = model(input_ids=ids, attention_mask=mask, past_key_values=past, use_cache=use_cache, logits_to_keep=keep)
        logprobs = out.logits[:, -keep:].float().log_softmax(-1)
        offset = ids.shape[1] - keep
        if per_prompt:  # every choice's first token from the prompt's last position, the rest from its cache
            last = torch.tensor([len(s) - 1 - offset for s in suffixes], device=device)
            scores[chunk] = logprobs[torch.arange(len(rows), device=device), last][:, first].cpu()
            if not single:
                ends = [shared + len(s) for s in suffixes]
                scores[chunk] += _continuation_logprobs(model, out.past_key_values, mask, ends, choice_ids, pad)
            continue
        for r, (s, c) in enumerate((s, c) for s in range(len(suffixes)) for c in range(len(choice_ids))):
            at = len(suffixes[s]) - 1 - offset + torch.arange(len(choice_ids[c]), device=device)
            scores[chunk[s], c] = logprobs[r, at, torch.tensor(choice_ids[c], device=device)].sum().item()
    return scores


def rank_classify(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    labels: Sequence[str],
    choices: Sequence[str] | None = None,
    batch_size: int = 8,
) -> tuple[list[str], torch.Tensor]:
    """The label whose answer string (`choices`, default the labels themselves) the model finds most likely after
    each prompt, and the probabilities renormalised over the answers, shape (len(prompts), len(labels))."""
    choices = list(labels) if choices is None else list(choices)
    if len(choices) != len(labels):
        raise ValueError(f"need one answer string per label, got {len(choices)} for {len(labels)}")
    probs = choice_logprobs(model, tokenizer, prompts, choices, batch_size).softmax(-1)
    return [labels[i] for i in probs.argmax(-1).tolist()], probs


# ---------------------------------------------------------------------------------------- prompt and prefix tuning


def answer_example(tokenizer: Any, template: PromptTemplate, text: str, label: str) -> dict[str, list[int]]:
    """Token ids of the rendered prompt followed by the answer and the end-of-turn token, and labels with every
    prompt token set to -100, so a loss counts only the answer."""
    prompt = tokenizer(template.render(tokenizer, text), add_special_tokens=False).input_ids
    answer = tokenizer(template.answer.format(label=label) + tokenizer.eos_token, add_special_tokens=False).input_ids
    return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def train_prompt_learning(
    model: Any,
    tokenizer: Any,
    template: PromptTemplate,
    examples: Sequence[dict[str, str]],
    steps: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[range], Any] = iter,
) -> list[float]:
    """Train whatever parameters of `model` require gradients (for a peft prompt- or prefix-tuning model: the
    virtual tokens only, the base frozen) on `examples` ({"text", "label"}) rendered with `template`, loss on
    the answer tokens, AdamW at a constant rate `lr`, batches drawn with a seeded generator. Returns the loss of
    every step. `progress` wraps the step range (e.g. tqdm). A plain loop rather than a Trainer: trl's SFTConfig
    turns on gradient checkpointing by default, which drops the key-value prefix that prefix tuning relies on."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no parameter requires gradients: wrap the model with peft.get_peft_model first")
    if steps < 1 or batch_size < 1 or not examples or lr <= 0:
        raise ValueError(f"need steps, batch_size >= 1, lr > 0 and examples (got {steps}, {batch_size}, {lr})")
    encoded = [answer_example(tokenizer, template, e["text"], e["label"]) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in progress(range(steps)):
        batch = [encoded[i] for i in torch.randint(0, len(encoded), (batch_size,), generator=generator).tolist()]
        ids, mask = _pad_right([e["input_ids"] for e in batch], pad, device)
        labels, _ = _pad_right([e["labels"] for e in batch], -100, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ------------------------------------------------------------------------------------------ generating and parsing


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[list[str]]:
    """`samples` replies per prompt (each a list of strings), decoded without special tokens.

    `temperature=0` decodes greedily (one reply, the same every run); above 0 it samples with nucleus `top_p`
    from a torch generator state seeded with `seed` (the same prompts, batch size and seed give the same
    samples). Prompts are left-padded so every row's reply starts at the same position; transformers derives the
    positions from the attention mask."""
    if not prompts:
        raise ValueError("need at least one prompt")
    if max_new_tokens < 1 or samples < 1 or batch_size < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("need max_new_tokens, samples, batch_size >= 1, temperature >= 0 and 0 < top_p <= 1")
    if temperature == 0 and samples > 1:
        raise ValueError("greedy decoding gives one reply per prompt; set temperature > 0 to draw several")
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = {"do_sample": temperature > 0}
    if temperature > 0:
        sampling |= {"temperature": temperature, "top_p": top_p}
    torch.manual_seed(seed)
    replies: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]),
            add_special_tokens=False,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        ).to(device)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, num_return_sequences=samples, pad_token_id=pad, **sampling
        )
        texts = tokenizer.batch_decode(out[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        replies += [[t.strip() for t in texts[i : i + samples]] for i in range(0, len(texts), samples)]
    return replies


def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The label a free-text answer gives, or None when it gives none or is ambiguous.

    The last explicit answer wins ("Answer: tragedy", "the genre is **comedy**"); without one, a reply naming
    exactly one label counts as that label; a reply naming several, or none, is unparseable. Case-insensitive,
    whole words only ("historyless" is not "history")."""
    if not labels:
        raise ValueError("need the labels to look for")
    lowered = text.lower()
    alternatives = "|".join(re.escape(label.lower()) for label in labels)
    explicit = re.findall(
        rf"(?:answer|genre|label|category)\W{{0,3}}(?:is\W+|would be\W+)?\W*({alternatives})\b", lowered
    )
    if explicit:
        return next(label for label in labels if label.lower() == explicit[-1])
    named = [label for label in labels if re.search(rf"\b{re.escape(label.lower())}\b", lowered)]
    return named[0] if len(named) == 1 else None


def majority_vote(votes: Sequence[str | None]) -> str | None:
    """The most frequent answer among `votes`, unparseable ones (None) ignored; a tie goes to the answer that
    reached the top count first, so the result does not depend on dictionary order. None if every vote is None.
    Self-consistency (Wang et al., 2023) takes this vote over sampled chains of thought."""
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return None
    top = max(counts.values())
    running: Counter[str] = Counter()
    for vote in votes:
        if vote is not None:
            running[vote] += 1
            if running[vote] == top:
                return vote
    raise AssertionError("unreachable: some vote reaches the top count")


# ------------------------------------------------------------------------------------------- reproducible logging


def fingerprint(config: dict[str, Any]) -> str:
    """A 12-hex-digit SHA-256 of a JSON-serialisable configuration (keys sorted): two runs with the same
    fingerprint asked the same model the same thing with the same settings."""
    try:
        text = json.dumps(config, sort_keys=True, ensure_ascii=False)
    except TypeError as err:
        raise TypeError(f"a prompt-run configuration must be JSON-serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class PromptLog:
    """An append-only JSON-lines file of prompt runs: per run its fingerprint, UTC time, the full configuration
    (model and its weights' hash, template, demonstrations, decoding settings, seed), metrics and every output.

    One line per run means a run is either fully written or absent, and any tool can read the file. Re-running a
    logged configuration must give the logged outputs; `find` fetches it by fingerprint for that check."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def log(self, config: dict[str, Any], metrics: dict[str, float], outputs: Sequence[Any]) -> str:
        """Append one run and return its fingerprint."""
        run = fingerprint(config)
        line = {
            "run": run,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config,
            "metrics": metrics,
            "outputs": list(outputs),
        }
        text = json.dumps(line, ensure_ascii=False)  # serialise fully before touching the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")
        return run

    def runs(self) -> list[dict[str, Any]]:
        """Every logged run, oldest first; ValueError naming the line if one is not valid JSON."""
        if not self.path.exists():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{self.path}:{number} is not a JSON line ({err.msg})") from err
        return rows

    def find(self, run: str) -> dict[str, Any]:
        """The latest logged run with fingerprint `run`; KeyError if there is none."""
        for row in reversed(self.runs()):
            if row["run"] == run:
                return row
        raise KeyError(f"no run {run!r} in {self.path}")


def template_config(template: PromptTemplate) -> dict[str, Any]:
    """A template as plain data, for a run's configuration."""
    return asdict(template)


# ------------------------------------------------------------------------------ classifier-free guidance (vision)


def guided_noise(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans, 2022): uncond + scale * (cond - uncond). Scale 0 ignores the
    class, 1 is the plain conditional model, above 1 pushes samples further towards what the class adds (the
    paper's w is scale - 1)."""
    if cond.shape != uncond.shape:
        raise ValueError(f"conditional and unconditional predictions differ in shape: {cond.shape}, {uncond.shape}")
    return uncond + scale * (cond - uncond)


def digit_unet(classes: int = 10, width: int = 32) -> Any:
    """A class-conditional diffusers `UNet2DModel` for 8x8 one-channel images: two resolutions (8x8, 4x4), one
    ResNet block per level, attention at 4x4, and `classes + 1` class embeddings, the last one meaning "no
    class" for classifier-free guidance. (Stable Diffusion's UNet: 64x64 latents, widths 320-1280.)"""
    from diffusers import UNet2DModel

    if classes < 1 or width < 8 or width % 8:
        raise ValueError(f"need classes >= 1 and a width that is a multiple of 8, got {classes}, {width}")
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=classes + 1,
        norm_num_groups=8,
    )


def train_guided_diffusion(
    unet: Any,
    scheduler: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    drop_label: float = 0.15,
    seed: int = 0,
    progress: Callable[[range], Any] = iter,
) -> list[float]:
    """Train `unet` (see `digit_unet`) to predict the noise DDPM added (Ho et al., 2020), with the class label
    replaced by the "no class" label on a random `drop_label` share of examples, so one network learns both the
    conditional and the unconditional model that guidance mixes (Ho & Salimans use 0.1-0.2). `images` are
    (N, 1, 8, 8) in [-1, 1]; returns the loss of every step. `progress` wraps the step range (e.g. tqdm)."""
    if steps < 1 or batch_size < 1 or not 0 <= drop_label < 1 or len(images) != len(labels) or not len(images):
        raise ValueError("need steps, batch_size >= 1, 0 <= drop_label < 1 and one label per image")
    null = unet.config.num_class_embeds - 1
    if int(labels.max()) >= null or int(labels.min()) < 0:
        raise ValueError(f"labels must lie in 0..{null - 1}; {null} is reserved for 'no class'")
    generator = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    unet.train()
    losses = []
    for _ in progress(range(steps)):
        rows = torch.randint(0, len(images), (batch_size,), generator=generator)
        clean, classes = images[rows], labels[rows].clone()
        classes[torch.rand(batch_size, generator=generator) < drop_label] = null
        noise = torch.randn(clean.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        noisy = scheduler.add_noise(clean, noise, t)
        predicted = unet(noisy.to(device), t.to(device), class_labels=classes.to(device)).sample
        loss = F.mse_loss(predicted, noise.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    unet.eval()
    return losses


@torch.no_grad()
def guided_sample(
    unet: Any, scheduler: Any, labels: torch.Tensor, scale: float, steps: int = 100, seed: int = 0
) -> torch.Tensor:
    """Images (N, 1, 8, 8) in [-1, 1] of the classes `labels`, drawn by the DDPM sampler in `steps` steps with
    classifier-free guidance of strength `scale` (see `guided_noise`). The conditional and unconditional
    predictions come from one batched call; the same seed gives the same images."""
    if steps < 1 or not len(labels):
        raise ValueError("need steps >= 1 and at least one label")
    null = unet.config.num_class_embeds - 1
    device = next(unet.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    x = torch.randn((len(labels), unet.config.in_channels, size, size), generator=generator).to(device)
    classes = torch.cat([labels, torch.full_like(labels, null)]).to(device)
    scheduler.set_timesteps(steps)
    unet.eval()
    for t in scheduler.timesteps:
        cond, uncond = unet(torch.cat([x, x]), t, class_labels=classes).sample.chunk(2)
        x = scheduler.step(guided_noise(cond, uncond, scale), t, x, generator=generator).prev_sample
    return x.clamp(-1, 1).cpu()
