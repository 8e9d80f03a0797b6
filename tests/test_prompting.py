"""Prompt templates, few-shot sampling, rank classification, generation and parsing, self-consistency votes, the
prompt log, prompt learning and classifier-free guidance (utils/prompting.py, notebook 13).

The model-level tests use a tiny random Llama with SmolLM2's real tokenizer and chat template, so they check the
arithmetic of scoring against a plain per-pair computation in seconds, without loading the 135M model."""

import json

import pytest
import tiny_models
import torch

from utils import prompting as P

LABELS = ("comedy", "history", "tragedy")
POOL = [{"text": f"passage {i} about {label}", "label": label} for label in LABELS for i in range(5)]


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_models.smollm2_tokenizer()


def make_tiny_llama(tokenizer):
    return tiny_models.tiny_llama(tokenizer, max_position_embeddings=512, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return make_tiny_llama(tokenizer)


# ------------------------------------------------------------------------------------------------------ templates


def test_template_renders_instruction_demonstrations_and_input_through_the_chat_template(tokenizer):
    template = P.PromptTemplate("t", "Name the genre.", user="Passage: {text}", answer="Genre: {label}")
    text = template.render(tokenizer, "To be or not to be", [{"text": "Wilt thou marry me?", "label": "comedy"}])
    assert text == (
        "<|im_start|>system\nName the genre.<|im_end|>\n"
        "<|im_start|>user\nPassage: Wilt thou marry me?<|im_end|>\n<|im_start|>assistant\nGenre: comedy<|im_end|>\n"
        "<|im_start|>user\nPassage: To be or not to be<|im_end|>\n<|im_start|>assistant\n"
    )
    assert template.choices(LABELS) == ["Genre: comedy", "Genre: history", "Genre: tragedy"]


def test_instruction_in_the_user_turn_leaves_the_models_default_system_turn(tokenizer):
    inline = P.PromptTemplate("inline", "Name the genre.", system=False)
    messages = inline.messages("Hello", [{"text": "Hi", "label": "comedy"}])
    assert messages[0] == {"role": "user", "content": "Name the genre.\n\nHi"}
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "You are a helpful AI assistant named SmolLM" in inline.render(tokenizer, "Hello")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"user": "no slot"}, "exactly one {text}"),
        ({"user": "{text} and {other}"}, "exactly one {text}"),
        ({"answer": "{lab}"}, "exactly one {label}"),
        ({"user": "{text"}, "malformed template"),
        ({"instruction": "  "}, "empty instruction"),
    ],
)
def test_bad_templates_are_refused_when_defined(fields, match):
    with pytest.raises(ValueError, match=match):
        P.PromptTemplate(**{"name": "bad", "instruction": "Do it.", **fields})


def test_rendering_refuses_empty_text_and_tokenizers_without_a_chat_template(tokenizer):
    template = P.PromptTemplate("t", "Name the genre.")
    with pytest.raises(ValueError, match="empty"):
        template.render(tokenizer, "   ")

    class Base:
        chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        template.render(Base(), "text")


# ------------------------------------------------------------------------------------------------ few-shot draws


def test_few_shot_sampling_is_deterministic_balanced_and_keeps_the_eval_set_out():
    first = P.sample_shots(POOL, 4, seed=3)
    assert first == P.sample_shots(list(POOL), 4, seed=3)  # same pool and seed: same examples, same order
    draws = {tuple(r["text"] for r in P.sample_shots(POOL, 4, seed=s)) for s in range(10)}
    assert len(draws) > 5  # other seeds draw other examples or orders
    for k in (3, 6):
        labels = [r["label"] for r in P.sample_shots(POOL, k, seed=1)]
        assert sorted(labels) == sorted(LABELS * (k // 3))
    banned = [r["text"] for r in POOL[:4]]
    for seed in range(20):
        assert not {r["text"] for r in P.sample_shots(POOL, 6, seed, exclude=banned)} & set(banned)
    assert P.sample_shots(POOL, 0, seed=0) == []
    assert len(P.sample_shots(POOL, 7, seed=0, balanced=False)) == 7


def test_few_shot_sampling_refuses_impossible_requests():
    with pytest.raises(ValueError, match="k must be"):
        P.sample_shots(POOL, -1, 0)
    with pytest.raises(ValueError, match="pool of 15"):
        P.sample_shots(POOL, 16, 0)
    with pytest.raises(ValueError, match="needs a non-empty"):
        P.sample_shots([{"text": "", "label": "comedy"}], 1, 0)


# ---------------------------------------------------------------------------------------------------- scoring


def _reference_logprobs(model, tokenizer, prompts, choices):
    """Each (prompt, choice) pair on its own, whole sequence, no cache, no padding."""
    out = torch.zeros(len(prompts), len(choices))
    for i, prompt in enumerate(prompts):
        p = tokenizer(prompt, add_special_tokens=False).input_ids
        for j, choice in enumerate(choices):
            c = tokenizer(choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([p + c])).logits[0, -len(c) - 1 : -1].log_softmax(-1)
            out[i, j] = logits[torch.arange(len(c)), torch.tensor(c)].sum()
    return out


@pytest.mark.parametrize("answer", ["{label}", "Genre: {label}", "The genre is {label}"])
def test_choice_logprobs_equal_a_plain_per_pair_computation(tiny_model, tokenizer, answer):
    template = P.PromptTemplate("t", "Name the genre.", answer=answer)
    shots = P.sample_shots(POOL, 2, seed=0)
    prompts = [template.render(tokenizer, text, shots) for text in ["a", "a longer passage here", "mid text"]]
    choices = template.choices(LABELS)
    expected = _reference_logprobs(tiny_model, tokenizer, prompts, choices)
    for batch_size, share in [(1, True), (2, True), (8, False)]:
        got = P.choice_logprobs(tiny_model, tokenizer, prompts, choices, batch_size=batch_size, share_prefix=share)
        # tokens all choices share ("Genre:") are conditioned on, not scored: the same constant leaves every choice
        torch.testing.assert_close(got.log_softmax(1), expected.log_softmax(1), atol=1e-4, rtol=1e-4)
        if answer == "{label}":
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    predicted, probs = P.rank_classify(tiny_model, tokenizer, prompts, LABELS, choices)
    assert predicted == [LABELS[i] for i in expected.argmax(1).tolist()]
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def test_multi_token_choices_continue_from_the_prompt_cache_across_padding(tiny_model, tokenizer):
    # choices of 1, 2 and 3 tokens after prompts of very different lengths: the short prompts' padding sits
    # between their last token and the continued choice tokens, which must neither see it nor shift position
    prompts = ["a", "word " * 40, "a passage of middling length", "two words"]
    choices = ["history", "comedy", "tragedy", "x y z w"]
    expected = _reference_logprobs(tiny_model, tokenizer, prompts, choices)
    for batch_size, share in [(4, True), (3, False)]:
        got = P.choice_logprobs(tiny_model, tokenizer, prompts, choices, batch_size=batch_size, share_prefix=share)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_choice_logprobs_handle_prompt_tuning_virtual_tokens(tokenizer):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(make_tiny_llama(tokenizer), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    assert P.is_prompt_learning(model)
    prompts = ["short", "a somewhat longer prompt"]
    got = P.choice_logprobs(model, tokenizer, prompts, list(LABELS))  # padded batch, virtual positions dropped
    for i, prompt in enumerate(prompts):
        for j, choice in enumerate(LABELS):
            alone = P.choice_logprobs(model, tokenizer, [prompt], [choice, "x"])[0, 0]
            torch.testing.assert_close(got[i, j], alone, atol=1e-4, rtol=1e-4)


def test_choice_logprobs_refuse_bad_input(tiny_model, tokenizer):
    for prompts, choices, match in [
        ([], ["a"], "at least one"),
        (["p"], ["a", "a"], "must differ"),
        (["p"], [""], "empty after tokenization"),
    ]:
        with pytest.raises(ValueError, match=match):
            P.choice_logprobs(tiny_model, tokenizer, prompts, choices)
    with pytest.raises(ValueError, match="one answer string per label"):
        P.rank_classify(tiny_model, tokenizer, ["p"], LABELS, ["a"])


# ------------------------------------------------------------------------------------------ generation and parsing


def test_generation_is_reproducible_and_batched_like_single_prompts(tiny_model, tokenizer):
    prompts = ["Hello there", "A much longer prompt that needs padding"]
    greedy = P.generate(tiny_model, tokenizer, prompts, max_new_tokens=5)
    assert greedy == P.generate(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=1)
    sampled = P.generate(tiny_model, tokenizer, prompts, 5, samples=3, temperature=1.0, seed=7)
    assert [len(s) for s in sampled] == [3, 3]
    assert sampled == P.generate(tiny_model, tokenizer, prompts, 5, samples=3, temperature=1.0, seed=7)
    with pytest.raises(ValueError, match="greedy decoding gives one"):
        P.generate(tiny_model, tokenizer, prompts, samples=2)
    with pytest.raises(ValueError, match="at least one prompt"):
        P.generate(tiny_model, tokenizer, [])


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("tragedy", "tragedy"),
        ("The passage mourns a death. Answer: Tragedy.", "tragedy"),
        ("It mentions a king, so maybe history, but the jokes... the genre is **comedy**", "comedy"),
        ("Answer: history\nAnswer: comedy", "comedy"),  # the last explicit answer wins
        ("Comedy or tragedy, hard to say.", None),  # two labels, no explicit answer
        ("I think this is from Hamlet.", None),
        ("historyless nonsense", None),  # whole words only
        ("", None),
    ],
)
def test_parse_label_reads_free_text_answers(reply, expected):
    assert P.parse_label(reply, LABELS) == expected


def test_majority_vote_ignores_unparseable_votes_and_breaks_ties_by_arrival():
    assert P.majority_vote(["comedy", None, "tragedy", "comedy"]) == "comedy"
    assert P.majority_vote(["tragedy", "comedy", "comedy", "tragedy"]) == "comedy"  # comedy reached 2 first
    assert P.majority_vote([None, None]) is None
    assert P.majority_vote([]) is None


# ------------------------------------------------------------------------------------------------------ the log


def test_prompt_log_round_trips_runs_and_refuses_bad_records(tmp_path):
    log = P.PromptLog(tmp_path / "runs" / "prompts.jsonl")
    config = {"model": "m", "template": P.template_config(P.PromptTemplate("t", "Do it.")), "seed": 0}
    run = log.log(config, {"accuracy": 0.5}, ["comedy", "tragedy"])
    assert run == P.fingerprint(dict(config)) and len(run) == 12
    assert P.fingerprint({**config, "seed": 1}) != run
    assert log.find(run)["outputs"] == ["comedy", "tragedy"]
    with pytest.raises(TypeError, match="JSON-serialisable"):
        log.log({"model": object()}, {}, [])
    assert len(log.runs()) == 1  # the refused run wrote nothing
    with pytest.raises(KeyError, match="no run"):
        log.find("000000000000")
    with open(log.path, "a") as handle:
        handle.write("{not json\n")
    with pytest.raises(ValueError, match=r"prompts.jsonl:2"):
        log.runs()
    assert json.loads(log.path.read_text().splitlines()[0])["metrics"] == {"accuracy": 0.5}


# ------------------------------------------------------------------------------------------------ prompt learning


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_prompt_and_prefix_tuning_train_only_the_virtual_tokens(tokenizer, kind):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    kind_config = PromptTuningConfig if kind == "prompt" else PrefixTuningConfig
    model = get_peft_model(make_tiny_llama(tokenizer), kind_config(task_type="CAUSAL_LM", num_virtual_tokens=4))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    soft = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    # prompt tuning: 4 input embeddings of width 32; prefix tuning: 4 keys and values per layer (2 layers, 2 KV
    # heads of width 8 each)
    assert sum(p.numel() for p in soft.values()) == (4 * 32 if kind == "prompt" else 4 * 2 * 2 * 2 * 8)
    template = P.PromptTemplate("t", "Name the genre.")
    losses = P.train_prompt_learning(model, tokenizer, template, POOL, steps=2, lr=0.1, batch_size=4)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, soft[n]) for n, p in model.named_parameters() if n in soft)
    scores = P.choice_logprobs(model, tokenizer, [template.render(tokenizer, "a passage")], list(LABELS))
    assert scores.shape == (1, 3) and torch.isfinite(scores).all()


def test_answer_examples_mask_the_prompt_and_training_needs_trainable_parameters(tokenizer):
    template = P.PromptTemplate("t", "Name the genre.")
    example = P.answer_example(tokenizer, template, "text", "comedy")
    answer = [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != -100]
    assert tokenizer.decode(answer) == "comedy<|im_end|>"
    with pytest.raises(ValueError, match="no parameter requires gradients"):
        P.train_prompt_learning(torch.nn.Linear(2, 2).requires_grad_(False), tokenizer, template, POOL, 1, 0.1)


# --------------------------------------------------------------------------------------- classifier-free guidance


def test_guided_noise_interpolates_and_extrapolates():
    cond, uncond = torch.full((2, 3), 2.0), torch.zeros(2, 3)
    assert torch.equal(P.guided_noise(cond, uncond, 0.0), uncond)
    assert torch.equal(P.guided_noise(cond, uncond, 1.0), cond)
    assert torch.equal(P.guided_noise(cond, uncond, 3.0), torch.full((2, 3), 6.0))
    with pytest.raises(ValueError, match="differ in shape"):
        P.guided_noise(cond, torch.zeros(3, 2), 1.0)


def test_guided_diffusion_trains_and_samples_reproducibly():
    from diffusers import DDPMScheduler

    unet, scheduler = P.digit_unet(width=8), DDPMScheduler(num_train_timesteps=50)
    images, labels = torch.rand(32, 1, 8, 8) * 2 - 1, torch.arange(32) % 10
    losses = P.train_guided_diffusion(unet, scheduler, images, labels, steps=2, batch_size=8)
    assert len(losses) == 2
    first = P.guided_sample(unet, scheduler, torch.tensor([3, 7]), scale=2.0, steps=4, seed=1)
    assert first.shape == (2, 1, 8, 8) and first.abs().max() <= 1
    assert torch.equal(first, P.guided_sample(unet, scheduler, torch.tensor([3, 7]), scale=2.0, steps=4, seed=1))
    with pytest.raises(ValueError, match="reserved for 'no class'"):
        P.train_guided_diffusion(unet, scheduler, images, torch.full((32,), 10), steps=1)
    with pytest.raises(ValueError, match="multiple of 8"):
        P.digit_unet(width=12)
