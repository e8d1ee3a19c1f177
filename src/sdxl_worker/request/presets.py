"""The fast presets: few-step methods as data, one table, ``PRESETS`` (no diffusers import).

A preset is a set of defaults for the request (scheduler, steps, guidance, refiner off) plus the
weights the method needs: a LoRA fused into a copy of the checkpoint's UNet, or a distilled UNet of
its own (sdxl_worker.engine.preset_weights loads them once and keeps them). The settings are the ones
each publisher documents on the page in ``reference``. The schema reads the table for its enum and
for what a preset refuses; the builder reads it for what to bake.
"""

from __future__ import annotations

from typing import NamedTuple


class Preset(NamedTuple):
    steps: int  # what the weights were distilled for: other counts are refused
    scheduler: str  # a name in sdxl_worker.request.samplers.SCHEDULERS
    guidance_scale: float  # the default; at most 1 means no classifier-free guidance (one UNet call a step)
    max_guidance: float  # above it the method's images break: refused
    repo: str  # the hub repository of the weights
    file: str | None  # the LoRA file in ``repo``; None: the repository's own UNet (unet/)
    reference: str  # the publisher's page, where these settings come from
    size: int | None = None  # a default side other than 1024, for a method trained at another size

    @property
    def what(self) -> str:
        return f"LoRA `{self.file}` from `{self.repo}`" if self.file else f"the UNet of `{self.repo}`"


PRESETS: dict[str, Preset] = {
    "lightning-4": Preset(4, "K_EULER_TRAILING", 0.0, 1.0, "ByteDance/SDXL-Lightning",
                          "sdxl_lightning_4step_lora.safetensors", "https://huggingface.co/ByteDance/SDXL-Lightning"),
    "lightning-8": Preset(8, "K_EULER_TRAILING", 0.0, 1.0, "ByteDance/SDXL-Lightning",
                          "sdxl_lightning_8step_lora.safetensors", "https://huggingface.co/ByteDance/SDXL-Lightning"),
    "hyper-8": Preset(8, "DDIM_TRAILING", 0.0, 1.5, "ByteDance/Hyper-SD", "Hyper-SDXL-8steps-lora.safetensors",
                      "https://huggingface.co/ByteDance/Hyper-SD"),
    "lcm-4": Preset(4, "LCM", 1.0, 2.0, "latent-consistency/lcm-lora-sdxl", "pytorch_lora_weights.safetensors",
                    "https://huggingface.co/latent-consistency/lcm-lora-sdxl"),
    "turbo-1": Preset(1, "K_EULER_ANCESTRAL_TRAILING", 0.0, 1.0, "stabilityai/sdxl-turbo", None,
                      "https://huggingface.co/stabilityai/sdxl-turbo", size=512),
}


def defaults(name: str | None, raw: dict) -> dict:
    """The request defaults preset ``name`` sets, for a job input ``raw`` (its own values win)."""
    preset = PRESETS.get(name or "")
    if preset is None:
        return {}
    values = {"scheduler": preset.scheduler, "num_inference_steps": preset.steps,
              "guidance_scale": preset.guidance_scale, "refine": "no_refiner"}
    if preset.size and raw.get("image") is None:  # an input image sets the size itself
        values.update(width=preset.size, height=preset.size)
    return values


def problems(name: str | None, raw: dict) -> list[str]:
    """What in ``raw`` would break preset ``name``, one sentence each."""
    preset = PRESETS.get(name or "")
    if preset is None:
        return []
    found, label = [], f"'preset' '{name}'"
    if raw.get("scheduler") not in (None, preset.scheduler):
        found.append(f"'scheduler' cannot be changed with {label}, which needs {preset.scheduler}; leave 'scheduler' out.")
    if raw.get("num_inference_steps") not in (None, preset.steps):
        found.append(f"'num_inference_steps' must be {preset.steps} with {label} (its weights are made for that "
                     f"many steps); leave it out, or pick another preset.")
    guidance = raw.get("guidance_scale")
    if isinstance(guidance, (int, float)) and guidance > preset.max_guidance:
        found.append(f"'guidance_scale' must be at most {preset.max_guidance:g} with {label}; leave it out for "
                     f"{preset.guidance_scale:g}.")
    if raw.get("refine") == "expert_ensemble_refiner":
        found.append(f"'refine' cannot be 'expert_ensemble_refiner' with {label}, which runs its whole schedule "
                     f"on the base; use 'base_image_refiner' or leave 'refine' out.")
    if raw.get("image_url") is not None or raw.get("task") == "refine":
        found.append(f"{label} speeds up the base, and a refiner-only job ('image_url') runs no base; leave "
                     f"'preset' out.")
    return found


def markdown_table() -> str:
    """docs/checkpoints.md's "Fast presets" table, generated from PRESETS."""
    rows = ["| preset | what it loads | scheduler and settings | steps | guidance | publisher's reference |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name, preset in PRESETS.items():
        size = f"; {preset.size}x{preset.size} by default" if preset.size else ""
        rows.append(f"| `{name}` | {preset.what} | `{preset.scheduler}` (see the scheduler table){size}, refiner off "
                    f"| {preset.steps} | {preset.guidance_scale:g} (at most {preset.max_guidance:g}) | {preset.reference} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
