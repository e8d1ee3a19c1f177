"""LoRAs for the built-in tiny model, made in code with peft: non-zero, in diffusers' file format."""

import tempfile
from pathlib import Path


def tiny_lora(part: str, targets: list[str], seed: int, text_encoders: bool = False) -> bytes:
    """A LoRA in diffusers' format for the tiny model's ``part`` UNet (and text encoders), non-zero."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model
    import torch
    from peft.utils import get_peft_model_state_dict

    from sdxl_worker.inputs import loras
    from sdxl_worker.engine.tiny import ensure_tiny_model

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
        return (Path(out) / loras.DEFAULT_WEIGHT_NAME).read_bytes()
