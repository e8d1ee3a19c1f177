"""ControlNets: loaded once at start-up (CONTROLNET_MODELS), shared by every job and checkpoint.

A job with ``controlnets`` runs its base stage on diffusers' SDXL ControlNet pipeline of its task
(txt2img, img2img, inpaint), made for the job from the base's components and the named
ControlNets (one, or several as diffusers' MultiControlNetModel): no weights are copied, and the
next job runs the plain pipelines again. The refiner stage runs without control.

A CONTROLNET_MODELS entry whose config has control modes (``num_control_type``: xinsir's union
ControlNet) loads as diffusers' ControlNetUnionModel: a job's items naming it each bring an image and a ``mode``, and they run on
diffusers' union pipeline of the task as one model with lists of images and modes.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def load_controlnets(settings, loader, resolve) -> dict:
    """Name -> ControlNetModel for CONTROLNET_MODELS, each on the device in the models' dtype
    (``resolve``: sdxl_worker.engine.models' name-to-folder rule, passed in so imports go one way)."""
    if not settings.controlnets:
        return {}
    from diffusers import ControlNetModel, ControlNetUnionModel

    loaded = {}
    for name, source in settings.controlnets:
        where = resolve(source, "")
        loaded[name] = loader.component(f"controlnet {name}", ControlNetUnionModel if _is_union(where) else ControlNetModel,
                                        where, "CONTROLNET_MODELS").eval().requires_grad_(False)
    return loaded


def _is_union(where: str) -> bool:
    """A union model's config has its control modes (``num_control_type``), whatever class it names:
    xinsir's repository predates diffusers' ControlNetUnionModel. A config that cannot be read is
    left to the loader, whose error names CONTROLNET_MODELS and the fix."""
    from diffusers import ControlNetModel

    try:
        return "num_control_type" in ControlNetModel.load_config(where)
    except (OSError, ValueError):
        return False


def union_modes(controlnets: dict) -> dict[str, int]:
    """The union ControlNets among ``controlnets`` (loaded as ControlNetUnionModel, the one rule):
    name -> how many control modes the model has (6 in the first release, 8 in promax)."""
    return {name: model.config.num_control_type for name, model in controlnets.items()
            if type(model).__name__ == "ControlNetUnionModel"}


def speed_up_controlnets(controlnets: list, speedups) -> None:
    """The UNets' speed-ups a ControlNet takes (it is called with the same timestep as the UNet):
    the memory format and timesteps from the host. Attention processors, fused QKV and compiling
    stay the UNet's."""
    from dataclasses import replace

    from sdxl_worker.engine.speed import speed_up

    speed_up(controlnets, [], replace(speedups, fused_qkv=False, compile=False, attention="sdpa"))


def pipeline_for(models, task: str, pipe, names: list[str]):
    """The ControlNet pipeline of ``task`` on ``pipe``'s components (the base's, the preset's UNet if
    one is in), with the named ControlNets."""
    from diffusers import (
        StableDiffusionXLControlNetImg2ImgPipeline,
        StableDiffusionXLControlNetInpaintPipeline,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLControlNetUnionImg2ImgPipeline,
        StableDiffusionXLControlNetUnionInpaintPipeline,
        StableDiffusionXLControlNetUnionPipeline,
    )
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    if names[0] in union_modes(models.controlnets):  # the check pass allows one union model, alone
        controlnet = models.controlnets[names[0]]
        cls = {"txt2img": StableDiffusionXLControlNetUnionPipeline,
               "img2img": StableDiffusionXLControlNetUnionImg2ImgPipeline,
               "inpaint": StableDiffusionXLControlNetUnionInpaintPipeline}[task]
    else:
        chosen = [models.controlnets[name] for name in names]
        controlnet = chosen[0] if len(chosen) == 1 else MultiControlNetModel(chosen)
        cls = {"txt2img": StableDiffusionXLControlNetPipeline, "img2img": StableDiffusionXLControlNetImg2ImgPipeline,
               "inpaint": StableDiffusionXLControlNetInpaintPipeline}[task]
    components = {name: part for name, part in pipe.components.items() if name in _init_arguments(cls)}
    control_pipe = cls(**components, controlnet=controlnet, add_watermarker=False)
    control_pipe.set_progress_bar_config(disable=True)
    return control_pipe


def arguments(plan, images: list) -> dict:
    """The ControlNet pipeline's control arguments for the plan's controls and their images."""
    if plan.controlnets[0].mode is not None:  # one union model: every image and its mode, one strength
        from sdxl_worker.request.schema import UNION_MODES

        first = plan.controlnets[0]
        return {"control_image": list(images), "control_mode": [UNION_MODES[control.mode] for control in plan.controlnets],
                "controlnet_conditioning_scale": float(first.scale), "control_guidance_start": float(first.start),
                "control_guidance_end": float(first.end)}
    one = len(plan.controlnets) == 1

    def each(values):
        return values[0] if one else list(values)

    field = "image" if plan.task == "txt2img" else "control_image"  # txt2img's "image" is the control image
    return {field: each(images),
            "controlnet_conditioning_scale": each([float(control.scale) for control in plan.controlnets]),
            "control_guidance_start": each([float(control.start) for control in plan.controlnets]),
            "control_guidance_end": each([float(control.end) for control in plan.controlnets])}


def _init_arguments(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters) - {"self"}
