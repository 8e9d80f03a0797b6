"""Captions, the caption tokenizer, the contrastive loss and the small CLIP."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers.models.clip.modeling_clip import image_text_contrastive_loss

from utils.clip import (
    CAPTION_TEMPLATES,
    DIGIT_WORDS,
    PRINTED_FONTS,
    FineTunedClassifier,
    caption_tokenizer,
    clip_batch,
    contrastive_loss,
    digit_caption,
    digits_to_pixels,
    fine_tune,
    image_features,
    printed_digit,
    printed_digits,
    small_clip,
    zero_shot_accuracy,
    zero_shot_classifier,
)


def test_captions_name_the_digit_and_cover_every_template():
    rng = random.Random(0)
    captions = [digit_caption(7, rng) for _ in range(200)]
    assert all("seven" in c or "7" in c for c in captions)
    assert len(set(captions)) == len(CAPTION_TEMPLATES)
    assert digit_caption(3, random.Random(5)) == digit_caption(3, random.Random(5))
    with pytest.raises(ValueError, match="0-9"):
        digit_caption(10, rng)


def test_caption_tokenizer_knows_every_caption_word():
    tok = caption_tokenizer()
    for template in CAPTION_TEMPLATES:
        for label in range(10):
            ids = tok(template.format(word=DIGIT_WORDS[label], digit=label)).input_ids
            assert tok.unk_token_id not in ids and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_contrastive_loss_is_symmetric_and_matches_transformers():
    images, texts = torch.randn(8, 16), torch.randn(8, 16)
    scale = torch.tensor(10.0)
    loss = contrastive_loss(images, texts, scale)
    torch.testing.assert_close(loss, contrastive_loss(texts, images, scale))
    logits = scale * F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T
    torch.testing.assert_close(loss, image_text_contrastive_loss(logits))


def test_perfectly_aligned_pairs_reduce_to_cross_entropy_on_identity_targets():
    aligned = torch.eye(6)
    scale = torch.tensor(5.0)
    expected = F.cross_entropy(scale * torch.eye(6), torch.arange(6))
    torch.testing.assert_close(contrastive_loss(aligned, aligned, scale), expected)


def test_small_clip_trains_on_digit_batches():
    torch.manual_seed(0)
    tok = caption_tokenizer()
    clip = small_clip(tok, width=32, layers=1, heads=2, projection=16)
    pixels = digits_to_pixels(np.random.default_rng(0).integers(0, 17, (20, 8, 8)))
    assert pixels.shape == (20, 1, 8, 8) and pixels.min() >= -1 and pixels.max() <= 1
    labels = np.arange(20) % 10
    batch = clip_batch(tok, pixels, labels, list(range(10)), random.Random(0))
    out = clip(**batch)
    torch.testing.assert_close(out.loss, contrastive_loss(out.image_embeds, out.text_embeds, clip.logit_scale.exp()))
    feats, weights = image_features(clip, pixels), zero_shot_classifier(clip, tok)
    assert feats.shape == (20, 16) and weights.shape == (10, 16)
    torch.testing.assert_close(weights.norm(dim=-1), torch.ones(10))
    logits = FineTunedClassifier(clip)(pixels, torch.tensor(labels))
    assert logits.logits.shape == (20, 10) and logits.loss.item() > 0


def test_printed_digits_match_the_uci_format_and_differ_by_font():
    images, labels = printed_digits(2, seed=0, fonts=PRINTED_FONTS[:3])
    assert images.shape == (20, 8, 8) and labels.tolist() == sorted(list(range(10)) * 2)
    assert images.min() >= 0 and images.max() <= 16 and np.allclose(images, images.round())
    assert all(image.sum() > 0 for image in images)  # every digit left ink
    again, _ = printed_digits(2, seed=0, fonts=PRINTED_FONTS[:3])
    np.testing.assert_array_equal(images, again)
    sans = printed_digit(7, "DejaVuSans.ttf", np.random.default_rng(1))
    serif = printed_digit(7, "DejaVuSerif-Bold.ttf", np.random.default_rng(1))  # same rotation, scale, thickness
    assert not np.array_equal(sans, serif)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="0-9"):
        printed_digit(10, "DejaVuSans.ttf", rng)


def test_zero_shot_accuracy_picks_the_most_similar_class_text():
    class_text = torch.eye(3)
    features = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.6, 0.4, 0.0]])
    assert zero_shot_accuracy(features, class_text, np.array([0, 2, 1])) == pytest.approx(2 / 3)


def test_fine_tune_trains_a_copy_and_reports_test_accuracy():
    torch.manual_seed(0)
    tok = caption_tokenizer()
    clip = small_clip(tok, width=32, layers=1, heads=2, projection=16)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    pixels = digits_to_pixels(np.random.default_rng(0).integers(0, 17, (40, 8, 8)))
    labels = np.arange(40) % 2  # two classes
    classifier, accuracy = fine_tune(clip, pixels, labels, np.arange(30), np.arange(30, 40), steps=3, batch=8)
    assert isinstance(classifier, FineTunedClassifier) and 0.0 <= accuracy <= 1.0
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())  # the original is untouched
