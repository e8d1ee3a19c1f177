"""The built-in tiny SDXL: random weights in SDXL's exact shape, for tests, CI and demos.

It is built in code (no download), saved once with ``save_pretrained`` and then loaded
through the same ``from_pretrained`` path as real weights, so every test exercises the
real loading code. It draws noise, quickly: attention only runs at low resolution.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

# Bump when the architecture below changes, so stale caches are rebuilt.
TINY_VERSION = "3"
SEED = 20240723

# Two widths, as in SDXL (768 and 1280): diffusers' single-file loader tells the encoders apart by them.
TEXT_WIDTH = 32  # hidden size of text_encoder (CLIP ViT-L in SDXL)
TEXT_WIDTH_2 = 48  # hidden size of text_encoder_2 (OpenCLIP ViT-bigG in SDXL)
POOLED_WIDTH = 48  # projection size of text_encoder_2 (pooled prompt embedding)
TIME_EMBED = 8  # SDXL's addition_time_embed_dim, shrunk


def cache_dir(root: Path | None = None) -> Path:
    """Where the tiny model is saved under ``root`` (TINY_MODEL_DIR), by default ~/.cache/sdxl-worker."""
    return Path(root or Path.home() / ".cache" / "sdxl-worker") / f"tiny-sdxl-v{TINY_VERSION}"


def ensure_tiny_model(root: Path | None = None) -> Path:
    """Build and save the tiny base and refiner once under ``root``; return the folder holding both."""
    target = cache_dir(root)
    if (target / "refiner" / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=target.parent))
    try:
        _build(staging)
        try:
            staging.rename(target)  # atomic: a concurrent builder either wins or finds it done
        except OSError:
            if not (target / "refiner" / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _byte_vocabulary() -> dict[str, int]:
    """A character-level CLIP BPE vocabulary: every byte, alone and word-final."""
    from tokenizers.pre_tokenizers import ByteLevel

    chars = sorted(ByteLevel.alphabet())
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}


def tokenizer():
    from transformers import CLIPTokenizer

    # No merges: every word is spelled out character by character. Plenty for noise.
    return CLIPTokenizer(vocab=_byte_vocabulary(), merges=[], model_max_length=77)


def _text_config(vocab: dict[str, int], width: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=POOLED_WIDTH,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _unet(cross_attention_dim: int, time_ids: int):
    """A text_time UNet: two attention-free levels at high resolution, attention at 1/4."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4, 8),
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=POOLED_WIDTH + time_ids * TIME_EMBED,
    )


def _vae():
    """SDXL's 8x downsampling (four levels), no attention at latent resolution."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=1024,
        scaling_factor=0.13025,
        mid_block_add_attention=False,
        force_upcast=False,
    )


# SDXL base 1.0's scheduler_config.json, every setting: the samplers built from it (DDIM, DDPM,
# LCM, PNDM...) read clip_sample, set_alpha_to_one and skip_prk_steps from here, as in production.
SDXL_SCHEDULER = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "trained_betas": None,
    "use_karras_sigmas": False,
}


def scheduler():
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(SDXL_SCHEDULER)


def _build(folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab = _byte_vocabulary()
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(vocab, TEXT_WIDTH))
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(vocab, TEXT_WIDTH_2))
    tokenizer_1, tokenizer_2 = tokenizer(), tokenizer()
    vae = _vae()
    # Base: both encoders' hidden states concatenated; time ids = size, crop, target size.
    base_unet = _unet(cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2, time_ids=6)
    # Refiner: text_encoder_2 only; time ids = size, crop, aesthetic score.
    refiner_unet = _unet(cross_attention_dim=TEXT_WIDTH_2, time_ids=5)

    StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer_1,
        tokenizer_2=tokenizer_2,
        unet=base_unet,
        scheduler=scheduler(),
        add_watermarker=False,
    ).save_pretrained(folder / "base")
    StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        unet=refiner_unet,
        scheduler=scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
        add_watermarker=False,
    ).save_pretrained(folder / "refiner")
