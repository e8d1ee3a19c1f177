"""GPU memory of each configuration, computed from the released SDXL configs (bench/sdxl-configs/).

    python bench/memory.py          prints the table docs/checkpoints.md holds

Every model is built on PyTorch's meta device (shapes only: no memory, no download) and its
parameters counted; bytes are fp16 (2 a parameter), what the worker loads on CUDA. The parts the
configs do not hold are built from what they are: an SDXL ControlNet is ControlNetModel.from_unet
of the base (diffusers/controlnet-canny-sdxl-1.0's shape); the IP-Adapter is its ViT-H image encoder
(h94's models/image_encoder) plus its per-layer key/value projections and image projection.
FUSED_QKV adds a fused copy of every q/k/v (self-attention) and k/v (cross-attention) weight and
keeps the unfused ones (LoRAs need them). Activations come on top: they depend on the job's size.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "sdxl-configs"
FP16 = 2
# h94/IP-Adapter models/image_encoder (OpenCLIP ViT-H/14 as a transformers CLIPVisionModelWithProjection).
VIT_H = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
         "image_size": 224, "patch_size": 14, "projection_dim": 1024}
IP_TOKENS = 4  # ip-adapter_sdxl's image projection: 4 tokens of the UNet's cross-attention width


def _config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def _count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def parameters() -> dict[str, int]:
    """Parameter counts of every model a worker may hold."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    counts = {}
    with torch.device("meta"):
        base = UNet2DConditionModel.from_config(_config("base_unet"))
        counts["base UNet"] = _count(base)
        counts["refiner UNet"] = _count(UNet2DConditionModel.from_config(_config("refiner_unet")))
        counts["text_encoder"] = _count(CLIPTextModel(CLIPTextConfig(**_config("text_encoder"))))
        counts["text_encoder_2"] = _count(CLIPTextModelWithProjection(CLIPTextConfig(**_config("text_encoder_2"))))
        counts["VAE"] = _count(AutoencoderKL.from_config(_config("vae")))
        counts["ControlNet"] = _count(ControlNetModel.from_unet(base))
        counts["IP-Adapter image encoder (ViT-H)"] = _count(CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H)))
        counts["IP-Adapter projections"] = _ip_projections(base)
        counts["fused q/k/v, base"] = _fused(base)
        counts["fused q/k/v, refiner"] = _fused(UNet2DConditionModel.from_config(_config("refiner_unet")))
    return counts


def _ip_projections(unet) -> int:
    """to_k_ip and to_v_ip of every cross-attention layer, and the image projection (embedding -> tokens)."""
    width = unet.config.cross_attention_dim
    per_layer = sum(2 * module.to_k.weight.shape[0] * width for name, module in unet.named_modules()
                    if name.endswith("attn2"))
    return per_layer + VIT_H["projection_dim"] * IP_TOKENS * width + IP_TOKENS * width + 2 * width


def _fused(unet) -> int:
    """The weights FUSED_QKV adds: to_qkv (self-attention) and to_kv (cross-attention) of each layer."""
    total = 0
    for name, module in unet.named_modules():
        if name.endswith("attn1"):
            total += sum(getattr(module, part).weight.numel() for part in ("to_q", "to_k", "to_v"))
        elif name.endswith("attn2"):
            total += sum(getattr(module, part).weight.numel() for part in ("to_k", "to_v"))
    return total


def configurations(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(configuration, bytes in fp16), each row adding to the one before where it says "+"."""
    shared = counts["text_encoder"] + counts["text_encoder_2"] + counts["VAE"]
    base = counts["base UNet"] + shared
    refiner = base + counts["refiner UNet"]  # text_encoder_2 and the VAE shared with the base
    ip = counts["IP-Adapter image encoder (ViT-H)"] + counts["IP-Adapter projections"]
    fused = counts["fused q/k/v, base"] + counts["fused q/k/v, refiner"]
    rows = [("base (UNet, both text encoders, VAE)", base),
            ("base + refiner (the default)", refiner),
            ("base + refiner + one ControlNet", refiner + counts["ControlNet"]),
            ("base + refiner + IP-Adapter (ViT-H)", refiner + ip),
            ("base + refiner + one ControlNet + IP-Adapter", refiner + counts["ControlNet"] + ip),
            ("base + refiner, FUSED_QKV on (the CUDA default)", refiner + fused),
            ("base + refiner + ControlNet + IP-Adapter, FUSED_QKV on", refiner + counts["ControlNet"] + ip + fused)]
    return [(label, size * FP16) for label, size in rows]


def markdown(counts: dict[str, int]) -> str:
    lines = ["| model | parameters | fp16 GB |", "| --- | --- | --- |"]
    lines += [f"| {name} | {count / 1e6:,.0f} M | {count * FP16 / 1e9:.2f} |" for name, count in counts.items()]
    lines += ["", "| configuration | weights, fp16 GB |", "| --- | --- |"]
    lines += [f"| {label} | {size / 1e9:.1f} |" for label, size in configurations(counts)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(parameters()))
    sys.exit(0)
