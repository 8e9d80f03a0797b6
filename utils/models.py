"""Small, randomly initialised transformers of the three families: decoder (GPT-2), encoder (BERT) and
encoder-decoder (T5), plus a vision transformer (ViT), built from transformers config classes so the same code
scales to the real sizes.

Defined for notebook 01 (book chapter 1's table of encoders, decoders and encoder-decoders); chapters 2, 5 and 9
train the GPT, and the training program (chapter 5) the ViT. Defaults are laptop-sized; each docstring gives the
real model's values. Needs transformers.
"""

from __future__ import annotations

from transformers import (
    BertConfig,
    BertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)


def count_parameters(model: PreTrainedModel, trainable_only: bool = False) -> int:
    """Number of parameters, each shared (tied) tensor counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def small_gpt(
    vocab_size: int,
    context: int = 128,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
    eos_token_id: int = 0,
    dropout: float = 0.0,
    activation: str = "gelu_new",
) -> GPT2LMHeadModel:
    """A GPT-2-style decoder for causal language modelling (predict token t+1 from tokens <= t).

    GPT-2 small: vocab 50,257, context 1,024, 12 layers, width 768, 12 heads (Radford et al., 2019). `activation`:
    GPT-2's `gelu_new` (tanh approximation as a chain of elementwise operations) or `gelu_pytorch_tanh`, the same
    function as one fused kernel (faster; notebook 09 measures both; the training program uses it).
    """
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=context,
        n_layer=layers,
        n_embd=width,
        n_head=heads,
        activation_function=activation,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,  # no pad token, as in GPT-2: packed windows are never padded
    )
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # the class name predates transformers' loss registry; same loss, no warning
    return model


def small_vit(
    image_size: int = 8,
    patch_size: int = 2,
    channels: int = 1,
    classes: int = 10,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
) -> ViTForImageClassification:
    """A ViT image classifier: the image cut into patch_size x patch_size patches, each patch a token.

    ViT-Base/16: 224 x 224 images, 16 x 16 patches (196 tokens), 12 layers, width 768, 12 heads, FFN 3,072
    (Dosovitskiy et al., 2021). The defaults fit the 8 x 8 digits: 16 patches of 2 x 2.
    """
    config = ViTConfig(
        image_size=image_size,
        patch_size=patch_size,
        num_channels=channels,
        num_labels=classes,
        num_hidden_layers=layers,
        hidden_size=width,
        num_attention_heads=heads,
        intermediate_size=4 * width,
    )
    return ViTForImageClassification(config)


def small_bert(
    vocab_size: int,
    context: int = 128,
    layers: int = 4,
    width: int = 128,
    heads: int = 4,
    pad_token_id: int = 0,
    dropout: float = 0.1,
) -> BertForMaskedLM:
    """A BERT-style encoder for masked language modelling (predict hidden tokens from both sides).

    BERT base: vocab 30,522, context 512, 12 layers, width 768, 12 heads, FFN 3,072, dropout 0.1 on hidden states
    and attention weights (Devlin et al., 2019); pass `dropout=0.0` to compare it with `small_gpt`'s default.
    """
    config = BertConfig(
        vocab_size=vocab_size,
        max_position_embeddings=context,
        num_hidden_layers=layers,
        hidden_size=width,
        num_attention_heads=heads,
        intermediate_size=4 * width,
        pad_token_id=pad_token_id,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForMaskedLM(config)


def small_t5(
    vocab_size: int, layers: int = 4, width: int = 128, heads: int = 4, pad_token_id: int = 0, eos_token_id: int = 1
) -> T5ForConditionalGeneration:
    """A T5-style encoder-decoder (read the input with an encoder, write the output with a decoder).

    T5 base: vocab 32,128, 12 + 12 layers, width 768, 12 heads, FFN 3,072 (Raffel et al., 2020). T5 uses relative
    position buckets, so it has no fixed context length.
    """
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=width // heads,
        d_ff=4 * width,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=heads,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=pad_token_id,
    )
    return T5ForConditionalGeneration(config)
