"""LoRAs for the built-in tiny model, made in code with peft: non-zero, in diffusers' file format."""

import tempfile
from pathlib import Path


def tiny_lora(part: str, targets: list[str], seed: int, text_encoders: bool = False) -> bytes:
    """A LoRA in diffusers' format for the tiny model's ``part`` UNet (and text encoders), non-zero."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.inputs import lora_files

    folder = ensure_tiny_model() / part
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    torch.manual_seed(seed)
    # init_lora_weights=False: both halves random, so the LoRA changes the output from the start.
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    layers = {"unet_lora_layers": convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))}
    if text_encoders:
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
            encoder = get_peft_model(cls.from_pretrained(folder / name), config)
            layers[f"{name}_lora_layers"] = convert_state_dict_to_diffusers(
                get_peft_model_state_dict(encoder.base_model.model))
    with tempfile.TemporaryDirectory() as out:
        StableDiffusionXLPipeline.save_lora_weights(out, **layers, safe_serialization=True)
        return (Path(out) / lora_files.DEFAULT_WEIGHT_NAME).read_bytes()


ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_MLP = ("mlp.fc1", "mlp.fc2")


def kohya_lora(seed: int, full: bool = False, alphas: bool = True, rank: int = 4) -> bytes:
    """A LoRA for the tiny base in kohya/sd-scripts naming, as model sites serve them: UNet layers
    by their original (sgm) names, ``lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q``,
    both text encoders as ``lora_te1_...`` and ``lora_te2_...``, ``lora_down``/``lora_up`` halves
    and, with ``alphas``, an ``.alpha`` per layer. Attention layers only, or with ``full`` also the
    feed-forward, projection and text-encoder MLP layers. Built against the tiny model's own
    modules, so the names and shapes are the real SDXL scheme at the tiny model's sizes."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.testing.checkpoints import unet_to_original

    folder = ensure_tiny_model() / "base"
    generator = torch.Generator().manual_seed(seed)
    state: dict = {}

    def add(name: str, layer) -> None:
        state[f"{name}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) * 0.2
        state[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) * 0.2
        if alphas:
            state[f"{name}.alpha"] = torch.tensor(float(rank) / 2)

    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    unet_targets = ATTENTION + (FEED_FORWARD if full else ())
    for name, layer in unet.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(unet_targets) and \
                ("transformer_blocks" in name or name.endswith(("proj_in", "proj_out"))):
            [original] = unet_to_original({f"{name}.weight": None}, unet.config)
            add("lora_unet_" + original[: -len(".weight")].replace(".", "_"), layer)
    for prefix, folder_name, cls in (("lora_te1_", "text_encoder", CLIPTextModel),
                                     ("lora_te2_", "text_encoder_2", CLIPTextModelWithProjection)):
        encoder = cls.from_pretrained(folder / folder_name)
        targets = TEXT_ATTENTION + (TEXT_MLP if full else ())
        for name, layer in encoder.named_modules():
            if isinstance(layer, torch.nn.Linear) and ".layers." in name and name.endswith(targets):
                # sd-scripts names the layers as transformers 4 did: text_model.encoder.layers...
                name = name if name.startswith("text_model.") else f"text_model.{name}"
                add(prefix + name.replace(".", "_"), layer)
    return save(state)
