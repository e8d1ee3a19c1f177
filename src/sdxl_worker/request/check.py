"""The one check pass: everything refusable about a request, refused before any download or model work.

diffusers' ``check_inputs`` habit: each precondition in one place, each refusal one sentence
naming the field. The schema (sdxl_worker.request.schema) has checked each field on its own;
this checks what depends on several fields and on what the worker has (a refiner, storage).
What it cannot know before an image is decoded (an input image's aspect ratio) or before the
schedulers count the steps (the work budget) is checked right after, still before any model runs.
The derivations it shares with the plan (the task, the refine mode) live here too.
"""

from __future__ import annotations

from collections.abc import Iterable

from sdxl_worker.config import STORAGE_REQUIRED
from sdxl_worker.errors import InputError, quoted
from sdxl_worker.request.schema import MAX_SEED
from sdxl_worker.request.types import Request


def check(request: Request, has_refiner: bool, has_storage: bool, model_names: Iterable[str] = (),
          presets: Iterable[str] = (), controlnets: Iterable[str] = (), has_ip_adapter: bool = False) -> None:
    """InputError naming the field, for the first thing about ``request`` this worker cannot do.
    ``model_names``: the checkpoints it serves (BASE_MODELS); ``presets``: those whose weights it has;
    ``controlnets``: CONTROLNET_MODELS' names; ``has_ip_adapter``: IP_ADAPTER_MODEL is loaded."""
    model_names, controlnets = tuple(model_names), tuple(controlnets)
    for index, control in enumerate(request.controlnets):
        if control.model not in controlnets:
            have = (f"use one of {', '.join(controlnets)}" if controlnets else
                    "this worker has none: set CONTROLNET_MODELS (docs/control.md)")
            raise InputError(f"'controlnets[{index}].model' is {quoted(control.model)}, which is not a ControlNet of "
                             f"this worker; {have}.")
    if request.ip_adapter is not None and not has_ip_adapter:
        raise InputError("'ip_adapter' needs an IP-Adapter, and this worker has none; set IP_ADAPTER_MODEL "
                         "(docs/control.md), or leave 'ip_adapter' out.")
    if request.model is not None and request.model not in model_names:
        raise InputError(f"'model' is {quoted(request.model)}, which this worker does not serve; use one of "
                         f"{', '.join(model_names)} (set by BASE_MODELS), or leave it out for {model_names[0]}.")
    if request.preset is not None and request.preset not in tuple(presets):
        raise InputError(f"'preset' {quoted(request.preset)} needs weights that are not in this worker's image; build it "
                         f"with --build-arg PRESETS={request.preset} (or PRESETS=all), or leave 'preset' out.")
    if request.upload is True and not has_storage:
        raise InputError(
            f"'upload' is true but this worker has no storage configured; set {', '.join(STORAGE_REQUIRED)} "
            f"on the endpoint, or leave 'upload' unset to get the images inline."
        )
    if request.seed is not None and request.seed + request.num_images - 1 > MAX_SEED:
        raise InputError(f"'seed' must be at most {MAX_SEED - request.num_images + 1} with "
                         f"num_images={request.num_images}.")
    task = task_of(request)
    refine = _refine_mode(request, has_refiner, task, refuse=True)
    _check_step_counts(request, task, refine)


def task_of(request: Request) -> str:
    """txt2img, img2img, inpaint or refine: as asked, else from the images given."""
    return request.task or _task_from_images(request)


def refine_mode_of(request: Request, has_refiner: bool) -> str:
    """How the refiner runs: as asked, else worker-sdxl's rule (see docs/modes.md)."""
    return _refine_mode(request, has_refiner, task_of(request), refuse=False)


def _task_from_images(request: Request) -> str:
    if request.image_url is not None:
        return "refine"
    if request.image is not None:
        return "inpaint" if request.mask is not None else "img2img"
    return "txt2img"


def _refine_mode(request: Request, has_refiner: bool, task: str, refuse: bool) -> str:
    asked = request.refine
    if task == "refine":
        if not has_refiner and refuse:
            raise InputError(
                "This worker has no refiner loaded (REFINER_MODEL=none), so 'image_url' / task "
                "'refine' cannot run; send the image as 'image' for img2img instead."
            )
        return "base_image_refiner"
    if not has_refiner:
        if asked not in (None, "no_refiner") and refuse:
            raise InputError(
                f"'refine' is '{asked}' but this worker has no refiner loaded (REFINER_MODEL=none); "
                "use 'no_refiner' or leave it unset."
            )
        return "no_refiner"
    if asked is not None:
        return asked
    # worker-sdxl's rule: a hand-off point means the ensemble, none means refine the base image.
    return "expert_ensemble_refiner" if request.high_noise_frac is not None else "base_image_refiner"


def _check_step_counts(request: Request, task: str, refine: str) -> None:
    """Strength x steps must leave at least one step, or diffusers fails with a cryptic error."""
    if task in ("img2img", "inpaint") and int(request.num_inference_steps * request.prompt_strength) < 1:
        raise InputError(
            f"'prompt_strength' {request.prompt_strength} x 'num_inference_steps' "
            f"{request.num_inference_steps} leaves no step to run; raise either."
        )
    if (task == "refine" or refine == "base_image_refiner") and int(
        request.refiner_inference_steps * request.strength
    ) < 1:
        raise InputError(
            f"'strength' {request.strength} x 'refiner_inference_steps' "
            f"{request.refiner_inference_steps} leaves the refiner no step to run; raise either."
        )
