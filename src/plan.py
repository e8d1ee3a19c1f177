"""Planning: which pipelines run, in which order, with which settings. Pure: no model, no I/O.

The plan resolves everything the inputs leave implicit (task, refine mode, sizes, seeds),
so the run step only executes it and the tests can check every decision without a model.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from src.errors import InputError
from src.schema import MAX_SEED

DEFAULT_SIZE = 1024
DEFAULT_HIGH_NOISE_FRAC = 0.8  # cog-sdxl's default hand-off point


@dataclass(frozen=True)
class Plan:
    task: str  # txt2img | img2img | inpaint | refine
    refine: str  # no_refiner | expert_ensemble_refiner | base_image_refiner ("refine" task: the refiner alone)
    width: int | None  # None: the input image's own size (rounded down to a multiple of 8)
    height: int | None
    seeds: tuple[int, ...]  # image i of the job uses seeds[i] = seed + i
    high_noise_frac: float | None  # set only for expert_ensemble_refiner
    warnings: tuple[str, ...] = ()  # inputs the plan ignored, one sentence each, for the result

    @property
    def runs_base(self) -> bool:
        return self.task != "refine"

    @property
    def runs_refiner(self) -> bool:
        return self.task == "refine" or self.refine != "no_refiner"


def make_plan(request: dict, has_refiner: bool) -> Plan:
    task = request["task"] or _task_from_images(request)
    refine = _refine_mode(request, has_refiner, task)
    seed = request["seed"] if request["seed"] is not None else secrets.randbelow(MAX_SEED - 3)
    count = request["num_images"]
    if seed + count - 1 > MAX_SEED:
        raise InputError(f"'seed' must be at most {MAX_SEED - count + 1} with num_images={count}.")
    size_default = DEFAULT_SIZE if task == "txt2img" else None
    frac = request["high_noise_frac"]
    if refine == "expert_ensemble_refiner" and frac is None:
        frac = DEFAULT_HIGH_NOISE_FRAC
    _check_step_counts(request, task, refine)
    warnings = ()
    if request["high_noise_frac"] is not None and refine != "expert_ensemble_refiner":
        # cog-sdxl's playground sends its default 0.8 with every request, whatever the mode.
        warnings = (f"'high_noise_frac' was ignored: it only applies to refine='expert_ensemble_refiner', "
                    f"and this job ran '{refine}'.",)
    return Plan(
        task=task,
        refine=refine,
        width=request["width"] or size_default,
        height=request["height"] or size_default,
        seeds=tuple(seed + i for i in range(count)),
        high_noise_frac=frac if refine == "expert_ensemble_refiner" else None,
        warnings=warnings,
    )


def _task_from_images(request: dict) -> str:
    if request["image_url"] is not None:
        return "refine"
    if request["image"] is not None:
        return "inpaint" if request["mask"] is not None else "img2img"
    return "txt2img"


def _refine_mode(request: dict, has_refiner: bool, task: str) -> str:
    asked = request["refine"]
    if task == "refine":
        if not has_refiner:
            raise InputError(
                "This worker has no refiner loaded (REFINER_MODEL=none), so 'image_url' / task "
                "'refine' cannot run; send the image as 'image' for img2img instead."
            )
        return "base_image_refiner"
    if not has_refiner:
        if asked not in (None, "no_refiner"):
            raise InputError(
                f"'refine' is '{asked}' but this worker has no refiner loaded (REFINER_MODEL=none); "
                "use 'no_refiner' or leave it unset."
            )
        return "no_refiner"
    if asked is not None:
        return asked
    # worker-sdxl's rule: a hand-off point means the ensemble, none means refine the base image.
    return "expert_ensemble_refiner" if request["high_noise_frac"] is not None else "base_image_refiner"


def _check_step_counts(request: dict, task: str, refine: str) -> None:
    """Strength x steps must leave at least one step, or diffusers fails with a cryptic error."""
    if task in ("img2img", "inpaint") and int(request["num_inference_steps"] * request["prompt_strength"]) < 1:
        raise InputError(
            f"'prompt_strength' {request['prompt_strength']} x 'num_inference_steps' "
            f"{request['num_inference_steps']} leaves no step to run; raise either."
        )
    if (task == "refine" or refine == "base_image_refiner") and int(
        request["refiner_inference_steps"] * request["strength"]
    ) < 1:
        raise InputError(
            f"'strength' {request['strength']} x 'refiner_inference_steps' "
            f"{request['refiner_inference_steps']} leaves the refiner no step to run; raise either."
        )
