"""Planning: which pipelines run, in which order, with which settings. Pure: no model, no I/O.

The plan resolves everything the inputs leave implicit (task, refine mode, sizes, seeds) and
holds what every stage runs with, so the engine only executes it and the tests can check every
decision without a model. It decides and never refuses: sdxl_worker.request.check ran before.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import NamedTuple

from sdxl_worker.errors import InputError
from sdxl_worker.request.check import refine_mode_of, task_of
from sdxl_worker.request.schema import INPUT_SCHEMA, MAX_SEED
from sdxl_worker.request.types import Request

DEFAULT_SIZE = 1024
# A size taken from an input image obeys the same range as 'width' and 'height'.
MIN_SIDE = INPUT_SCHEMA["properties"]["width"]["minimum"]
MAX_SIDE = INPUT_SCHEMA["properties"]["width"]["maximum"]
SIDE_STEP = INPUT_SCHEMA["properties"]["width"]["multipleOf"]
DEFAULT_HIGH_NOISE_FRAC = 0.8  # cog-sdxl's default hand-off point


class Guide(NamedTuple):
    """One ControlNet as a stage runs it (its control image is prepared beside the plan)."""

    model: str
    scale: float
    start: float
    end: float


@dataclass(frozen=True)
class Plan:
    task: str  # txt2img | img2img | inpaint | refine
    refine: str  # no_refiner | expert_ensemble_refiner | base_image_refiner ("refine" task: the refiner alone)
    width: int | None  # None: from the input image's size (see size_for)
    height: int | None
    seeds: tuple[int, ...]  # image i of the job uses seeds[i] = seed + i
    high_noise_frac: float | None  # set only for expert_ensemble_refiner
    # What every stage runs with: the engine reads these, never the request.
    prompt: str | None
    negative_prompt: str | None  # None: unset (zeroed on the base), "" is a prompt
    scheduler: str
    guidance_scale: float
    steps: int  # the base's steps; with the ensemble, the whole schedule both stages share
    image_strength: float  # how much of an input image the base repaints (img2img, inpaint)
    refiner_steps: int  # base_image_refiner and the refiner-only task, before refiner_strength
    refiner_strength: float
    watermark: bool
    warnings: tuple[str, ...] = ()  # inputs the plan ignored, one sentence each, for the result
    controls: tuple[Guide, ...] = ()  # ControlNets guiding the base, in the job's order
    reference_scale: float | None = None  # the IP-Adapter's scale; None: no reference images

    def size_for(self, image_size: tuple[int, int] | None, field: str = "image") -> tuple[int, int]:
        """The output size: the sides the job gave, the others from the input image.

        From the image, the size is scaled (keeping its aspect ratio) so each side falls within
        MIN_SIDE..MAX_SIDE, then rounded down to a multiple of SIDE_STEP; an image whose aspect
        ratio cannot fit (longer than MAX_SIDE / MIN_SIDE to 1) is refused. With one side given,
        the other follows the image's aspect ratio, kept within the range.
        """
        if self.width and self.height:
            return self.width, self.height
        if image_size is None:
            raise ValueError("a plan without a size needs the input image's size")
        image_width, image_height = image_size
        if self.width:
            return self.width, _side(self.width * image_height / image_width)
        if self.height:
            return _side(self.height * image_width / image_height), self.height
        return fit_image_size(image_width, image_height, field)

    @property
    def runs_base(self) -> bool:
        return self.task != "refine"

    @property
    def runs_refiner(self) -> bool:
        return self.task == "refine" or self.refine != "no_refiner"


def make_plan(request: Request, has_refiner: bool) -> Plan:
    """The decisions for a request that passed sdxl_worker.request.check: this refuses nothing."""
    task = task_of(request)
    refine = refine_mode_of(request, has_refiner)
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - 3)
    count = request.num_images
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
    return Plan(
        task=task,
        refine=refine,
        width=request.width or size_default,
        height=request.height or size_default,
        seeds=tuple(seed + i for i in range(count)),
        high_noise_frac=frac if refine == "expert_ensemble_refiner" else None,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        scheduler=request.scheduler,
        guidance_scale=request.guidance_scale,
        steps=request.num_inference_steps,
        image_strength=request.prompt_strength,
        refiner_steps=request.refiner_inference_steps,
        refiner_strength=request.strength,
        watermark=request.apply_watermark,
        warnings=warnings,
        controls=tuple(Guide(c.model, float(c.scale), float(c.start), float(c.end)) for c in request.controlnets),
        reference_scale=float(request.ip_adapter.scale) if request.ip_adapter is not None else None,
    )


def fit_image_size(width: int, height: int, field: str = "image") -> tuple[int, int]:
    """An input image's size brought into the range of 'width' and 'height', aspect ratio kept."""
    scale = min(1.0, MAX_SIDE / max(width, height))  # shrink the long side into range ...
    scale = max(scale, MIN_SIDE / min(width, height))  # ... or grow the short side into it
    if max(width, height) * scale > MAX_SIDE * (1 + 1e-9):
        ratio = max(width, height) / min(width, height)
        raise InputError(
            f"'{field}' is {width}x{height}, an aspect ratio of {ratio:.1f}:1, which cannot fit the output "
            f"range of {MIN_SIDE}-{MAX_SIDE} pixels per side (at most {MAX_SIDE // MIN_SIDE}:1); crop it, "
            "or give 'width' and 'height' to stretch it."
        )
    return _side(width * scale), _side(height * scale)


def _side(length: float) -> int:
    """A side length rounded down to a multiple of SIDE_STEP, within MIN_SIDE..MAX_SIDE."""
    return min(MAX_SIDE, max(MIN_SIDE, int(length + 1e-6) // SIDE_STEP * SIDE_STEP))
