"""The two check passes: every refusal of a job, in one place, before the work it would waste.

diffusers' ``check_inputs`` habit: each precondition stated once, each refusal one sentence
naming the field and, where there is one, the fix. The schema (request/schema.py) has checked
each field on its own and the rules between fields that need only the input itself; after it:

- ``check(request, plan, abilities)`` runs before any download or model work, on the request,
  the values the plan derived from it (task, refine mode, step counts, and the size when the job
  gives it) and what this worker can do (``Abilities``).
- ``check_decoded(plan, image_size, field, abilities)`` runs once the input image is decoded, on
  what only its size tells: whether its aspect ratio fits the output range, and the work of a job
  whose size comes from it. It returns the plan with that size.

Nothing else refuses a job that reached the worker; what fails later is a download or a file
(inputs/), a model that will not load, or the run itself, each with its own sentence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from sdxl_worker.config import STORAGE_REQUIRED
from sdxl_worker.engine import work
from sdxl_worker.engine.plan import MAX_SIDE, MIN_SIDE, Plan, fits_the_range, with_image_size
from sdxl_worker.engine.prompts import check_prompts
from sdxl_worker.engine.switch import broken_model_sentence
from sdxl_worker.engine.upscaler import pixels_seen
from sdxl_worker.errors import InputError, quoted
from sdxl_worker.request.schema import MAX_SEED, UNION_MODES
from sdxl_worker.request.types import Request


@dataclass(frozen=True)
class Abilities:
    """What this worker can do for one job: what the check pass checks a request against.

    Built per job by ``Worker.abilities`` (runtime/worker.py) from the loaded models, the
    settings and the job's storage; tests build one by hand.

    Args:
        has_refiner: REFINER_MODEL is loaded.
        has_storage: the job's images can be uploaded (the worker's bucket or the job's s3Config).
        model_names: the checkpoints of BASE_MODELS; ``broken_models``: those that failed to load.
        presets: the fast presets whose weights are here.
        controlnets: CONTROLNET_MODELS' names; ``union_controlnets``: those that are union models, with
            how many control modes each has; ``has_ip_adapter``: IP_ADAPTER_MODEL is loaded;
            ``has_depth``: DEPTH_MODEL is, for ``preprocess: depth``; ``has_pose``: POSE_MODEL, for ``pose``;
            ``has_upscaler``: UPSCALER_MODEL, for ``hires.upscaler: model``,
            with its operations per pixel, ``upscaler_flops``.
        cpu_offload: CPU_OFFLOAD=1, which runs only the pipelines' own models.
        broken_samplers: schedulers the start-up self-check could not build.
        max_job_work: MAX_JOB_WORK, in units of work (engine/work.py).
        switch_work: the work of loading the job's ``model`` first (0 when it is in place).
        prompt_tokenizer: the base's second tokenizer, which counts the prompts' tokens (None: not checked).
        lora_files: the worker's LoraFiles, which say what a LoRA entry may name (None: not checked).
        scheduler_configs: the models' scheduler configs, to count steps with (None when the
            job's scheduler is broken: nothing to count).
    """

    has_refiner: bool = True
    has_storage: bool = False
    model_names: tuple[str, ...] = ()
    broken_models: tuple[str, ...] = ()
    presets: tuple[str, ...] = ()
    controlnets: tuple[str, ...] = ()
    union_controlnets: tuple[tuple[str, int], ...] = ()
    has_depth: bool = False
    has_pose: bool = False
    has_upscaler: bool = False
    upscaler_flops: float = 0  # the upscaling model's operations per input pixel
    has_ip_adapter: bool = False
    cpu_offload: bool = False
    broken_samplers: tuple[str, ...] = ()
    max_job_work: float = math.inf
    switch_work: float = 0
    prompt_tokenizer: object = None
    lora_files: object = None
    scheduler_configs: dict | None = None


def check(request: Request, plan: Plan, abilities: Abilities) -> None:
    """The check before any I/O: InputError naming the field, for the first thing about the job
    this worker cannot do.

    Args:
        request: the validated request (what the user asked, before the plan resolved it).
        plan: the values derived from it (``engine.plan.make_plan``), read, never derived again.
        abilities: what this worker can do for this job.
    """
    _check_named_parts(request, abilities)
    _check_refiner(request, plan, abilities)
    _check_step_counts(plan)
    if abilities.cpu_offload:
        _check_offload(request)
    if plan.scheduler in abilities.broken_samplers:  # found by the start-up self-check
        raise InputError(f"'scheduler' '{plan.scheduler}' cannot run on this worker (its start-up check failed; "
                         f"the log says why); choose another.")
    if plan.hires is not None and not plan.runs_base:
        raise InputError("'hires' redraws what the base made, and a refiner-only job ('task' refine, or "
                         "'image_url') runs no base; send the image as 'image' for img2img, or leave 'hires' out.")
    if plan.hires is not None and plan.task == "inpaint" and plan.hires.upscaler == "latent":
        raise InputError("'hires.upscaler' latent cannot keep an inpaint's mask (the second pass keeps the unmasked "
                         "area from the upscaled image); use lanczos or model.")
    if plan.hires is not None and plan.hires.upscaler == "model" and not abilities.has_upscaler:
        raise InputError("'hires.upscaler' model needs an upscaling model, and this worker has none; set "
                         "UPSCALER_MODEL (docs/modes.md), or use lanczos or latent.")
    if plan.width and plan.height:  # the size is known: the work is refused before any download
        _check_sized(plan, abilities)
    if abilities.prompt_tokenizer is not None:
        check_prompts(abilities.prompt_tokenizer, request.prompt, request.negative_prompt)
    if abilities.lora_files is not None:
        for index, lora in enumerate(request.loras):
            abilities.lora_files.check_entry(asdict(lora), index)


def check_decoded(plan: Plan, image_size: tuple[int, int] | None, field: str, abilities: Abilities) -> Plan:
    """The check once the input image is decoded; the plan with its output size.

    Args:
        plan: the checked plan; its size is complete when the job gave both sides.
        image_size: the decoded input image's (width, height); None without one.
        field: the input that held the image (``image`` or ``image_url``), for the sentence.
        abilities: what this worker can do (its work budget).
    """
    if (plan.width and plan.height) or image_size is None:
        return plan
    if not plan.width and not plan.height and not fits_the_range(*image_size):
        width, height = image_size
        ratio = max(width, height) / min(width, height)
        raise InputError(
            f"'{field}' is {width}x{height}, an aspect ratio of {ratio:.1f}:1, which cannot fit the output "
            f"range of {MIN_SIDE}-{MAX_SIDE} pixels per side (at most {MAX_SIDE // MIN_SIDE}:1); crop it, "
            "or give 'width' and 'height' to stretch it."
        )
    sized = with_image_size(plan, image_size)
    _check_sized(sized, abilities, from_image=True)  # checked and budgeted before any model runs
    return sized


def _check_sized(plan: Plan, abilities: Abilities, from_image: bool = False) -> None:
    """What needs the job's size: the second pass's size, then the work. ``from_image``: the size
    came from the input image, not from 'width' and 'height'."""
    if plan.hires_size is not None and max(plan.hires_size) > MAX_SIDE:
        width, height = plan.hires_size
        side = max(plan.width, plan.height)
        fits = [scale / 100 for scale in range(125, 201) if round(side * scale / 100 / 8) * 8 <= MAX_SIDE]
        size = "give 'width' and 'height'" if from_image else "lower 'width'/'height'"
        if fits:
            fix = f"lower 'hires.scale' to at most {max(fits):.2f}, or {size}"
        else:
            fix = f"no 'hires.scale' fits: {size} to at most {MAX_SIDE * 100 // 125 // 8 * 8} a side"
        raise InputError(f"'hires.scale' {plan.hires.scale:g} makes {width}x{height} of {plan.width}x{plan.height}, "
                         f"over {MAX_SIDE} pixels a side; {fix}.")
    _check_work(plan, abilities)


def _check_named_parts(request: Request, abilities: Abilities) -> None:
    """What the job names that this worker must have: ControlNets, an IP-Adapter, a checkpoint,
    a preset's weights, storage; and seeds that stay in range."""
    controlnets = abilities.controlnets
    for index, control in enumerate(request.controlnets):
        if control.model not in controlnets:
            have = (f"use one of {', '.join(controlnets)}" if controlnets else
                    "this worker has none: set CONTROLNET_MODELS (docs/control.md)")
            raise InputError(f"'controlnets[{index}].model' is {quoted(control.model)}, which is not a ControlNet of "
                             f"this worker; {have}.")
    for index, control in enumerate(request.controlnets):
        if control.preprocess == "depth" and not abilities.has_depth:
            raise InputError(f"'controlnets[{index}].preprocess' depth needs a depth model, and this worker has none; "
                             f"set DEPTH_MODEL (docs/control.md), or send a depth map with preprocess none.")
        if control.preprocess == "pose" and not abilities.has_pose:
            raise InputError(f"'controlnets[{index}].preprocess' pose needs a pose model, and this worker has none; "
                             f"set POSE_MODEL and POSE_DETECTOR (docs/control.md), or send a pose skeleton with "
                             f"preprocess none.")
    _check_union_modes(request, dict(abilities.union_controlnets))
    if request.ip_adapter is not None and not abilities.has_ip_adapter:
        raise InputError("'ip_adapter' needs an IP-Adapter, and this worker has none; set IP_ADAPTER_MODEL "
                         "(docs/control.md), or leave 'ip_adapter' out.")
    names = abilities.model_names
    if request.model is not None and request.model not in names:
        raise InputError(f"'model' is {quoted(request.model)}, which this worker does not serve; use one of "
                         f"{', '.join(names)} (set by BASE_MODELS), or leave it out for {names[0]}.")
    if request.preset is not None and request.preset not in abilities.presets:
        raise InputError(f"'preset' {quoted(request.preset)} needs weights that are not in this worker's image; build it "
                         f"with --build-arg PRESETS={request.preset} (or PRESETS=all), or leave 'preset' out.")
    if request.upload is True and not abilities.has_storage:
        raise InputError(
            f"'upload' is true but this worker has no storage configured; set {', '.join(STORAGE_REQUIRED)} "
            f"on the endpoint, or leave 'upload' unset to get the images inline."
        )
    if request.seed is not None and request.seed + request.num_images - 1 > MAX_SEED:
        raise InputError(f"'seed' must be at most {MAX_SEED - request.num_images + 1} with "
                         f"num_images={request.num_images}.")
    if request.model is not None and request.model in abilities.broken_models:
        raise InputError(broken_model_sentence(names, abilities.broken_models, request.model))


def _check_refiner(request: Request, plan: Plan, abilities: Abilities) -> None:
    if abilities.has_refiner:
        return
    if plan.task == "refine":
        raise InputError(
            "This worker has no refiner loaded (REFINER_MODEL=none), so 'image_url' / task "
            "'refine' cannot run; send the image as 'image' for img2img instead."
        )
    if request.refine not in (None, "no_refiner"):
        raise InputError(
            f"'refine' is '{request.refine}' but this worker has no refiner loaded (REFINER_MODEL=none); "
            "use 'no_refiner' or leave it unset."
        )


def _check_step_counts(plan: Plan) -> None:
    """Strength x steps must leave at least one step, or diffusers fails with a cryptic error."""
    if plan.task in ("img2img", "inpaint") and int(plan.num_inference_steps * plan.prompt_strength) < 1:
        raise InputError(
            f"'prompt_strength' {plan.prompt_strength} x 'num_inference_steps' "
            f"{plan.num_inference_steps} leaves no step to run; raise either."
        )
    if (plan.task == "refine" or plan.refine == "base_image_refiner") and int(
        plan.refiner_inference_steps * plan.strength
    ) < 1:
        raise InputError(
            f"'strength' {plan.strength} x 'refiner_inference_steps' "
            f"{plan.refiner_inference_steps} leaves the refiner no step to run; raise either."
        )
    if plan.hires is not None and int(plan.hires.steps * plan.hires.strength) < 1:
        raise InputError(
            f"'hires.strength' {plan.hires.strength:g} x 'hires.steps' {plan.hires.steps} leaves the second pass no "
            f"step to run; raise either."
        )


def _check_offload(request: Request) -> None:
    """CPU_OFFLOAD=1 moves the pipelines' own models on and off the GPU; a preset's UNet, the
    ControlNets and the IP-Adapter's image encoder are not among them."""
    for field, given, what in (("preset", request.preset, "a preset's own UNet"),
                               ("controlnets", request.controlnets, "the ControlNets"),
                               ("ip_adapter", request.ip_adapter, "the IP-Adapter's image encoder")):
        if given:
            raise InputError(f"'{field}' cannot run on this worker: CPU_OFFLOAD=1 moves only the pipelines' own "
                             f"models to the GPU and back, and {what} is not one of them; leave '{field}' out, "
                             f"or run without CPU_OFFLOAD.")


def _check_union_modes(request: Request, unions: dict) -> None:
    """A union ControlNet's items each say their ``mode``, one the model has; a single-kind one's
    say none; a job guides with one union model, alone, and one strength for it."""
    entries = list(enumerate(request.controlnets))
    for index, control in entries:
        if control.model in unions and control.mode is None:
            raise InputError(f"'controlnets[{index}].mode' is needed: {quoted(control.model)} is a union ControlNet, "
                             f"which must be told what the image is ({', '.join(UNION_MODES)}).")
        if control.model not in unions and control.mode is not None:
            raise InputError(f"'controlnets[{index}].mode' applies to a union ControlNet, and {quoted(control.model)} "
                             f"is a single-kind one; leave 'mode' out.")
        if control.mode is not None and UNION_MODES[control.mode] >= unions[control.model]:
            raise InputError(f"'controlnets[{index}].mode' {control.mode} needs a union ControlNet with "
                             f"{UNION_MODES[control.mode] + 1} control modes (the promax variant); "
                             f"{quoted(control.model)} has {unions[control.model]}.")
    used = {control.model for _, control in entries}
    if len(used) > 1 and used & set(unions):
        raise InputError("'controlnets' mixes a union ControlNet with other ControlNets; a job guides with one union "
                         "model alone (give each image its 'mode'), or with single-kind ones.")
    union_entries = [control for _, control in entries if control.model in unions]
    if len({(control.scale, control.start, control.end) for control in union_entries}) > 1:
        raise InputError("'controlnets' entries of one union ControlNet must share 'scale', 'start' and 'end': the "
                         "model guides with one strength for all its images.")
    if len(union_entries) > 1 and (union_entries[0].start, union_entries[0].end) != (0, 1):
        raise InputError("'controlnets' give one union ControlNet several images and a 'start' or 'end': with several "
                         "images the union model guides the whole schedule (diffusers' ControlNetUnionModel), so leave "
                         "'start' at 0 and 'end' at 1, or give it one image.")


def _check_work(plan: Plan, abilities: Abilities) -> None:
    """The job's work (engine/work.py) against MAX_JOB_WORK; the sentence says by how much it is
    over and which inputs to lower."""
    if plan.step_counts is None:
        return  # planned without the models' schedulers: nothing to count
    steps, width, height, limit = plan.step_counts, plan.width, plan.height, abilities.max_job_work
    images, guidance = len(plan.seeds), plan.guidance_scale
    # A union model runs once a step, whatever its images: a single-kind ControlNet once per entry.
    union_models = {control.model for control in plan.controlnets if control.mode is not None}
    controlnets = len(union_models) + sum(control.mode is None for control in plan.controlnets)
    switch = abilities.switch_work
    depth_maps = sum(control.preprocess == "depth" for control in plan.controlnets)
    poses = sum(control.preprocess == "pose" for control in plan.controlnets)
    first = {stage: count for stage, count in steps.items() if stage != "hires"}
    second = (work.job_work({"hires": steps["hires"]}, *plan.hires_size, images, guidance)
              if "hires" in steps and plan.hires_size else 0)  # the second pass at its own, larger size
    upscale = (work.model_upscale(pixels_seen(width, height), images, abilities.upscaler_flops)
               if plan.hires is not None and plan.hires.upscaler == "model" else 0)
    total = (work.job_work(first, width, height, images, guidance, controlnets) + second + upscale + switch
             + depth_maps * work.DEPTH_MAP + poses * work.POSE_MAP)
    if total <= limit:
        return
    stages = " + ".join(f"{count} {stage}" for stage, count in first.items()) + " steps"
    if second:
        stages += f", then {steps['hires']} hires steps at {plan.hires_size[0]}x{plan.hires_size[1]}"
    if upscale:
        stages += f", {_units(upscale)} for the upscaling model"
    guided = f", {controlnets} ControlNet(s) at {work.CONTROLNET_CALL:g} a base step each" if controlnets else ""
    lower = ["'num_images'"] if images > 1 else []
    if width * height > work.REFERENCE_PIXELS:
        lower.append("'width'/'height'")
    if plan.runs_base:
        lower.append("'num_inference_steps'")
    if plan.runs_refiner and plan.refine != "expert_ensemble_refiner":  # the ensemble shares the base's schedule
        lower.append("'refiner_inference_steps'")
    if second:
        lower += ["'hires.scale'", "'hires.steps'"]
    if upscale:
        lower.append("'hires.upscaler' (lanczos costs nothing)")
    if any(control.mode is None for control in plan.controlnets):  # a union model's images cost one call
        lower.append("the number of 'controlnets'")
    raise InputError(
        f"This job is {_units(total)} units of work, {total / limit:.1f}x the worker's budget of {_units(limit)} "
        f"(MAX_JOB_WORK; a unit is one model call on one 1024x1024 image: {images} image(s) of "
        f"{width}x{height}, {stages}{guided}{', x2 for guidance' if guidance > 1 else ''}"
        f"{f', {_units(switch)} to load its model' if switch else ''}"
        f"{f', {depth_maps} depth map(s) at {work.DEPTH_MAP:g} each' if depth_maps else ''}"
        f"{f', {poses} pose map(s) at {work.POSE_MAP:g} each' if poses else ''}); lower {_either(lower)}."
    )


def _units(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
