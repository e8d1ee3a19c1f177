"""The weights of the fast presets: found in the image, loaded once per checkpoint, kept.

A LoRA preset (Lightning, Hyper-SD, LCM) is fused into a copy of the checkpoint's UNet, so a
preset job swaps UNets and pays nothing per step, and every other job runs the untouched UNet
(the same pixels as before any preset job). A UNet preset (Turbo) loads its repository's UNet.
Either costs one UNet of memory per preset used (5.1 GB in fp16 at SDXL's size), paid by the
first job that asks for it (``timings.preset_load``). Weights come only from the image (the
builder's PRESETS build argument) or RunPod's model cache: never downloaded at run time.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

from sdxl_worker.engine.models import _Loader, hub_snapshot
from sdxl_worker.engine.speed import speed_up
from sdxl_worker.request.presets import PRESETS, Preset

log = logging.getLogger(__name__)


def weights_of(preset: Preset, settings) -> Path | None:
    """The preset's LoRA file or UNet folder in the model caches ``settings`` (ModelSettings) name;
    None when not baked."""
    snapshot = hub_snapshot(preset.repo, settings)
    if snapshot is None:
        return None
    path = snapshot / preset.file if preset.file else snapshot / "unet"
    return path if path.exists() else None


def available(settings) -> tuple[str, ...]:
    """The presets whose weights are in the caches ``settings`` (ModelSettings) name (checked per
    job: a network volume can change)."""
    return tuple(name for name, preset in PRESETS.items() if weights_of(preset, settings) is not None)


def unet_for(models, name: str) -> tuple[object, int | None]:
    """Preset ``name``'s UNet for the checkpoint in use, and the milliseconds loading it took (None: kept)."""
    if name in models.preset_unets:
        return models.preset_unets[name], None
    started, preset = time.perf_counter(), PRESETS[name]
    where = weights_of(preset, models.settings)
    unet = _fused_copy(models, where) if preset.file else _own_unet(models, where)
    if models.speedups is not None:
        speed_up([unet], [], models.speedups)
    models.preset_unets[name] = unet
    spent = round((time.perf_counter() - started) * 1000)
    log.info("Preset %s loaded for model %s in %d ms: %s", name, models.name, spent, preset.what)
    return unet, spent


@contextmanager
def applied(models, name: str | None):
    """Preset ``name``'s UNet in the base pipelines for the block (nothing when None); the
    milliseconds its first load took, or None, as the block's value."""
    if not name:
        yield None
        return
    unet, spent = unet_for(models, name)
    pipes = [models.base, models.img2img, models.inpaint]
    own = models.base.unet
    for pipe in pipes:
        pipe.unet = unet
    try:
        yield spent
    finally:
        for pipe in pipes:
            pipe.unet = own


def _pristine_copy(unet):
    """A new UNet with ``unet``'s weights (copied, never shared) and none of its speed-ups or hooks."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        copy = type(unet).from_config(unet.config)
    keys = copy.state_dict().keys()  # a fused QKV's extra weights are not the model's own
    state = {key: tensor.detach().clone() for key, tensor in unet.state_dict().items() if key in keys}
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)


def _fused_copy(models, lora_file: Path):
    """The checkpoint's UNet with the preset's LoRA merged into its weights, as a separate UNet."""
    base = models.base
    unet = _pristine_copy(base.unet)
    state, alphas = base.lora_state_dict(str(lora_file), unet_config=unet.config)
    base.load_lora_into_unet(state, alphas, unet=unet, adapter_name="preset", _pipeline=None)
    unet.fuse_lora(lora_scale=1.0)
    unet.unload_lora()  # the peft layers go; their product stays in the weights
    return unet


def _own_unet(models, folder: Path):
    """The preset repository's UNet, loaded as start-up loads a checkpoint's (fp16 variant, dtype, device)."""
    from diffusers import UNet2DConditionModel

    loader = _Loader(models.dtype, models.device)
    return loader.component("preset unet", UNet2DConditionModel, str(folder), "PRESETS").eval().requires_grad_(False)
