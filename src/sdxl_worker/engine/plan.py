"""Planning: every value a job runs with, derived once from its request. Pure: no model, no I/O.

The plan resolves what the inputs leave implicit (the task, the refine mode, the seeds, the
output size, each stage's step count) and carries everything the later stages read: they take
the plan, never the request. Its fields keep the request's names (``num_inference_steps``,
``prompt_strength``, ``strength``, ``controlnets``), so a field means one thing from the schema to
the pipelines. It decides and never refuses: the check passes (``runtime/checks.py``) do that,
reading the values it derived.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace

from sdxl_worker.engine.steps import count_steps
from sdxl_worker.request.schema import INPUT_SCHEMA, MAX_SEED
from sdxl_worker.request.types import ControlNetInput, HiresInput, Lora, Request

DEFAULT_SIZE = 1024
# A size taken from an input image obeys the same range as 'width' and 'height'.
MIN_SIDE = INPUT_SCHEMA["properties"]["width"]["minimum"]
MAX_SIDE = INPUT_SCHEMA["properties"]["width"]["maximum"]
SIDE_STEP = INPUT_SCHEMA["properties"]["width"]["multipleOf"]
DEFAULT_HIGH_NOISE_FRAC = 0.8  # cog-sdxl's default hand-off point


@dataclass(frozen=True)
class Plan:
    """What one job runs with, every value resolved.

    Args (fields):
        task: ``txt2img``, ``img2img``, ``inpaint`` or ``refine`` (the refiner alone, from ``image_url``).
        refine: ``no_refiner``, ``expert_ensemble_refiner`` or ``base_image_refiner``.
        width, height: the output size; None until the input image is decoded when the size
            comes from it (``with_image_size``).
        seeds: image i of the job uses ``seeds[i] = seed + i``.
        high_noise_frac: the ensemble's hand-off point; None for the other modes.
        step_counts: denoising steps per stage as the schedulers will run them
            (``{"base": n, "refiner": m}``, ``engine/steps.py``); None when planned without the
            models' scheduler configs (unit tests of the decisions alone). ``counted_with``: the
            configs they were counted on; the run counts again only if the checkpoint in place
            by then brings others (another job may have switched it).
        num_inference_steps .. apply_watermark: the request's settings, as the stages use them.
        controlnets: the job's ControlNet entries, in its order; ``ip_adapter_scale``: None
            without an IP-Adapter.
        preview_* / output_* / upload: how previews and the result leave (runtime/stream.py,
            delivery/deliver.py).
        model, preset, loras: which checkpoint, fast preset and LoRAs the run needs.
        warnings: inputs the plan ignored, one sentence each, for the result.
    """

    task: str
    refine: str
    width: int | None
    height: int | None
    seeds: tuple[int, ...]
    high_noise_frac: float | None
    prompt: str | None
    negative_prompt: str | None  # None: unset (zeroed on the base), "" is a prompt
    scheduler: str
    guidance_scale: float
    num_inference_steps: int  # the base's; with the ensemble, the whole schedule both stages share
    prompt_strength: float  # how much of an input image the base repaints (img2img, inpaint)
    refiner_inference_steps: int  # base_image_refiner and the refiner-only task, before strength
    strength: float  # how much the refiner repaints
    apply_watermark: bool
    step_counts: dict | None = None
    counted_with: dict | None = field(default=None, repr=False, compare=False)  # the scheduler configs counted on
    controlnets: tuple[ControlNetInput, ...] = ()
    ip_adapter_scale: float | None = None
    preview_steps: int = 0
    preview_size: int = 256
    preview_format: str = "jpeg"
    preview_quality: int = 75
    output_format: str = "png"
    output_quality: int = 90
    upload: bool | None = None
    model: str | None = None
    preset: str | None = None
    loras: tuple[Lora, ...] = ()
    hires: HiresInput | None = None
    warnings: tuple[str, ...] = ()

    @property
    def runs_base(self) -> bool:
        return self.task != "refine"

    @property
    def runs_refiner(self) -> bool:
        return self.task == "refine" or self.refine != "no_refiner"

    @property
    def hires_size(self) -> tuple[int, int] | None:
        """The second pass's size: the first pass's times ``hires.scale``, to a multiple of 8 (None
        without a second pass, or before the size is known)."""
        if self.hires is None or not self.width or not self.height:
            return None
        return (round(self.width * self.hires.scale / 8) * 8, round(self.height * self.hires.scale / 8) * 8)

    @property
    def total_steps(self) -> int:
        return sum(self.step_counts.values())


def make_plan(request: Request, has_refiner: bool, scheduler_configs: dict | None = None) -> Plan:
    """The plan for ``request`` on a worker with (``has_refiner``) or without a refiner.

    Args:
        request: the validated request.
        has_refiner: whether REFINER_MODEL is loaded; without one every job plans ``no_refiner``
            (the check pass refuses a job that asked for more).
        scheduler_configs: ``Models.scheduler_configs``, to count each stage's steps; None leaves
            ``step_counts`` unset.
    """
    task = task_of(request)
    refine = _refine_mode(request, has_refiner, task)
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - 3)
    size_default = DEFAULT_SIZE if task == "txt2img" else None
    frac = request.high_noise_frac
    if refine == "expert_ensemble_refiner" and frac is None:
        frac = DEFAULT_HIGH_NOISE_FRAC
    warnings = ()
    if request.high_noise_frac is not None and refine != "expert_ensemble_refiner":
        # cog-sdxl's playground sends its default 0.8 with every request, whatever the mode.
        warnings = (f"'high_noise_frac' was ignored: it only applies to refine='expert_ensemble_refiner', "
                    f"and this job ran '{refine}'.",)
    if request.preset and request.negative_prompt and request.guidance_scale <= 1:
        warnings += (f"'negative_prompt' had no effect: 'preset' '{request.preset}' runs without classifier-free "
                     f"guidance (guidance_scale {request.guidance_scale:g}).",)
    plan = Plan(
        task=task,
        refine=refine,
        width=request.width or size_default,
        height=request.height or size_default,
        seeds=tuple(seed + i for i in range(request.num_images)),
        high_noise_frac=frac if refine == "expert_ensemble_refiner" else None,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        scheduler=request.scheduler,
        guidance_scale=request.guidance_scale,
        num_inference_steps=request.num_inference_steps,
        prompt_strength=request.prompt_strength,
        refiner_inference_steps=request.refiner_inference_steps,
        strength=request.strength,
        apply_watermark=request.apply_watermark,
        controlnets=request.controlnets,
        ip_adapter_scale=float(request.ip_adapter.scale) if request.ip_adapter is not None else None,
        preview_steps=request.preview_steps,
        preview_size=request.preview_size,
        preview_format=request.preview_format,
        preview_quality=request.preview_quality,
        output_format=request.output_format,
        output_quality=request.output_quality,
        upload=request.upload,
        model=request.model,
        preset=request.preset,
        loras=request.loras,
        hires=request.hires,
        warnings=warnings,
    )
    return counted(plan, scheduler_configs) if scheduler_configs is not None else plan


def counted(plan: Plan, scheduler_configs: dict) -> Plan:
    """The plan with each stage's step count on these scheduler configs (``engine/steps.py``)."""
    return replace(plan, step_counts=count_steps(scheduler_configs, plan), counted_with=dict(scheduler_configs))


def task_of(request: Request) -> str:
    """txt2img, img2img, inpaint or refine: as asked, else from the images given."""
    if request.task:
        return request.task
    if request.image_url is not None:
        return "refine"
    if request.image is not None:
        return "inpaint" if request.mask is not None else "img2img"
    return "txt2img"


def _refine_mode(request: Request, has_refiner: bool, task: str) -> str:
    """How the refiner runs: as asked, else worker-sdxl's rule (see docs/modes.md)."""
    if task == "refine":
        return "base_image_refiner"
    if not has_refiner:
        return "no_refiner"
    if request.refine is not None:
        return request.refine
    # worker-sdxl's rule: a hand-off point means the ensemble, none means refine the base image.
    return "expert_ensemble_refiner" if request.high_noise_frac is not None else "base_image_refiner"


def with_image_size(plan: Plan, image_size: tuple[int, int]) -> Plan:
    """The plan with its output size once the input image is decoded: the sides the job gave,
    the others from the image (``output_size``). Step counts do not depend on the size."""
    width, height = output_size(plan.width, plan.height, image_size)
    return replace(plan, width=width, height=height)


def output_size(width: int | None, height: int | None, image_size: tuple[int, int]) -> tuple[int, int]:
    """The output size for an input image of ``image_size`` and the sides the job gave.

    From the image, the size is scaled (keeping its aspect ratio) so each side falls within
    MIN_SIDE..MAX_SIDE, then rounded down to a multiple of SIDE_STEP (an aspect ratio that
    cannot fit is refused by the check pass before this runs: ``fits_the_range``). With one side
    given, the other follows the image's aspect ratio, kept within the range.
    """
    if width and height:
        return width, height
    image_width, image_height = image_size
    if width:
        return width, _side(width * image_height / image_width)
    if height:
        return _side(height * image_width / image_height), height
    return fit_image_size(image_width, image_height)


def fits_the_range(width: int, height: int) -> bool:
    """Whether an image of this size, scaled keeping its aspect ratio, fits MIN_SIDE..MAX_SIDE."""
    return max(width, height) * MIN_SIDE <= MAX_SIDE * min(width, height) * (1 + 1e-9)


def fit_image_size(width: int, height: int) -> tuple[int, int]:
    """An input image's size brought into the range of 'width' and 'height', aspect ratio kept
    (clamped at the range's ends when it cannot fit: see ``fits_the_range``)."""
    scale = min(1.0, MAX_SIDE / max(width, height))  # shrink the long side into range ...
    scale = max(scale, MIN_SIDE / min(width, height))  # ... or grow the short side into it
    return _side(width * scale), _side(height * scale)


def _side(length: float) -> int:
    """A side length rounded down to a multiple of SIDE_STEP, within MIN_SIDE..MAX_SIDE."""
    return min(MAX_SIDE, max(MIN_SIDE, int(length + 1e-6) // SIDE_STEP * SIDE_STEP))
