"""The work a job asks for, against the worker's budget, before anything runs.

Work is counted in units of one UNet call on one 1024x1024 image: the output's pixels (as a
fraction of 1024x1024) x images x model calls, both stages. Model calls are the denoising loop's
iterations as the schedulers will really run them (Heun and KDPM2 call the model twice per step,
PNDM runs one step more), doubled by classifier-free guidance, which runs every call on a batch
twice the size. Each ControlNet adds half a call to every base step: diffusers runs it beside
the UNet at every step (outside its start/end only its scale is zero), and an SDXL ControlNet is
the UNet's encoder half. A job whose ``model`` must be loaded first adds the switch's work
(sdxl_worker.engine.switch.SWITCH_WORK). A job over ``MAX_JOB_WORK`` units is refused at once,
with the sum shown.
"""

from __future__ import annotations

from sdxl_worker.errors import InputError

REFERENCE_PIXELS = 1024 * 1024
CONTROLNET_CALL = 0.5  # one SDXL ControlNet call, in UNet calls


def model_calls(steps: dict[str, int], guidance_scale: float, controlnets: int = 0) -> float:
    """UNet calls per image for the whole job, ControlNet calls counted at CONTROLNET_CALL each on
    the base's steps; guidance above 1 doubles each (diffusers' CFG rule)."""
    calls = sum(steps.values()) + steps.get("base", 0) * CONTROLNET_CALL * controlnets
    return calls * (2 if guidance_scale > 1 else 1)


def job_work(steps: dict[str, int], width: int, height: int, images: int, guidance_scale: float,
             controlnets: int = 0) -> float:
    return width * height / REFERENCE_PIXELS * images * model_calls(steps, guidance_scale, controlnets)


def check(plan, steps: dict[str, int], width: int, height: int, guidance_scale: float,
          limit: float, switch: float = 0) -> float:
    """The job's work (``switch``: the work of loading its model first) against ``limit``
    (MAX_JOB_WORK); InputError saying by how much it is over and which inputs to lower."""
    images, controlnets = len(plan.seeds), len(plan.controls)
    work = job_work(steps, width, height, images, guidance_scale, controlnets) + switch
    if work <= limit:
        return work
    stages = " + ".join(f"{count} {stage}" for stage, count in steps.items())
    guided = f", {controlnets} ControlNet(s) at {CONTROLNET_CALL:g} a base step each" if controlnets else ""
    lower = ["'num_images'"] if images > 1 else []
    if width * height > REFERENCE_PIXELS:
        lower.append("'width'/'height'")
    if plan.runs_base:
        lower.append("'num_inference_steps'")
    if plan.runs_refiner and plan.refine != "expert_ensemble_refiner":  # the ensemble shares the base's schedule
        lower.append("'refiner_inference_steps'")
    if controlnets:
        lower.append("the number of 'controlnets'")
    raise InputError(
        f"This job is {_units(work)} units of work, {work / limit:.1f}x the worker's budget of {_units(limit)} "
        f"(MAX_JOB_WORK; a unit is one model call on one 1024x1024 image: {images} image(s) of "
        f"{width}x{height}, {stages} steps{guided}{', x2 for guidance' if guidance_scale > 1 else ''}"
        f"{f', {_units(switch)} to load its model' if switch else ''}); lower {_either(lower)}."
    )


def _units(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
