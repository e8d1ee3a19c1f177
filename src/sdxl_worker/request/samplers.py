"""The schedulers users can name: one table, ``SCHEDULERS``, as data (no diffusers import).

The schema's enum, the README's scheduler table and the engine all read it. Names come from
worker-sdxl and cog-sdxl, Stability's API (its ``sampler`` values are aliases here) and the
common Karras variants; each names a diffusers scheduler class and the overrides on top of the
model's own scheduler config. sdxl_worker.engine.schedulers builds them.
"""

from __future__ import annotations

from typing import NamedTuple


class Sampler(NamedTuple):
    cls: str  # the diffusers scheduler class, by name
    tweaks: dict  # overrides on top of the model's own scheduler config
    note: str = ""


KARRAS = {"use_karras_sigmas": True}
TRAILING = {"timestep_spacing": "trailing"}

SCHEDULERS: dict[str, Sampler] = {
    # worker-sdxl's and cog-sdxl's names
    "DDIM": Sampler("DDIMScheduler", {}),
    "PNDM": Sampler("PNDMScheduler", {"skip_prk_steps": True}, "as SDXL ships it; PRK steps break on few steps"),
    "KLMS": Sampler("LMSDiscreteScheduler", {}),
    "K_EULER": Sampler("EulerDiscreteScheduler", {}, "SDXL's own default"),
    "K_EULER_ANCESTRAL": Sampler("EulerAncestralDiscreteScheduler", {}),
    "DPMSolverMultistep": Sampler("DPMSolverMultistepScheduler", {}, "DPM++ 2M"),
    "DPMSolverSinglestep": Sampler("DPMSolverSinglestepScheduler", {}, "DPM++ 2S"),
    "HeunDiscrete": Sampler("HeunDiscreteScheduler", {}, "two model calls per step"),
    "KarrasDPM": Sampler("DPMSolverMultistepScheduler", KARRAS, "cog-sdxl's name for DPM++ 2M Karras"),
    "UniPC": Sampler("UniPCMultistepScheduler", {}),
    # Karras variants
    "K_EULER_KARRAS": Sampler("EulerDiscreteScheduler", KARRAS),
    "KLMS_KARRAS": Sampler("LMSDiscreteScheduler", KARRAS),
    "HeunDiscreteKarras": Sampler("HeunDiscreteScheduler", KARRAS),
    "DPMSolverMultistepKarras": Sampler("DPMSolverMultistepScheduler", KARRAS, "same as KarrasDPM"),
    "DPMSolverSinglestepKarras": Sampler("DPMSolverSinglestepScheduler", KARRAS),
    "DPMSolverSDE_Karras": Sampler(
        "DPMSolverMultistepScheduler", {**KARRAS, "algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE Karras"
    ),
    "UniPC_Karras": Sampler("UniPCMultistepScheduler", KARRAS),
    # What the few-step methods need (sdxl_worker.request.presets): "trailing" puts the first step at
    # the very start of the schedule, where distilled models expect it.
    "K_EULER_TRAILING": Sampler("EulerDiscreteScheduler", TRAILING, "SDXL-Lightning"),
    "K_EULER_ANCESTRAL_TRAILING": Sampler("EulerAncestralDiscreteScheduler", TRAILING, "SDXL-Turbo"),
    "DDIM_TRAILING": Sampler("DDIMScheduler", TRAILING, "Hyper-SD"),
    "LCM": Sampler("LCMScheduler", {}, "LCM-LoRA"),
    # Stability's sampler names (REST v1 / Bedrock), as aliases
    "DDPM": Sampler("DDPMScheduler", {}),
    "K_LMS": Sampler("LMSDiscreteScheduler", {}, "alias of KLMS"),
    "K_HEUN": Sampler("HeunDiscreteScheduler", {}, "alias of HeunDiscrete"),
    "K_DPM_2": Sampler("KDPM2DiscreteScheduler", {}),
    "K_DPM_2_ANCESTRAL": Sampler("KDPM2AncestralDiscreteScheduler", {}),
    "K_DPMPP_2M": Sampler("DPMSolverMultistepScheduler", {}, "alias of DPMSolverMultistep"),
    "K_DPMPP_2S_ANCESTRAL": Sampler(
        "DPMSolverSinglestepScheduler", {}, "closest in diffusers, which has no ancestral DPM++ 2S"
    ),
}


def markdown_table() -> str:
    """The README's scheduler table, generated from SCHEDULERS."""
    rows = ["| name | diffusers class | config tweaks | note |", "| --- | --- | --- | --- |"]
    for name, sampler in SCHEDULERS.items():
        tweaks = ", ".join(f"`{key}={value!r}`" for key, value in sampler.tweaks.items()) or "-"
        rows.append(f"| `{name}` | `{sampler.cls}` | {tweaks} | {sampler.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
