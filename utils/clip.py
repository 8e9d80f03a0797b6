"""Contrastive language-image pretraining (CLIP, Radford et al., 2021) at laptop scale: captions for the digits
images, a two-tower transformers `CLIPModel` with a small config, the symmetric InfoNCE loss, zero-shot
classification from text prompts, and a second image distribution (printed digits) for zero-shot transfer.

Defined for notebook 01 (book chapter 1 and the lecture's "four ways to adapt CLIP"). Needs torch, tokenizers,
transformers, and Pillow with matplotlib's bundled fonts for `printed_digits`; `fine_tune` trains with the loop
of its one course dependency, `utils.pretraining`.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
from transformers.modeling_outputs import ImageClassifierOutput

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: Caption templates; `{word}` becomes "seven", `{digit}` becomes "7". Several phrasings per class make the
#: text tower learn what the captions share (the class) rather than one fixed string.
CAPTION_TEMPLATES = (
    "a handwritten {word}",
    "the digit {digit}",
    "a picture of the number {word}",
    "an image of a handwritten {digit}",
    "the number {word} written by hand",
    "a scanned {digit}",
    "a small blurry {word}",
    "a {word} drawn with a pen",
)

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"


def digit_caption(label: int, rng: random.Random) -> str:
    """A caption for an image of digit `label` (0-9), drawn from CAPTION_TEMPLATES with `rng`."""
    if not 0 <= label <= 9:
        raise ValueError(f"digit label must be 0-9, got {label}")
    return rng.choice(CAPTION_TEMPLATES).format(word=DIGIT_WORDS[label], digit=label)


def caption_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word the caption templates can produce, wrapping each caption as
    [BOS] words [EOS]. (Real CLIP uses a 49,152-entry BPE vocabulary; captions here have a few dozen words.)"""
    words = {PAD: 0, UNK: 1, BOS: 2, EOS: 3}
    for template in CAPTION_TEMPLATES:
        for label in range(10):
            for word in template.format(word=DIGIT_WORDS[label], digit=label).split():
                words.setdefault(word, len(words))
    tokenizer = Tokenizer(models.WordLevel(vocab=words, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, words[BOS]), (EOS, words[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )


def small_clip(
    tokenizer: PreTrainedTokenizerFast, width: int = 64, layers: int = 2, heads: int = 4, projection: int = 32
) -> CLIPModel:
    """A CLIP with a ViT image tower over 8x8 one-channel images (2x2 patches: 16 patches) and a text transformer.

    CLIP ViT-B/32: 224x224 RGB images in 32x32 patches, width 768 (image) and 512 (text), 12 layers each,
    projection 512 (Radford et al., 2021, table 20).
    """
    tower = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    }
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**tower, "image_size": 8, "patch_size": 2, "num_channels": 1},
        projection_dim=projection,
    )
    return CLIPModel(config)


def digits_to_pixels(images: np.ndarray) -> torch.Tensor:
    """scikit-learn digits (N, 8, 8) with values 0-16 -> float tensor (N, 1, 8, 8) scaled to [-1, 1]."""
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0


#: Typefaces that ship with matplotlib (so with every install of the course): four families in their regular, bold
#: and slanted cuts, and Computer Modern. Each draws the ten digits differently from a hand (a serif 1, a closed 4,
#: a straight 7), which is what makes printed digits a new distribution for a model that saw only handwriting.
PRINTED_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmti10.ttf",
    "cmtt10.ttf",
)


def printed_digit(label: int, font: str, rng: np.random.Generator) -> np.ndarray:
    """One printed digit as an 8x8 array of counts 0-16, made the way the UCI handwritten digits were made.

    The UCI set (Alpaydin and Kaynak, 1998) scanned handwriting into 32x32 bitmaps and counted the inked pixels
    in each 4x4 block. Here the digit is drawn in `font` (a file in matplotlib's font folder), rotated by up to
    10 degrees, thickened by 0-2 pixels, scaled so its longer side is 27-32 pixels, centred on 32x32, binarised
    and block-counted the same way, so only the source of the shapes differs.
    """
    if not 0 <= label <= 9:
        raise ValueError(f"digit label must be 0-9, got {label}")
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    glyph = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(glyph).text((30, 10), str(label), fill=255, font=ImageFont.truetype(str(folder / font), 96))
    glyph = glyph.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR)
    glyph = glyph.crop(glyph.getbbox())
    scale = 32 / max(glyph.size) * float(rng.uniform(0.85, 1.0))
    glyph = glyph.resize((max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))))
    thickness = int(rng.choice([1, 3, 5]))
    if thickness > 1:
        glyph = glyph.filter(ImageFilter.MaxFilter(thickness))
    canvas = Image.new("L", (32, 32), 0)
    canvas.paste(glyph, ((32 - glyph.size[0]) // 2, (32 - glyph.size[1]) // 2))
    bits = np.asarray(canvas) > 127
    return bits.reshape(8, 4, 8, 4).sum(axis=(1, 3)).astype(np.float64)


def printed_digits(
    per_class: int, seed: int = 0, fonts: tuple[str, ...] = PRINTED_FONTS
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` printed images of each digit, fonts drawn at random from `fonts`: (images (N, 8, 8), labels (N,)).

    Same format as scikit-learn's `load_digits().images` (values 0-16), so `digits_to_pixels` applies unchanged.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    images = np.stack([printed_digit(int(label), fonts[rng.integers(len(fonts))], rng) for label in labels])
    return images, labels


def contrastive_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: the i-th image must pick the i-th text among the batch's texts, and vice versa.

    Both embeddings are L2-normalised; logits are cosine similarities times the learned temperature
    `logit_scale` (already exponentiated). The loss is the mean of the image->text and text->image
    cross-entropies with the diagonal as targets (Radford et al., 2021, figure 3).
    """
    image_embeds = F.normalize(image_embeds, dim=-1)
    text_embeds = F.normalize(text_embeds, dim=-1)
    logits = logit_scale * image_embeds @ text_embeds.T
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def clip_batch(
    tokenizer: PreTrainedTokenizerFast,
    pixels: torch.Tensor,
    labels: np.ndarray,
    indices: list[int],
    rng: random.Random,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor | bool]:
    """Model inputs on `device` for images `indices`, each paired with a freshly drawn caption of its label."""
    captions = [digit_caption(int(labels[i]), rng) for i in indices]
    text = tokenizer(captions, padding=True, return_tensors="pt").to(device)
    return {"pixel_values": pixels[indices].to(device), **text, "return_loss": True}


@torch.no_grad()
def image_features(model: CLIPModel, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """L2-normalised image embeddings (N, projection) from the frozen image tower (after CLIP's projection)."""
    model.eval()
    feats = [model.get_image_features(pixel_values=chunk).pooler_output for chunk in pixels.split(batch)]
    return F.normalize(torch.cat(feats), dim=-1)


@torch.no_grad()
def zero_shot_classifier(
    model: CLIPModel, tokenizer: PreTrainedTokenizerFast, templates: tuple[str, ...] = CAPTION_TEMPLATES
) -> torch.Tensor:
    """One normalised text embedding per class (10, projection): each class's prompts from `templates`,
    embedded and averaged ("prompt ensembling", Radford et al., 2021, section 3.1.4)."""
    model.eval()
    weights = []
    for label in range(10):
        prompts = [t.format(word=DIGIT_WORDS[label], digit=label) for t in templates]
        out = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt")).pooler_output
        emb = F.normalize(out, dim=-1)
        weights.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(weights)


def zero_shot_accuracy(features: torch.Tensor, class_text: torch.Tensor, labels: np.ndarray) -> float:
    """Share of images (rows of normalised `features`) whose most similar class text embedding (rows of
    `class_text`, as from `zero_shot_classifier`) is their label."""
    predictions = (features.cpu() @ class_text.cpu().T).argmax(1).numpy()
    return float((predictions == np.asarray(labels)).mean())


class FineTunedClassifier(nn.Module):
    """CLIP's image tower and projection with a linear head over the 10 classes, every weight trainable."""

    def __init__(self, clip: CLIPModel, num_classes: int = 10) -> None:
        super().__init__()
        self.vision, self.projection = clip.vision_model, clip.visual_projection
        self.head = nn.Linear(clip.config.projection_dim, num_classes)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> ImageClassifierOutput:
        logits = self.head(self.projection(self.vision(pixel_values=pixel_values).pooler_output))
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def fine_tune(
    clip: CLIPModel,
    pixels: torch.Tensor,
    labels: np.ndarray,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    steps: int,
    lr: float = 1e-3,
    batch: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[FineTunedClassifier, float]:
    """Full fine-tuning: a copy of `clip`'s image tower with a linear head, every weight trained on the labelled
    images `train_idx` (random batches of up to `batch`, drawn with `seed`) by `utils.pretraining.train`.

    Returns the classifier and its accuracy on `test_idx`. The original `clip` is left untouched.
    """
    from utils.pretraining import train

    classifier = FineTunedClassifier(copy.deepcopy(clip)).to(device)
    targets, rng, pool = torch.as_tensor(labels), random.Random(seed), [int(i) for i in train_idx]

    def labelled_batch(step: int) -> dict[str, torch.Tensor]:
        chosen = rng.sample(pool, min(batch, len(pool)))
        return {"pixel_values": pixels[chosen].to(device), "labels": targets[chosen].to(device)}

    @torch.no_grad()
    def accuracy() -> float:
        classifier.eval()
        predictions = classifier(pixels[test_idx].to(device)).logits.argmax(1).cpu()
        return (predictions == targets[test_idx]).float().mean().item()

    history = train(classifier, labelled_batch, steps, lr, accuracy, eval_every=steps)
    return classifier, history[-1]["val_loss"]  # the evaluate() hook returned accuracy
