"""The genre dataset, chat formatting with the prompt masked out of the loss (checked against trl's SFTTrainer),
rank classification with a shared key-value cache, and adapters saved, merged and reloaded unchanged. Models are a
tiny random Llama with SmolLM2's tokenizer, so the tests take seconds."""

import json

import pytest
import tiny_models
import torch
from peft import get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from utils import finetuning as ft


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.smollm2_tokenizer()


@pytest.fixture(scope="module")
def data():
    return ft.genre_dataset(per_genre={"train": 12, "validation": 3, "test": 6}, words=24)


def tiny_llama(tokenizer, seed=0):
    return tiny_models.tiny_llama(tokenizer, seed, max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id)


def test_speeches_drop_speakers_directions_and_headings():
    play = (
        "ACT I.\n\nScene I. A room.\n\n[Enter Bernardo.]\n\nBer.\nWho's there? [Aside.]\nStand.\n\nTHESEUS\nSo be it.\n"
    )
    assert ft.spoken_lines(play) == [["Who's there?", "Stand."], ["So be it."]]
    assert ft.play_passages(play, words=3) == ["Who's there?\nStand.", "So be it."]
    assert ft.play_passages(play, words=4) == ["Who's there?\nStand.\nSo be it."]
    assert ft.play_passages(play, words=7) == []  # an incomplete tail is dropped
    with pytest.raises(ft.DatasetError, match="at least one word"):
        ft.play_passages(play, 0)


def test_splits_are_whole_plays_balanced_by_genre(data):
    plays = {split: {e["play"] for e in rows} for split, rows in data.items()}
    assert not plays["train"] & plays["test"] and not plays["train"] & plays["validation"]
    assert plays["test"] == set(ft.TEST_PLAYS)
    for split, rows in data.items():
        counts = {g: sum(e["label"] == g for e in rows) for g in ft.GENRES}
        assert len(set(counts.values())) == 1, (split, counts)
        assert all(ft.FOLIO_GENRES[e["play"]] == e["label"] for e in rows)
    assert ft.genre_dataset(per_genre={"train": 12, "validation": 3, "test": 6}, words=24) == data  # seeded


def test_bad_requests_name_the_fix():
    with pytest.raises(ft.DatasetError, match="asked for test"):
        ft.genre_dataset(per_genre={"train": 3, "validation": 3, "test": 100_000})
    with pytest.raises(ft.DatasetError, match="lacks"):
        ft.genre_dataset(texts={"hamlet_gut": "..."})
    with pytest.raises(ft.DatasetError, match="not a First Folio play"):
        ft.split_of_play("sonnets_gut")
    with pytest.raises(ft.DatasetError, match="not one of"):
        ft.genre_messages("Some text", "romance")
    with pytest.raises(ft.DatasetError, match="empty"):
        ft.genre_messages("  ")
    with pytest.raises(ValueError, match="rank"):
        ft.lora_config(rank=0)


def test_chat_template_and_prompt_mask(tokenizer):
    example = ft.tokenize_example(tokenizer, "To be, or not to be", "tragedy")
    text = tokenizer.decode(example["input_ids"])
    assert text == (
        f"<|im_start|>system\n{ft.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nTo be, or not to be"
        "<|im_end|>\n<|im_start|>assistant\ntragedy<|im_end|>\n"
    )
    answer = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    assert tokenizer.decode(answer) == "tragedy<|im_end|>\n"
    first = example["labels"].index(answer[0])
    assert all(label == -100 for label in example["labels"][:first])
    batch = ft.pad_batch([example, ft.tokenize_example(tokenizer, "Hi", "comedy")], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum()
    assert (batch["labels"][1][batch["attention_mask"][1] == 0] == -100).all()


def test_trl_masks_the_same_tokens(tokenizer, data, tmp_path):
    trainer = ft.sft_trainer(
        tiny_llama(tokenizer), tokenizer, data["train"][:2], tmp_path, steps=1, lr=1e-3, batch_size=2
    )
    assert trainer.args.bf16 == ft.bf16_available()  # trl's default, bf16 autocast, would apply on CPUs too
    batch = next(iter(trainer.get_train_dataloader()))
    ours = {
        tuple(x["input_ids"]): x["labels"]
        for x in (ft.tokenize_example(tokenizer, e["text"], e["label"]) for e in data["train"][:2])
    }
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        length = int(mask.sum())
        assert labels[:length].tolist() == ours[tuple(ids[:length].tolist())]


def test_the_first_warm_up_step_already_learns(tokenizer, data, tmp_path):
    assert [ft.warmup_factor(k, 2) for k in range(4)] == pytest.approx([1 / 3, 2 / 3, 1, 1])
    assert ft.warmup_factor(0, 0) == 1.0
    trainer = ft.sft_trainer(
        tiny_llama(tokenizer), tokenizer, data["train"][:2], tmp_path, 1, 1e-3, 2, lora=ft.lora_config(2, 4)
    )
    trainer.train()
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 2 / 3)  # the rate of the next step
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "B starts at zero: only a step at lr > 0 moves it"
    with pytest.raises(ValueError, match="warmup"):
        ft.sft_trainer(tiny_llama(tokenizer), tokenizer, data["train"][:2], tmp_path, 1, 1e-3, 2, warmup=-1)


def test_sweep_picks_on_validation_and_its_checkpoint_is_a_shorter_run(tokenizer, data, tmp_path):
    validation = data["validation"][:6]
    sweep = ft.sft_sweep(
        tiny_llama(tokenizer),
        tokenizer,
        data["train"][:4],
        validation,
        tmp_path,
        [1e-2, 3e-3],
        steps=3,
        every=2,
        batch_size=2,
        rank=2,
    )
    assert set(sweep["curves"]) == {1e-2, 3e-3}
    assert all([p["step"] for p in points] == [2, 3] for points in sweep["curves"].values())  # and the last step
    assert all(p["tokens"] > 0 and p["train_seconds"] > 0 for points in sweep["curves"].values() for p in points)
    best = max((p["accuracy"], -p["step"], -i) for i, points in enumerate(sweep["curves"].values()) for p in points)
    assert (sweep["accuracy"], -sweep["steps"]) == best[:2]
    assert sweep["lr"] == list(sweep["curves"])[-best[2]]
    model = sweep["trainer"].model
    predicted, _ = ft.classify(model, tokenizer, [e["text"] for e in validation])
    assert (
        sum(p == e["label"] for p, e in zip(predicted, validation, strict=True)) / len(validation) == sweep["accuracy"]
    )
    # the fixed warm-up makes step k of the sweep's run the end of a fresh k-step run: the same weights
    fresh = ft.sft_trainer(
        tiny_llama(tokenizer),
        tokenizer,
        data["train"][:4],
        tmp_path / "fresh",
        sweep["steps"],
        sweep["lr"],
        2,
        lora=ft.lora_config(2, 4),
    )
    fresh.train()
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, parameter in fresh.model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, trained[name])
    text = ft.describe_sweep("LoRA", sweep, 1.0).splitlines()
    assert len(text) == 4 and text[-1].startswith(f"  chosen: lr {sweep['lr']:g}, {sweep['steps']} steps")
    with pytest.raises(ValueError, match="every"):
        ft.ValidationCurve(tokenizer, validation, every=0)


def test_course_gpt_classifier_starts_from_the_saved_weights_or_from_scratch(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    saved = GPT2LMHeadModel.from_pretrained(tmp_path).transformer.wte.weight
    pretrained = ft.course_gpt_classifier(tmp_path, True, pad_id=0)
    scratch = ft.course_gpt_classifier(tmp_path, False, pad_id=0)
    assert pretrained.config.num_labels == 3 and pretrained.config.pad_token_id == 0
    torch.testing.assert_close(pretrained.transformer.wte.weight, saved)
    assert not torch.equal(scratch.transformer.wte.weight, saved)


def test_cached_prefix_scores_equal_full_forward(tokenizer, data):
    model = tiny_llama(tokenizer)
    shots = data["train"][:2]
    parts = [ft.prompt_parts(tokenizer, e["text"], shots) for e in data["test"][:3]]
    completions = [g + tokenizer.eos_token for g in ft.GENRES]
    cached = ft.completion_logprobs(
        model, tokenizer, [s for _, s in parts], completions, prefix=parts[0][0], batch_size=2
    )
    for row, (prefix, suffix) in enumerate(parts):
        for col, completion in enumerate(completions):
            ids = tokenizer(prefix + suffix + completion, add_special_tokens=False, return_tensors="pt").input_ids
            n = len(tokenizer(completion, add_special_tokens=False).input_ids)
            with torch.no_grad():
                logps = model(input_ids=ids, logits_to_keep=n + 1).logits[0, :-1].log_softmax(-1)
            expected = logps.gather(-1, ids[0, -n:, None]).sum()
            assert cached[row, col] == pytest.approx(expected.item(), abs=1e-4)
    labels, probs = ft.classify(model, tokenizer, [e["text"] for e in data["test"][:4]])
    assert probs.shape == (4, 3) and torch.allclose(probs.sum(-1), torch.ones(4))
    assert set(labels) <= set(ft.GENRES)


def test_adapter_save_merge_reload_equal(tokenizer, tmp_path, monkeypatch):
    base = tiny_llama(tokenizer)
    config = ft.lora_config(rank=4)
    config.init_lora_weights = False  # random B, so the adapter changes the output
    model = get_peft_model(base, config).eval()
    assert 0 < ft.count_trainable(model) < sum(p.numel() for p in model.parameters())
    ids = torch.tensor([tokenizer("Now is the winter of our discontent").input_ids])
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.allclose(adapted, plain)
    folder = ft.save_adapter(model, tokenizer, tmp_path / "adapter", {"settings": {"rank": 4}})
    assert ft.adapter_info(folder)["settings"] == {"rank": 4}
    assert not (tmp_path / "adapter.partial").exists()
    monkeypatch.setattr(ft.assets, "load_smollm2", lambda device="cpu": (tiny_llama(tokenizer), tokenizer))
    reloaded, _ = ft.load_genre_adapter(folder)
    merged, _ = ft.load_genre_adapter(folder, merge=True)
    assert not hasattr(merged, "peft_config")
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, adapted, atol=1e-5)
        assert torch.allclose(merged(input_ids=ids).logits, adapted, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="train_genre_adapter"):
        ft.adapter_info(tmp_path / "nothing")


def test_train_genre_adapter_reuses_only_an_adapter_of_the_same_settings_and_recipe(
    tokenizer, data, tmp_path, monkeypatch
):
    monkeypatch.setattr(ft.assets, "load_smollm2", lambda device="cpu": (tiny_llama(tokenizer), tokenizer))
    small = {"train": data["train"][:2], "validation": data["validation"][:2]}
    folder = ft.train_genre_adapter(tmp_path / "adapter", steps=1, batch_size=2, rank=2, data=small)
    info = ft.adapter_info(folder)
    assert info["settings"]["steps"] == 1 and info["recipe_version"] == ft.ADAPTER_RECIPE_VERSION
    marker = folder / ft.COMPLETE_MARKER
    written = marker.stat().st_mtime_ns
    assert ft.train_genre_adapter(folder, steps=1, batch_size=2, rank=2, data=small) == folder
    assert marker.stat().st_mtime_ns == written  # reused, not retrained
    marker.write_text(json.dumps({**info, "recipe_version": 1}))  # trained before the warm-up fix
    ft.train_genre_adapter(folder, steps=1, batch_size=2, rank=2, data=small)
    assert ft.adapter_info(folder)["recipe_version"] == ft.ADAPTER_RECIPE_VERSION


def test_fit_classifier_learns_a_separable_task_and_predicts():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = BertForSequenceClassification(config)
    labels = torch.arange(64) % 2
    inputs = {"input_ids": torch.stack([torch.full((4,), 3 + int(y)) for y in labels])}  # token 3 or 4 says the class
    losses = ft.fit_classifier(model, inputs, labels, steps=15, lr=3e-2, batch_size=16)
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert (ft.predict_classes(model, inputs, batch_size=10) == labels).all()
    with pytest.raises(ValueError, match="one row per label"):
        ft.fit_classifier(model, {"input_ids": inputs["input_ids"][:3]}, labels, steps=1, lr=1e-3)


def test_splits_round_trip_and_bad_files_name_the_line(data, tmp_path):
    folder = ft.write_splits(data, tmp_path / "splits")
    assert ft.read_splits(folder, ("train", "test")) == {"train": data["train"], "test": data["test"]}
    (folder / "train.jsonl").write_text('{"text": "Some words", "label": "romance"}\n')
    with pytest.raises(ft.DatasetError, match=r"train.jsonl:1: needs a non-empty text and a label"):
        ft.read_splits(folder, ("train",))
    with pytest.raises(ft.DatasetError, match="missing"):
        ft.read_splits(tmp_path, ("train",))


def test_command_line_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit):
        ft.main(["--steps", "0"])
    assert "must be positive" in capsys.readouterr().err


def test_lora_model_with_a_bf16_base_trains_only_fp32_adapters(tokenizer):
    model = ft.lora_model(tiny_llama(tokenizer), ft.lora_config(rank=4), base_dtype=torch.bfloat16)
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}
    frozen = {n: p for n, p in model.named_parameters() if "lora_" not in n}
    assert adapters and all(p.dtype == torch.float32 and p.requires_grad for p in adapters.values())
    assert frozen and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in frozen.values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.tensor([tokenizer("Now is the winter of our discontent").input_ids])
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(adapters)  # B (zero at the start) moves; no base weight does
    assert all(state["exp_avg"].dtype == torch.float32 for state in optimizer.state.values())
    with pytest.raises(ValueError, match="floating-point"):
        ft.lora_model(tiny_llama(tokenizer), ft.lora_config(rank=4), base_dtype=torch.int8)
