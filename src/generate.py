"""Running a plan: the base stage, then the refiner stage, on the loaded pipelines.

Every stage gets a fresh scheduler, the job's prompts, guidance and generators; the base
hands the refiner its latents (never a decoded image). ``on_step(stage, step)`` is called
after every denoising step, which is where previews and progress come from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from PIL import Image

from src.models import Models
from src.plan import Plan
from src.schedulers import build_scheduler
from src.speed import keep_timesteps_on_host

StepCallback = Callable[[str, int, dict], None]  # (stage, step within the stage, callback kwargs)


@dataclass
class Result:
    images: list  # PIL images
    seeds: tuple[int, ...]
    timings: dict = field(default_factory=dict)  # milliseconds per stage


def run(models: Models, request: dict, plan: Plan, init_image: Image.Image | None = None,
        on_step: StepCallback | None = None) -> Result:
    timings: dict[str, float] = {}
    prompts = {
        "prompt": request["prompt"] or "",
        "negative_prompt": request["negative_prompt"] or None,
        "guidance_scale": request["guidance_scale"],
        "num_images_per_prompt": len(plan.seeds),
    }
    if init_image is not None:
        init_image = _resize(init_image, plan)

    latents = None
    with torch.inference_mode():
        if plan.runs_base:
            started = time.perf_counter()
            latents = _run_base(models, request, plan, prompts, init_image, on_step)
            timings["base"] = _ms(started)
        if plan.runs_refiner:
            started = time.perf_counter()
            output = _run_refiner(models, request, plan, prompts, latents if latents is not None else init_image,
                                  on_step)
            timings["refiner"] = _ms(started)
        else:
            output = latents
    return Result(images=list(output), seeds=plan.seeds, timings=timings)


def _run_base(models, request, plan, prompts, init_image, on_step):
    pipe = models.base if plan.task == "txt2img" else models.img2img
    scheduler = build_scheduler(request["scheduler"], models.scheduler_configs["base"])
    pipe.scheduler = keep_timesteps_on_host(pipe, scheduler)
    args = dict(prompts, num_inference_steps=request["num_inference_steps"], generator=_generators(plan))
    if plan.task == "txt2img":
        args.update(width=plan.width, height=plan.height)
    else:
        args.update(image=init_image, strength=request["prompt_strength"])
    if plan.refine == "expert_ensemble_refiner":
        args["denoising_end"] = plan.high_noise_frac
    args["output_type"] = "latent" if plan.runs_refiner else "pil"
    return pipe(**args, **_callback(on_step, "base")).images


def _run_refiner(models, request, plan, prompts, image, on_step):
    pipe = models.refiner
    scheduler = build_scheduler(request["scheduler"], models.scheduler_configs["refiner"])
    pipe.scheduler = keep_timesteps_on_host(pipe, scheduler)
    args = dict(prompts, image=image, generator=_generators(plan), output_type="pil")
    if plan.refine == "expert_ensemble_refiner":
        # Same schedule as the base, picking up where it stopped.
        args.update(num_inference_steps=request["num_inference_steps"], denoising_start=plan.high_noise_frac)
    else:
        args.update(num_inference_steps=request["refiner_inference_steps"], strength=request["strength"])
    return pipe(**args, **_callback(on_step, "refiner")).images


def _callback(on_step: StepCallback | None, stage: str) -> dict:
    if on_step is None:
        return {}

    def after_step(pipe, step, timestep, kwargs):
        on_step(stage, step + 1, kwargs)
        return kwargs

    return {"callback_on_step_end": after_step}


def _generators(plan: Plan) -> list:
    # CPU generators: the same seed gives the same noise on any GPU, and on CPU.
    return [torch.Generator("cpu").manual_seed(seed) for seed in plan.seeds]


def _resize(image: Image.Image, plan: Plan) -> Image.Image:
    """The requested size, or the image's own rounded down to a multiple of 8."""
    width = plan.width or max(8, image.width // 8 * 8)
    height = plan.height or max(8, image.height // 8 * 8)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
