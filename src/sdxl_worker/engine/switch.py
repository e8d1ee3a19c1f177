"""A choice of checkpoint per job: BASE_MODELS by name, MODELS_KEPT of them loaded at once.

``use_model(models, name)`` makes ``name`` the checkpoint the base pipelines run. One already
kept is put back in place; another is loaded the way start-up loads the first one, after the
least recently used checkpoints beyond MODELS_KEPT are dropped and their memory freed (so a
worker with MODELS_KEPT=1 never holds two). What every checkpoint shares stays loaded once: the
refiner (re-assembled around the new base's text_encoder_2 and VAE), VAE_MODEL, the preview
decoder, and any component whose weights equal a kept checkpoint's (a fine-tune that left the
text encoders alone shares them). The caller holds the models for the job (one job at a time).
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field

from sdxl_worker.engine.models import (
    ModelUnavailable,
    _Loader,
    base_pipelines,
    free_memory,
    import_libraries,
    load_base,
    refiner_pipelines,
)
from sdxl_worker.engine.speed import speed_up
from sdxl_worker.errors import InputError

log = logging.getLogger(__name__)

SHAREABLE = ("vae", "text_encoder", "text_encoder_2", "unet")
# A switch that loads a checkpoint, in units of work (sdxl_worker.engine.work): reading and placing
# about 7 GB of weights, some 5-10 s on a GPU host, at about 30 ms a unit.
SWITCH_WORK = 300


@dataclass
class Checkpoint:
    """One checkpoint's own pipelines, kept loaded while another is in use."""

    base: object
    img2img: object
    inpaint: object
    scheduler_config: dict
    preset_unets: dict = field(default_factory=dict)


def model_sources(settings) -> dict[str, str]:
    """Name -> source of every checkpoint the worker serves; the first is what BASE_MODEL loaded."""
    sources = dict(settings.choices)
    sources[settings.choices[0][0]] = settings.base
    return sources


def model_names(models) -> tuple[str, ...]:
    return tuple(model_sources(models.settings)) if models.settings else (models.name,)


def switch_work(models, name: str | None) -> float:
    """The work of putting ``name`` in place for a job: SWITCH_WORK when it must be loaded, else 0."""
    name = name or model_names(models)[0]
    return 0 if name == models.name or name in models.kept else SWITCH_WORK


def broken_model_sentence(names, broken, name: str) -> str:
    """Why a job naming checkpoint ``name``, which failed to load before, is refused (it is not
    tried again); ``names``: BASE_MODELS' names, ``broken``: those that failed."""
    others = [other for other in names if other not in broken]
    return (f"'model' {name!r} could not be loaded on this worker (its log says why); use another of "
            f"{', '.join(others)}, or fix BASE_MODELS.")


def use_model(models, name: str | None) -> int | None:
    """Make checkpoint ``name`` (None: the first) the one in use; milliseconds spent, None when it was."""
    name = name or model_names(models)[0]
    if name == models.name:
        return None
    started = time.perf_counter()
    models.kept[models.name] = Checkpoint(models.base, models.img2img, models.inpaint,
                                          models.scheduler_configs["base"], models.preset_unets)
    chosen = models.kept.pop(name, None)
    if chosen is None:
        previous = models.name
        _make_room(models, models.settings.kept - 1)  # before loading: the evicted memory is reused
        try:
            chosen = _load(models, name)
        except Exception as error:
            failure = error
        else:
            failure = None
        if failure is not None:
            traceback.clear_frames(failure.__traceback__)  # its frames held the half-loaded tensors
            free_memory()  # what the half-loaded checkpoint held, before the previous one loads again
            if previous not in models.kept:  # dropped for room: the worker must still have a model
                _put_in_place(models, previous, _load(models, previous))
            error = failure
            if not isinstance(error, ModelUnavailable):
                raise error
            log.warning("Model %s could not be loaded: %s (jobs naming it are refused from now on)", name, error)
            models.broken[name] = str(error)
            raise InputError(broken_model_sentence(model_names(models), models.broken, name)) from None
    _put_in_place(models, name, chosen)
    spent = round((time.perf_counter() - started) * 1000)
    log.info("Model %s in use after %d ms (%d kept loaded)", name, spent, len(models.kept) + 1)
    return spent


def _make_room(models, room: int) -> None:
    """Drop the least recently used checkpoints until at most ``room`` are kept besides the new one."""
    dropped = []
    while len(models.kept) > max(room, 0):
        dropped.append(next(iter(models.kept)))
        del models.kept[dropped[-1]]  # dicts keep insertion order: the first is the least recently used
    if models.name in dropped:
        _let_go_of_the_one_in_use(models)
    if dropped:
        log.info("Model(s) %s unloaded (MODELS_KEPT=%d)", ", ".join(dropped), models.settings.kept)
        free_memory()


class _Unloaded:
    """Stands in for the base pipelines while the next checkpoint loads: what a job reads before it
    waits for the models (the tokenizers, to check its prompts), and no weights."""

    def __init__(self, base):
        self.tokenizer, self.tokenizer_2, self.scheduler = base.tokenizer, base.tokenizer_2, base.scheduler


def _let_go_of_the_one_in_use(models) -> None:
    """Drop every reference to the checkpoint in use, so its memory is freed before the next loads:
    the refiner borrowed its text_encoder_2 and VAE (it gets the next checkpoint's)."""
    stand_in = _Unloaded(models.base)
    models.base = models.img2img = models.inpaint = stand_in
    models.preset_unets = {}
    for pipe in (models.refiner, models.refiner_inpaint):
        if pipe is not None:
            pipe.register_modules(text_encoder_2=None, vae=None)


def _load(models, name: str) -> Checkpoint:
    lib, settings = import_libraries(), models.settings
    on_gpu = models.device.startswith("cuda")
    loader = _Loader(models.dtype, None if settings.cpu_offload and on_gpu else models.device)
    loaded = [pipe for pipe in [models.base] + [kept.base for kept in models.kept.values()] if hasattr(pipe, "vae")]
    shared_vae = models.shared_vae if settings.vae else None  # VAE_MODEL serves every checkpoint, loaded once
    base = load_base(lib, settings, model_sources(settings)[name], loader, shared_vae)
    fresh = _share_identical(base, loaded)
    if models.speedups is not None:
        speed_up([base.unet] if "unet" in fresh else [],
                 [base.vae] if "vae" in fresh and shared_vae is None else [], models.speedups)
    if settings.cpu_offload and on_gpu:
        base.enable_model_cpu_offload()
    img2img, inpaint = base_pipelines(lib, base)
    return Checkpoint(base, img2img, inpaint, dict(base.scheduler.config))


def _share_identical(base, others: list) -> list[str]:
    """Swap each component of ``base`` whose weights equal one already loaded for that one; the
    components that stayed new."""
    fresh = []
    for part in SHAREABLE:
        mine = getattr(base, part)
        twin = next((getattr(other, part) for other in others if _same_weights(mine, getattr(other, part))), None)
        if twin is None:
            fresh.append(part)
        elif twin is not mine:
            base.register_modules(**{part: twin})
            log.info("  %s: the same weights as a loaded checkpoint's, shared", part)
    return fresh


def _same_weights(mine, theirs) -> bool:
    import torch

    if mine is theirs:
        return True
    if mine is None or theirs is None or type(mine) is not type(theirs):
        return False
    ours, other = mine.state_dict(), theirs.state_dict()  # a fused QKV adds keys to theirs, never changes these
    return all(key in other and other[key].shape == tensor.shape and torch.equal(other[key].to(tensor.device), tensor)
               for key, tensor in ours.items())


def _put_in_place(models, name: str, chosen: Checkpoint) -> None:
    models.name, models.base, models.img2img, models.inpaint = name, chosen.base, chosen.img2img, chosen.inpaint
    models.scheduler_configs["base"] = chosen.scheduler_config
    models.preset_unets = chosen.preset_unets
    refiner = models.refiner
    if refiner is not None and (getattr(refiner, "text_encoder_2", None) is not chosen.base.text_encoder_2
                                or refiner.vae is not chosen.base.vae):
        models.refiner, models.refiner_inpaint = refiner_pipelines(
            import_libraries(), refiner, text_encoder_2=chosen.base.text_encoder_2, vae=chosen.base.vae)
