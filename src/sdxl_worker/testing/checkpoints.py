"""A diffusers-layout SDXL pipeline written as one `.safetensors` file in the original layout.

Model sites ship SDXL checkpoints as single files with the original (Stability "ldm") key names:
``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE),
``conditioner.embedders.0.transformer.*`` (CLIP-L, Hugging Face layout) and
``conditioner.embedders.1.model.*`` (OpenCLIP bigG, its own layout: fused attention projections).
diffusers reads such files (``from_single_file``) but writes none, so tests build one here from
the tiny model, the inverse of diffusers' conversion. ``tests`` check the round trip against
diffusers' own converter and loader.
"""

from __future__ import annotations

from pathlib import Path

_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
_VAE_TOP = {"conv_norm_out": "norm_out"}
_OPEN_CLIP = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
              ("self_attn.out_proj", "attn.out_proj"))


def unet_to_original(state: dict, config: dict) -> dict:
    """A diffusers UNet2DConditionModel state dict in the original key layout (no prefix)."""
    per_block = config["layers_per_block"]
    out: dict = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] in ("down_blocks", "up_blocks"):
            block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
            if parts[0] == "down_blocks":
                first = 1 + block * (per_block + 1)
                if kind == "downsamplers":
                    name = f"input_blocks.{first + per_block}.0.op.{parts[-1]}"
                else:
                    name = f"input_blocks.{first + index}.{0 if kind == 'resnets' else 1}.{_resnet(rest, kind)}"
            else:
                first = block * (per_block + 1)
                if kind == "upsamplers":
                    has_attention = any(k.startswith(f"up_blocks.{block}.attentions.") for k in state)
                    name = f"output_blocks.{first + per_block}.{2 if has_attention else 1}.conv.{parts[-1]}"
                else:
                    name = f"output_blocks.{first + index}.{0 if kind == 'resnets' else 1}.{_resnet(rest, kind)}"
        elif parts[0] == "mid_block":
            kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            name = f"middle_block.{2 * index if kind == 'resnets' else 1}.{_resnet(rest, kind)}"
        else:
            module = ".".join(parts[:-1])
            name = f"{_UNET_TOP[module]}.{parts[-1]}"
        out[name] = tensor
    return out


def _resnet(rest: str, kind: str) -> str:
    if kind != "resnets":
        return rest
    for ours, theirs in _RESNET:
        if rest.startswith(ours + "."):
            return theirs + rest[len(ours):]
    return rest


def vae_to_original(state: dict, config: dict) -> dict:
    """A diffusers AutoencoderKL state dict in the original layout (no prefix); attention as 1x1 convs."""
    blocks = len(config["up_block_types"])
    out: dict = {}
    for key, tensor in state.items():
        parts = key.split(".")
        side = parts[0]
        if len(parts) > 1 and parts[1] in ("down_blocks", "up_blocks"):
            index, kind = int(parts[2]), parts[3]
            level = index if parts[1] == "down_blocks" else blocks - 1 - index
            where = "down" if parts[1] == "down_blocks" else "up"
            if kind in ("downsamplers", "upsamplers"):
                name = f"{side}.{where}.{level}.{where}sample.conv.{parts[-1]}"
            else:
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                name = f"{side}.{where}.{level}.block.{parts[4]}.{rest}"
        elif len(parts) > 1 and parts[1] == "mid_block":
            if parts[2] == "resnets":
                rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                name = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                rest = ".".join(parts[4:])
                for ours, theirs in _VAE_ATTENTION:
                    if rest.startswith(ours + "."):
                        rest = theirs + rest[len(ours):]
                name = f"{side}.mid.attn_1.{rest}"
                if tensor.dim() == 2:  # a linear layer in diffusers, a 1x1 convolution in the original
                    tensor = tensor[:, :, None, None]
        else:
            module = ".".join(parts[1:-1]) if len(parts) > 2 else ""
            name = f"{side}.{_VAE_TOP.get(module, module)}.{parts[-1]}" if module else key
        out[name] = tensor
    return out


def clip_to_original(state: dict) -> dict:
    """CLIP-L keeps Hugging Face's layout inside the original file, under ``text_model.``."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": tensor for key, tensor in state.items()}


def open_clip_to_original(state: dict) -> dict:
    """CLIPTextModelWithProjection (OpenCLIP bigG) in OpenCLIP's layout: q, k, v fused, projection transposed."""
    import torch

    state = {key.removeprefix("text_model."): tensor for key, tensor in state.items()}
    out: dict = {}
    for key, tensor in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.split(".")[-1]] = tensor
        elif key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key.startswith("encoder.layers."):
            layer, rest = key.split(".")[2], ".".join(key.split(".")[3:])
            if rest.startswith(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")):
                if rest.startswith("self_attn.q_proj"):
                    kind = rest.split(".")[-1]
                    fused = torch.cat([state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
                    out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = fused
                continue
            for ours, theirs in _OPEN_CLIP:
                if rest.startswith(ours + "."):
                    rest = theirs + rest[len(ours):]
            out[f"transformer.resblocks.{layer}.{rest}"] = tensor
        elif key != "embeddings.position_ids":
            raise KeyError(f"no original name for the OpenCLIP key {key!r}")
    return out


def write_single_file(folder: Path, path: Path) -> Path:
    """The diffusers-layout SDXL base or refiner in ``folder`` as one original-layout `.safetensors` at
    ``path``. A refiner has no CLIP-L: its OpenCLIP encoder is embedder 0."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    vae = AutoencoderKL.from_pretrained(folder / "vae")
    open_clip = CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")
    parts = [("model.diffusion_model.", unet_to_original(unet.state_dict(), unet.config)),
             ("first_stage_model.", vae_to_original(vae.state_dict(), vae.config))]
    if (folder / "text_encoder").is_dir():
        clip = CLIPTextModel.from_pretrained(folder / "text_encoder")
        parts += [("conditioner.embedders.0.transformer.", clip_to_original(clip.state_dict())),
                  ("conditioner.embedders.1.model.", open_clip_to_original(open_clip.state_dict()))]
    else:
        parts += [("conditioner.embedders.0.model.", open_clip_to_original(open_clip.state_dict()))]
    tensors = {prefix + key: tensor.contiguous() for prefix, part in parts for key, tensor in part.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path
