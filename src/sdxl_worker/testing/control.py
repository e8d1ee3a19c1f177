"""Tiny ControlNets and a tiny IP-Adapter for the tiny model, built in code, saved as the real ones are.

A ControlNet is ``ControlNetModel.from_unet`` of the tiny base UNet, its zero-initialised output
convolutions (which would make a fresh ControlNet change nothing) given random weights; saved
with ``save_pretrained``, loaded back with ``from_pretrained``. The IP-Adapter is a random image
projection and per-layer key/value projections in the key layout diffusers' ``load_ip_adapter``
reads (``image_proj.*``, ``ip_adapter.<n>.to_k_ip/to_v_ip``), with a small random CLIP vision
encoder in ``image_encoder`` beside it, as h94/IP-Adapter lays out ``sdxl_models``.
"""

from __future__ import annotations

from pathlib import Path

from sdxl_worker.config import DEFAULT_IP_ADAPTER_WEIGHT

IMAGE_EMBEDDING = 24  # the tiny image encoder's projection width


def write_tiny_controlnet(folder: Path, seed: int) -> Path:
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from sdxl_worker.engine.tiny import ensure_tiny_model

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    controlnet.save_pretrained(folder)
    return Path(folder)


def write_tiny_ip_adapter(folder: Path, seed: int = 3, encoder_width: int = IMAGE_EMBEDDING) -> Path:
    """The tiny IP-Adapter under ``folder`` at IP_ADAPTER_WEIGHT's default path; returns ``folder``.
    ``encoder_width`` other than IMAGE_EMBEDDING: an image encoder the adapter was not made for."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sdxl_worker.engine.tiny import ensure_tiny_model

    unet = UNet2DConditionModel.from_pretrained(ensure_tiny_model() / "base" / "unet")
    width, channels = unet.config.cross_attention_dim, unet.config.block_out_channels
    generator = torch.Generator().manual_seed(seed)

    def random(*shape):
        return torch.randn(shape, generator=generator) * 0.1

    state = {"image_proj.proj.weight": random(4 * width, IMAGE_EMBEDDING), "image_proj.proj.bias": random(4 * width),
             "image_proj.norm.weight": torch.ones(width), "image_proj.norm.bias": torch.zeros(width)}
    number = 1  # diffusers numbers the cross-attention layers 1, 3, 5, ... in the UNet's order
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(channels))[int(name[len("up_blocks.")])]
        else:
            hidden = channels[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{number}.to_k_ip.weight"] = random(hidden, width)
        state[f"ip_adapter.{number}.to_v_ip.weight"] = random(hidden, width)
        number += 2
    weight = Path(folder) / DEFAULT_IP_ADAPTER_WEIGHT
    weight.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(weight))
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=encoder_width))
    encoder.save_pretrained(weight.parent / "image_encoder")
    return Path(folder)
