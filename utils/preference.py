"""Learning from preferences (RLHF) at laptop scale: continuation prompts from Shakespeare's speeches, preference
pairs (chosen, rejected) in one JSON-lines format, a labelling widget that writes it (and runs headless from
scripted answers), a reward model, DPO and GRPO with trl, and the judges: the reward model, a held-out rule, the
DPO loss written out, sequence log-probabilities and the KL to the reference model.

Defined for notebook 10 (book chapter 10: human-in-the-loop evaluation and RLHF). Standalone: needs torch,
datasets, transformers, trl (and peft for adapters, ipywidgets for the widget).

The pair format, one JSON object per line:

    {"prompt": "<the user's request>", "chosen": "<preferred answer>", "rejected": "<other answer>", "rater": "..."}
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

INSTRUCTION = "Write the next line of this speech by Shakespeare. Answer with the line only.\n\n"
PAIR_FIELDS = ("prompt", "chosen", "rejected")


class PreferenceError(ValueError):
    """A preference record or file is malformed; the message names the record and the fix."""


# ---------------------------------------------------------------------------------------------------- prompts


def continuation_prompts(speeches: dict[str, list[list[str]]], per_play: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts asking for the next line of a speech: {"prompt", "reference", "play"} per item, `per_play` from each
    play in `speeches` ({play id: speeches as lists of lines}, e.g. from `utils.finetuning.spoken_lines`).

    Only verse-like speeches are used (at least three lines of 5-12 words, each starting with a capital), so the
    reference (Shakespeare's own third line) is a line of verse; the prompt shows the first two lines."""
    rng = random.Random(seed)
    items = []
    for play, play_speeches in sorted(speeches.items()):
        verse = [
            s for s in play_speeches if len(s) >= 3 and all(5 <= len(x.split()) <= 12 and x[0].isupper() for x in s[:3])
        ]
        if len(verse) < per_play:
            raise PreferenceError(f"{play} has {len(verse)} verse speeches, fewer than per_play={per_play}")
        for speech in rng.sample(verse, per_play):
            items.append({"prompt": INSTRUCTION + "\n".join(speech[:2]), "reference": speech[2], "play": play})
    return items


def chat(prompt: str) -> list[dict[str, str]]:
    """The prompt as a one-turn chat (trl's conversational format)."""
    return [{"role": "user", "content": prompt}]


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 24,
    sample: bool = False,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[list[str], int]:
    """Replies of a chat model to each prompt (greedy, or sampled at temperature 1 when `sample`), batched with
    left padding; returns the replies (special tokens dropped, stripped) and the number of tokens generated."""
    model.eval()
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    replies, generated = [], 0
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        settings = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
        out = model.generate(
            **batch.to(device), max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **settings
        )
        new = out[:, batch.input_ids.shape[1] :]
        generated += int((new != tokenizer.pad_token_id).sum())
        replies += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return replies, generated


# ------------------------------------------------------------------------------------------ the pair format


def validate_pair(record: Any, where: str = "record") -> dict[str, str]:
    """`record` if it is a preference pair (non-empty strings prompt, chosen, rejected, chosen != rejected), else
    PreferenceError saying what is wrong with it and where."""
    if not isinstance(record, dict):
        raise PreferenceError(f"{where}: expected a JSON object with {PAIR_FIELDS}, got {type(record).__name__}")
    missing = [k for k in PAIR_FIELDS if not isinstance(record.get(k), str) or not record[k].strip()]
    if missing:
        raise PreferenceError(f"{where}: fields {missing} must be non-empty strings")
    if record["chosen"] == record["rejected"]:
        raise PreferenceError(f"{where}: chosen and rejected are the same text, so the pair prefers nothing")
    return record


def append_pairs(path: str | Path, records: Sequence[dict[str, str]]) -> int:
    """Validate every record first, then append them to the JSON-lines file `path` (created if missing), so a bad
    record writes nothing and earlier labels are never lost. Returns the number of lines the file then holds."""
    checked = [validate_pair(r, f"record {i}") for i, r in enumerate(records)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        for record in checked:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()
    return sum(1 for _ in open(path, encoding="utf-8"))


def read_pairs(path: str | Path) -> list[dict[str, str]]:
    """Every pair in the JSON-lines file `path`; PreferenceError naming the line for a malformed one."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: label some pairs or build them first")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise PreferenceError(f"{path}:{number}: not JSON ({error.msg}); fix or delete that line") from None
        pairs.append(validate_pair(record, f"{path}:{number}"))
    return pairs


# ------------------------------------------------------------------------------------------- the labelling UI


class LabellingSession:
    """Show two answers to the same prompt, A and B in random order, and record which one the rater prefers.
    Every answer is appended at once to `path` in the pair format, so closing the notebook loses nothing.

    `widget()` is the human interface (ipywidgets buttons); `answer(choice)` is what its buttons call, so a
    script (or a test) can label the same way without a display: `run_scripted(choices)`.
    """

    CHOICES = ("A", "B", "tie")

    def __init__(self, items: Sequence[dict[str, str]], path: str | Path, rater: str, seed: int = 0) -> None:
        """`items`: {"prompt", "first", "second"} each (two different answers). The display order is shuffled."""
        if not items:
            raise PreferenceError("nothing to label: pass at least one item")
        for i, item in enumerate(items):
            if not all(isinstance(item.get(k), str) and item[k].strip() for k in ("prompt", "first", "second")):
                raise PreferenceError(f"item {i}: needs non-empty prompt, first and second")
        rng = random.Random(seed)
        self.items = [dict(item, swapped=rng.random() < 0.5) for item in items]
        self.path, self.rater, self.position = Path(path), rater, 0
        self.labels: list[str] = []  # "first", "second" or "tie", per item answered

    def shown(self, index: int) -> tuple[str, str]:
        """The answers as displayed for item `index`: (A, B)."""
        item = self.items[index]
        return (item["second"], item["first"]) if item["swapped"] else (item["first"], item["second"])

    def answer(self, choice: str) -> str:
        """Record the rater's choice for the current item ("A", "B" or "tie") and move on; returns which answer
        won ("first", "second" or "tie"). Ties are kept for agreement statistics but make no training pair."""
        if choice not in self.CHOICES:
            raise PreferenceError(f"choice must be one of {self.CHOICES}, got {choice!r}")
        if self.position >= len(self.items):
            raise PreferenceError("every item is already labelled")
        item, (a, b) = self.items[self.position], self.shown(self.position)
        winner = "tie" if choice == "tie" else ("first" if (choice == "A") != item["swapped"] else "second")
        if winner != "tie":
            chosen, rejected = (a, b) if choice == "A" else (b, a)
            append_pairs(
                self.path, [{"prompt": item["prompt"], "chosen": chosen, "rejected": rejected, "rater": self.rater}]
            )
        self.labels.append(winner)
        self.position += 1
        return winner

    def run_scripted(self, winners: Sequence[str]) -> list[str]:
        """Label headless: `winners` says, per item, which answer the scripted rater prefers ("first", "second"
        or "tie"); it is translated into the A/B button the rater would press, exactly as the widget does."""
        if len(winners) != len(self.items) - self.position:
            raise PreferenceError(f"{len(winners)} scripted answers for {len(self.items) - self.position} items")
        for winner in winners:
            swapped = self.items[self.position]["swapped"]
            self.answer("tie" if winner == "tie" else "A" if (winner == "first") != swapped else "B")
        return self.labels

    def widget(self) -> Any:
        """An ipywidgets panel: the prompt, answers A and B, and three buttons that call `answer`."""
        import ipywidgets as w

        text = w.HTML()
        buttons = [w.Button(description=f"{c} is better" if c != "tie" else "tie / skip") for c in self.CHOICES]

        def refresh() -> None:
            if self.position >= len(self.items):
                text.value = f"<b>Done</b>: {len(self.labels)} labels appended to {self.path.name}"
                return
            a, b = self.shown(self.position)
            prompt = self.items[self.position]["prompt"].replace("\n", "<br>")
            text.value = (
                f"<p>{self.position + 1}/{len(self.items)}</p><p>{prompt}</p><p><b>A:</b> {a}</p><p><b>B:</b> {b}</p>"
            )

        for button, choice in zip(buttons, self.CHOICES, strict=True):
            button.on_click(lambda _, c=choice: (self.answer(c), refresh()))
        refresh()
        return w.VBox([text, w.HBox(buttons)])


# ------------------------------------------------------------------------------------------------- the judges

EARLY_MODERN = {
    "thou",
    "thee",
    "thy",
    "thine",
    "hath",
    "doth",
    "art",
    "'tis",
    "ere",
    "nay",
    "ay",
    "o",
    "hast",
    "dost",
    "wilt",
    "shalt",
    "wherefore",
    "whence",
    "hither",
    "thither",
    "methinks",
    "prithee",
    "anon",
    "alas",
    "yea",
    "'twas",
    "e'en",
    "o'er",
    "ne'er",
    "e'er",
    "mine",
    "ye",
}
CHAT_MARKERS = ("here is", "here's", "sure", "next line", "as an ai", "i'm", "i am sorry", "certainly", "line:")


def syllables(word: str) -> int:
    """A rough English syllable count: groups of vowels, a final silent e dropped, at least one per word."""
    word = word.lower().strip("'")
    groups = len(re.findall(r"[aeiouy]+", word))
    return max(1, groups - (word.endswith("e") and not word.endswith(("le", "ee")) and groups > 1))


def verse_rule(text: str, prompt: str = "") -> int:
    """A hand-written judge of "the next line of a Shakespeare speech", 0-4 points: one line of 8-13 syllables
    (iambic pentameter has 10 or 11), at least one early-modern word (thou, hath, 'tis...), no chat phrasing
    ("Here is...", "Sure"), and new words: no run of four words copied from the `prompt`. It never trains
    anything, so a policy that fools the reward model without writing verse shows up as a gap between judges."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return 0
    words = re.findall(r"[A-Za-z']+", lines[0])
    metre = len(lines) == 1 and 8 <= sum(syllables(w) for w in words) <= 13
    archaic = any(w.lower() in EARLY_MODERN or w.lower().endswith(("eth", "est")) for w in words)
    plain = not any(marker in text.lower() for marker in CHAT_MARKERS)
    return int(metre) + int(archaic) + int(plain) + int(not _shares_run(text, prompt, 4))


def _shares_run(text: str, other: str, n: int) -> bool:
    def runs(x: str) -> set[tuple[str, ...]]:
        words = re.findall(r"[a-z']+", x.lower())
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    return bool(runs(text) & runs(other))


@torch.no_grad()
def reward_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """A sequence-classification reward model's score of each (prompt, reply), read as the text `prompt + "\\n"
    + reply` it was trained on (see `reward_trainer`); shape (len(prompts),)."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    model.eval()
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            p + "\n" + r
            for p, r in zip(prompts[start : start + batch_size], replies[start : start + batch_size], strict=True)
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256).to(device)
        scores.append(model(**batch).logits[:, 0].float().cpu())
    return torch.cat(scores)


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs whose chosen answer the reward model scores strictly higher than the rejected one."""
    if chosen.shape != rejected.shape or chosen.numel() == 0:
        raise ValueError(f"need one chosen and one rejected score per pair, got {chosen.shape}, {rejected.shape}")
    return float((chosen > rejected).float().mean())


def _content(message: Any) -> str:
    """The text of a trl prompt or completion: plain text, or the last turn of a chat-format list."""
    return message[-1]["content"] if isinstance(message, list) else message


def reward_function(model: Any, tokenizer: Any) -> Callable[..., list[float]]:
    """The reward model as a trl reward function: (prompts, completions) in plain or chat format -> scores."""

    def reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        texts = [_content(p) for p in prompts], [_content(c) for c in completions]
        return reward_scores(model, tokenizer, *texts).tolist()

    reward.__name__ = "reward_model"
    return reward


def rule_reward(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """`verse_rule` as a trl reward function (notebook 10's exercise 3 trains GRPO on it): each completion's 0-4
    points, judged against its own prompt as the held-out judge does, so copying the prompt earns no point.
    Prompts and completions in plain or chat format."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return [float(verse_rule(_content(c), _content(p))) for p, c in zip(prompts, completions, strict=True)]


# ------------------------------------------------------------------------------------------- DPO and the KL


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO loss per pair (Rafailov et al., 2023, eq. 7), from sequence log-probabilities (nats):

        -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

    beta * log(pi / ref) is the reward the policy implicitly assigns an answer, so the loss is the reward model's
    pairwise (Bradley-Terry) loss with the policy itself as the reward model."""
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


def sequence_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], replies: Sequence[str], batch_size: int = 16
) -> torch.Tensor:
    """log pi(reply | prompt) summed over the reply's tokens (the end-of-turn tokens the chat template adds
    included, as trl's DPOTrainer counts them), with the prompt as a user turn and the reply as the assistant turn;
    shape (len(prompts),), nats."""
    if len(prompts) != len(replies):
        raise ValueError(f"{len(prompts)} prompts but {len(replies)} replies")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        ids, masks = [], []
        for prompt, reply in zip(prompts[start : start + batch_size], replies[start : start + batch_size], strict=True):
            head = tokenizer.apply_chat_template(chat(prompt), tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(
                chat(prompt) + [{"role": "assistant", "content": reply}], tokenize=False
            )
            head_ids = tokenizer(head, add_special_tokens=False).input_ids
            tail_ids = tokenizer(full[len(head) :], add_special_tokens=False).input_ids
            ids.append(head_ids + tail_ids)
            masks.append([0] * len(head_ids) + [1] * len(tail_ids))
        width = max(map(len, ids))
        input_ids = torch.tensor([x + [tokenizer.pad_token_id] * (width - len(x)) for x in ids], device=device)
        scored = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)
        attention = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
        token_logps = logits.log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        out.append((token_logps * scored[:, 1:]).sum(-1).cpu())
    return torch.cat(out)


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> tuple[float, float]:
    """Monte-Carlo estimate of KL(policy || reference) per reply, in nats, with its standard error: the mean of
    log pi(y|x) - log ref(y|x) over replies y *sampled from the policy* (greedy replies would bias it)."""
    if policy_logps.shape != reference_logps.shape or policy_logps.numel() < 2:
        raise ValueError("need at least two replies scored by both models")
    ratio = (policy_logps - reference_logps).double()
    return float(ratio.mean()), float(ratio.std() / ratio.numel() ** 0.5)


# ------------------------------------------------------------------------------------------- the trainers


def _common(output_dir: str | Path, steps: int, lr: float, batch_size: int, seed: int) -> dict[str, Any]:
    if steps < 1 or batch_size < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, batch_size >= 1 and lr > 0 (got {steps}, {batch_size}, {lr})")
    return dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # trl defaults to bf16, CPUs too
        dataloader_pin_memory=torch.cuda.is_available(),
        dataloader_num_workers=0,
        activation_checkpointing=False,  # trl's default is on; recomputing costs a third more compute
        disable_tqdm=os.environ.get("TQDM_DISABLE") == "1",
    )


def _quiet(trainer: Any) -> Any:
    """Drop the callback that prints every log line when progress bars are off; logs stay in the trainer state."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def reward_trainer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    output_dir: str | Path,
    steps: int,
    lr: float = 5e-5,
    batch_size: int = 8,
    seed: int = 0,
) -> Any:
    """trl's RewardTrainer on `pairs`: a sequence classifier with one output (num_labels=1) learns to score
    `prompt + "\\n" + chosen` above `prompt + "\\n" + rejected` (the Bradley-Terry loss of InstructGPT's reward
    model, Ouyang et al., 2022)."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    rows = [{"prompt": p["prompt"] + "\n", "chosen": p["chosen"], "rejected": p["rejected"]} for p in pairs]
    config = RewardConfig(
        **_common(output_dir, steps, lr, batch_size, seed),
        max_length=256,
        eos_token=tokenizer.sep_token or tokenizer.eos_token,
    )
    data = Dataset.from_list(rows)
    return _quiet(RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer))


def dpo_trainer(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[dict[str, str]],
    output_dir: str | Path,
    steps: int,
    lr: float = 5e-4,
    beta: float = 0.1,
    batch_size: int = 4,
    lora: Any = None,
    seed: int = 0,
    callbacks: Sequence[Any] = (),
) -> Any:
    """trl's DPOTrainer on `pairs` (chat format). With `lora` the reference model is the base model with the
    adapter switched off, so no second copy is held; without it pass a LoRA config anyway or trl would try to
    reload the reference from the hub by the model's name."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if lora is None:
        raise ValueError("pass a LoRA config: the reference model is then the base model with the adapter disabled")
    rows = [
        {
            "prompt": chat(p["prompt"]),
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    config = DPOConfig(**_common(output_dir, steps, lr, batch_size, seed), beta=beta, max_length=256)
    data = Dataset.from_list(rows)
    return _quiet(
        DPOTrainer(
            model=model,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=lora,
            callbacks=list(callbacks),
        )
    )


def grpo_trainer(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: Callable[..., list[float]],
    output_dir: str | Path,
    steps: int,
    lr: float = 5e-4,
    generations: int = 4,
    prompts_per_step: int = 2,
    max_new_tokens: int = 24,
    beta: float = 0.04,
    lora: Any = None,
    seed: int = 0,
) -> Any:
    """trl's GRPOTrainer (Shao et al., 2024): each step samples `generations` replies to each of
    `prompts_per_step` prompts, scores them with `reward`, and pushes up the replies that beat their group's
    mean, with a KL penalty `beta` to the reference (the base model with the LoRA adapter off)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    config = GRPOConfig(
        **_common(output_dir, steps, lr, generations * prompts_per_step, seed),
        num_generations=generations,
        max_completion_length=max_new_tokens,
        beta=beta,
        temperature=1.0,
        log_completions=False,
    )
    data = Dataset.from_list([{"prompt": chat(p)} for p in prompts])
    return _quiet(
        GRPOTrainer(
            model=model,
            reward_funcs=reward,
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=lora,
        )
    )
