"""Tiny weights for every fast preset, laid out as the builder bakes them in the Hugging Face cache.

The LoRA presets get a tiny LoRA (sdxl_worker.testing.tiny_loras) under the publisher's file name; the
UNet preset gets the tiny base UNet with its weights nudged, saved in diffusers layout. Tests
point HF_HUB_CACHE at the folder and the worker finds them the way it finds baked weights.
"""

from __future__ import annotations

from pathlib import Path

from sdxl_worker.request.presets import PRESETS

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]


def write_tiny_presets(hub_cache: Path, names=None) -> Path:
    """Weights for ``names`` (default: every preset) under ``hub_cache``; returns ``hub_cache``."""
    import torch

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.testing.tiny_loras import tiny_lora

    for seed, name in enumerate(names or PRESETS, start=11):
        preset = PRESETS[name]
        repo = Path(hub_cache) / ("models--" + preset.repo.replace("/", "--"))
        snapshot = repo / "snapshots" / "tiny"
        snapshot.mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text("tiny")
        if preset.file:
            (snapshot / preset.file).write_bytes(tiny_lora("base", ATTENTION, seed))
            continue
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for parameter in unet.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
        unet.save_pretrained(snapshot / "unet")
    return Path(hub_cache)
