"""Schedulers by the names users send, each built fresh per job from the model's own config.

Building a new scheduler for every job (never mutating the loaded one) is what keeps one
job's sampler from leaking into the next.
"""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)

# name -> (diffusers class, config overrides)
SCHEDULERS: dict[str, tuple[type, dict]] = {
    "DDIM": (DDIMScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),  # as SDXL ships it; PRK breaks on few steps
    "KLMS": (LMSDiscreteScheduler, {}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {}),
    "DPMSolverSinglestep": (DPMSolverSinglestepScheduler, {}),
}


def build_scheduler(name: str, model_config: dict):
    """A new scheduler of the named kind, configured from the model's pristine scheduler config."""
    cls, overrides = SCHEDULERS[name]
    return cls.from_config({**model_config, **overrides})
