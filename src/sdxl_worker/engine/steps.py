"""How many denoising steps each stage takes, and the step settings the pipelines are given.

The base's and the refiner's step settings (``stage_args``) are what ``engine/generate.py``
hands the pipelines, and what ``count_steps`` counts from before anything runs, so the two
cannot disagree. The plan (``engine/plan.py``) counts once per job; the work budget, the
progress totals, the preview steps and the ControlNet img2img hand-off all read that count.
"""

from __future__ import annotations

from sdxl_worker.engine.schedulers import build_scheduler


def base_args(plan) -> dict:
    """The base's step settings."""
    args = dict(num_inference_steps=plan.num_inference_steps)
    if plan.task == "txt2img":
        args.update(width=plan.width, height=plan.height)
    else:
        args.update(strength=plan.prompt_strength)
    if plan.refine == "expert_ensemble_refiner":
        args["denoising_end"] = plan.high_noise_frac
    return args


def refiner_args(plan) -> dict:
    """The refiner's step settings: the ensemble continues the base's schedule, otherwise its own."""
    if plan.refine == "expert_ensemble_refiner":
        return dict(num_inference_steps=plan.num_inference_steps, denoising_start=plan.high_noise_frac)
    return dict(num_inference_steps=plan.refiner_inference_steps, strength=plan.strength)


def hires_args(plan) -> dict:
    """The second pass's step settings: an img2img of the upscaled images on the base's scheduler."""
    return dict(num_inference_steps=plan.hires.steps, strength=plan.hires.strength)


def count_steps(scheduler_configs: dict, plan) -> dict[str, int]:
    """Denoising steps per stage (``{"base": n, "refiner": m, "hires": k}``, the stages the plan runs), before running.

    Mirrors diffusers' SDXL timestep logic (set_timesteps, then strength or denoising_start,
    then denoising_end) on fresh schedulers of the job's kind built from ``scheduler_configs``
    (``Models.scheduler_configs``): PNDM, for one, runs one step more than asked. Tests hold
    this to the steps the pipelines really take.
    """
    counts = {}
    if plan.runs_base:
        counts["base"] = _count(build_scheduler(plan.scheduler, scheduler_configs["base"]), base_args(plan))
    if plan.runs_refiner and "refiner" in scheduler_configs:  # without a refiner the check pass refuses the job
        counts["refiner"] = _count(build_scheduler(plan.scheduler, scheduler_configs["refiner"]), refiner_args(plan))
    if plan.hires is not None and plan.runs_base:  # a refiner-only job is refused a second pass
        counts["hires"] = _count(build_scheduler(plan.scheduler, scheduler_configs["base"]), hires_args(plan))
    return counts


def _count(scheduler, args: dict) -> int:
    steps = args["num_inference_steps"]
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps
    train_steps = scheduler.config.num_train_timesteps
    if args.get("denoising_start") is not None:
        cutoff = int(round(train_steps - args["denoising_start"] * train_steps))
        count = int((timesteps < cutoff).sum().item())
        if scheduler.order == 2 and count % 2 == 0:
            count += 1
        timesteps = timesteps[len(timesteps) - count:]
    elif args.get("strength") is not None:
        start = max(steps - min(int(steps * args["strength"]), steps), 0)
        timesteps = timesteps[start * scheduler.order:]
    if args.get("denoising_end") is not None:
        cutoff = int(round(train_steps - args["denoising_end"] * train_steps))
        timesteps = [t for t in timesteps if t >= cutoff]
    return len(timesteps)
