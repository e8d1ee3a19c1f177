"""Running a plan: the base stage, then the refiner stage, then the high-resolution pass, on the loaded pipelines.

Every stage gets a fresh scheduler, the job's prompts (as weighted, unclipped embeddings from
src/sdxl_worker/engine/prompts.py), guidance and generators; the base hands the refiner its latents (never a
decoded image), and after inpainting the refiner keeps to the same mask.
``on_step(stage, step, kwargs)`` is called after every denoising step, with the scheduler's
clean-image estimate in ``kwargs["x0"]``: previews and progress come from there.
How many steps each stage takes was counted when the job was planned (``plan.step_counts``,
from src/sdxl_worker/engine/steps.py, which also holds the step settings both stages are given).
"""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from sdxl_worker.engine import control_pipelines, ip_adapter
from sdxl_worker.engine.latent_previews import clean_estimate
from sdxl_worker.engine.models import Models
from sdxl_worker.engine.plan import Plan
from sdxl_worker.engine.prompts import each_text_once, encode_for_base, encode_for_refiner
from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.engine.speed import keep_timesteps_on_host
from sdxl_worker.engine.steps import base_args, hires_args, refiner_args
from sdxl_worker.engine.watermark import apply_watermark

TILE_ABOVE_PIXELS = 1024 * 1024  # a larger high-resolution pass decodes and encodes in tiles (diffusers' VAE tiling)
StepCallback = Callable[[str, int, dict], None]  # (stage, step within the stage, callback kwargs + "x0")


@dataclass
class Result:
    images: list  # PIL images
    seeds: tuple[int, ...]
    timings: dict = field(default_factory=dict)  # milliseconds per stage


def run(models: Models, plan: Plan, init_image: Image.Image | None = None,
        on_step: StepCallback | None = None, mask: Image.Image | None = None,
        control_images: list | None = None, ip_adapter_images: list | None = None,
        wants_x0: Callable[[str, int], bool] | None = None, between: Callable[[], None] | None = None) -> Result:
    """The plan's images: the base stage, then the refiner stage, as the plan says.

    Args:
        models: the loaded pipelines (engine/models.py), the job's checkpoint, preset and LoRAs in place.
        plan: the job's plan (engine/plan.py), sized and with its step counts.
        init_image: the input image (img2img, inpaint, refine), resized here to the plan's size.
        on_step: ``on_step(stage, step, kwargs)`` after every denoising step; its kwargs carry
            ``x0`` (the clean-image estimate) only on the steps ``wants_x0(stage, step)`` names
            (the preview steps): the estimate costs work, and on CUDA reads a table, nothing a
            step without a preview should pay.
        mask: the inpaint mask (white repaints), resized to the input image.
        control_images: one prepared control image per ControlNet of ``plan.controlnets``.
        ip_adapter_images: the IP-Adapter's reference images, prepared.
        between: called between pieces of work outside the denoising loop (the upscaling model's
            tiles); it raises to stop the job, as ``on_step`` does in the loop.
    """
    timings: dict[str, float] = {}
    if init_image is not None:
        init_image = _resize(init_image, plan)
    if mask is not None:
        mask = mask.resize(init_image.size, Image.Resampling.LANCZOS) if mask.size != init_image.size else mask

    latents = None
    # One generator per image for the whole job: the refiner continues each image's random
    # stream where the base left it (as cog-sdxl and worker-sdxl do), never restarting it.
    generators = _generators(plan)
    encoders = [getattr(pipe, name, None) for pipe in (models.base, models.refiner) if pipe is not None
                for name in ("text_encoder", "text_encoder_2")]
    with torch.inference_mode(), each_text_once(*encoders):
        if plan.runs_base:
            started = time.perf_counter()
            latents = _run_base(models, plan, generators, init_image, mask, on_step, control_images,
                                ip_adapter_images, wants_x0)
            timings["base"] = ms_since(started)
        if plan.runs_refiner:
            started = time.perf_counter()
            output = _run_refiner(models, plan, generators, latents, init_image, mask, on_step, wants_x0)
            timings["refiner"] = ms_since(started)
        else:
            output = latents
        if plan.hires is not None:
            started = time.perf_counter()
            output = _run_hires(models, plan, generators, output, on_step, wants_x0, mask, between)
            timings["hires"] = ms_since(started)
    images = list(output)
    if plan.apply_watermark:
        images = apply_watermark(images)
    return Result(images=images, seeds=plan.seeds, timings=timings)


def _common(plan: Plan, conditioning, generators: list) -> dict:
    """What every stage gets: the prompts as embeddings, guidance, one generator per image."""
    return dict(
        conditioning.as_kwargs(),
        guidance_scale=plan.guidance_scale,
        num_images_per_prompt=len(plan.seeds),  # one batched pass for the whole job
        generator=generators,
    )


def _run_base(models, plan, generators, init_image, mask, on_step, control_images=None, ip_adapter_images=None,
              wants_x0=None):
    pipe = {"txt2img": models.base, "img2img": models.img2img, "inpaint": models.inpaint}[plan.task]
    if plan.controlnets:
        pipe = control_pipelines.pipeline_for(models, plan.task, pipe, [entry.model for entry in plan.controlnets])
    pipe.scheduler = keep_timesteps_on_host(
        pipe, build_scheduler(plan.scheduler, models.scheduler_configs["base"])
    )
    conditioning = encode_for_base(pipe, plan.prompt, plan.negative_prompt)
    args = dict(_common(plan, conditioning, generators), **base_args(plan))
    end_after = None
    if plan.controlnets:
        args.update(control_pipelines.arguments(plan, control_images))
        if plan.task == "img2img" and "denoising_end" in args:
            # diffusers' ControlNet img2img pipeline has no denoising_end: the base stops after the
            # same steps by interrupting its loop, which then hands over the latents as they are.
            del args["denoising_end"]
            end_after = plan.step_counts["base"]
    if plan.task != "txt2img":
        args["image"] = init_image
    if plan.task == "inpaint":
        # The inpaint pipeline would otherwise default to 1024x1024 whatever the image.
        args.update(mask_image=mask, width=init_image.width, height=init_image.height)
    args["output_type"] = "latent" if plan.runs_refiner else _first_pass_output(plan)
    if ip_adapter_images:
        args["ip_adapter_image"] = [list(ip_adapter_images)]  # one adapter, its images
    with ip_adapter.applied(models.ip_adapter, pipe, plan.ip_adapter_scale) if ip_adapter_images else nullcontext():
        return pipe(**args, **_callback(on_step, "base", pipe.scheduler, end_after, wants_x0)).images


def _run_refiner(models, plan, generators, latents, init_image, mask, on_step, wants_x0=None):
    inpainting = plan.task == "inpaint"
    pipe = models.refiner_inpaint if inpainting else models.refiner
    pipe.scheduler = keep_timesteps_on_host(
        pipe, build_scheduler(plan.scheduler, models.scheduler_configs["refiner"])
    )
    conditioning = encode_for_refiner(pipe, plan.prompt, plan.negative_prompt)
    image = latents if latents is not None else init_image
    args = dict(_common(plan, conditioning, generators), **refiner_args(plan),
                output_type=_first_pass_output(plan))
    if inpainting:
        image = _keep_unmasked(models.inpaint, latents, init_image, mask)
        args.update(mask_image=mask, width=init_image.width, height=init_image.height)
    args["image"] = image
    return pipe(**args, **_callback(on_step, "refiner", pipe.scheduler, None, wants_x0)).images


def _first_pass_output(plan) -> str:
    """What the first pass ends with: latents for a latent upscale, else decoded images."""
    return "latent" if plan.hires is not None and plan.hires.upscaler == "latent" else "pil"


def _run_hires(models, plan, generators, first, on_step, wants_x0=None, mask=None, between=None):
    """The high-resolution pass: the first pass's images upscaled to ``plan.hires_size`` (Lanczos in
    pixels, the latents interpolated bilinearly, or UPSCALER_MODEL's model) and redrawn by the base's img2img pipeline at
    ``hires.strength`` over ``hires.steps``, each image's generator going on where it was. An inpaint
    is redrawn by the inpaint pipeline with its mask upscaled, so what the mask keeps stays kept.
    The VAE works in tiles when the result is over a megapixel, so a 2048x2048 decode fits a 24 GB card."""
    pipe = models.inpaint if plan.task == "inpaint" else models.img2img
    pipe.scheduler = keep_timesteps_on_host(pipe, build_scheduler(plan.scheduler, models.scheduler_configs["base"]))
    width, height = plan.hires_size
    if plan.hires.upscaler == "latent":
        image = torch.nn.functional.interpolate(first, size=(height // 8, width // 8), mode="bilinear",
                                                align_corners=False)
    elif plan.hires.upscaler == "model":  # UPSCALER_MODEL, then Lanczos to the pass's size
        image = [models.upscaler(picture, (width, height), between) for picture in first]
    else:
        image = [picture.resize((width, height), Image.Resampling.LANCZOS) for picture in first]
    conditioning = encode_for_base(pipe, plan.prompt, plan.negative_prompt)
    args = dict(_common(plan, conditioning, generators), **hires_args(plan), image=image, output_type="pil")
    if plan.task == "inpaint":  # the check pass refuses the latent upscale here
        args.update(mask_image=mask.resize((width, height), Image.Resampling.LANCZOS), width=width, height=height)
    tiled = width * height > TILE_ABOVE_PIXELS
    if tiled:
        pipe.vae.enable_tiling()
    try:
        return pipe(**args, **_callback(on_step, "hires", pipe.scheduler, None, wants_x0)).images
    finally:
        if tiled:
            pipe.vae.disable_tiling()


def _keep_unmasked(pipe, latents: torch.Tensor, init_image: Image.Image, mask: Image.Image) -> torch.Tensor:
    """The base's latents where the mask repaints, the clean input image's latents where it keeps.

    The refiner's inpaint pipeline starts from, and keeps to, the latents it is given. After an
    expert-ensemble hand-off the base's latents are still noisy everywhere, the kept region
    included, so handing them over as they are would leave that noise in the kept region.
    """
    height, width = init_image.height, init_image.width
    pixels = pipe.image_processor.preprocess(init_image, height=height, width=width)
    pixels = pixels.to(device=latents.device, dtype=pipe.vae.dtype)
    clean = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    repaint = pipe.mask_processor.preprocess(mask, height=height, width=width)  # binarised at 0.5, as diffusers
    repaint = torch.nn.functional.interpolate(repaint, size=latents.shape[-2:]).to(latents.device, latents.dtype)
    return repaint * latents + (1 - repaint) * clean.to(latents.dtype)


def _callback(on_step: StepCallback | None, stage: str, scheduler, end_after: int | None = None,
              wants_x0: Callable[[str, int], bool] | None = None) -> dict:
    """The step callback: ``on_step`` after every step, and the loop interrupted after ``end_after`` steps."""
    if on_step is None and end_after is None:
        return {}
    latest = _observe_clean_estimate(scheduler, stage, wants_x0) if on_step is not None and wants_x0 else {}

    def after_step(pipe, step, timestep, kwargs):
        if on_step is not None:
            on_step(stage, step + 1, dict(kwargs, x0=latest.pop("x0", None)))
        if end_after is not None and step + 1 >= end_after:
            pipe._interrupt = True  # the remaining iterations are skipped, no step or random draw run
        return kwargs

    return {"callback_on_step_end": after_step}


def _observe_clean_estimate(scheduler, stage: str, wants_x0: Callable[[str, int], bool]) -> dict:
    """Wrap this job's own scheduler so each step ``wants_x0`` names also leaves its x0 estimate behind.

    Only reads: the step's result goes back to the pipeline untouched, and no random number
    is drawn, so a job gives the same pixels with or without previews.
    """
    latest: dict = {}
    original_step = scheduler.step
    steps = [0]  # step() calls so far: one per loop iteration, as the callback counts them

    # wraps() keeps step's signature visible: the pipelines pass `generator` (Euler-a's noise)
    # and `eta` only to a step() that declares them, so hiding them would change the image.
    @functools.wraps(original_step)
    def step(model_output, timestep, sample, *args, **kwargs):
        output = original_step(model_output, timestep, sample, *args, **kwargs)
        steps[0] += 1
        if wants_x0(stage, steps[0]):
            latest["x0"] = clean_estimate(scheduler, output, model_output, timestep, sample)
        return output

    scheduler.step = step  # an instance attribute on a scheduler built for this job alone
    return latest


def _generators(plan: Plan) -> list:
    # CPU generators: the same seed gives the same noise on any GPU, and on CPU.
    return [torch.Generator("cpu").manual_seed(seed) for seed in plan.seeds]


def _resize(image: Image.Image, plan: Plan) -> Image.Image:
    """The input image at the job's output size (the plan holds it once the image is decoded:
    engine.plan.with_image_size)."""
    if plan.width is None or plan.height is None:
        raise ValueError("the plan has no output size yet: engine.plan.with_image_size gives it one")
    width, height = plan.width, plan.height
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def ms_since(started: float) -> int:
    """Whole milliseconds since a time.perf_counter() reading: the unit of a result's timings."""
    return round((time.perf_counter() - started) * 1000)
