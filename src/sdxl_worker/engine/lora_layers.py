"""LoRAs on the models for one job: loaded onto the UNets and text encoders they fit, removed after.

``applied(models, files)`` is a context manager around one job's run. Every LoRA is loaded
with diffusers' LoRA API (peft) under a job-local adapter name and removed in ``finally``,
so the next job runs on the untouched weights and gives the pixels it would have given
before any LoRA was used. The files come from sdxl_worker.inputs.lora_files, already local.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sdxl_worker.errors import InputError

log = logging.getLogger(__name__)

# How diffusers' lora_state_dict names the halves of one LoRA layer, whatever the file's own naming
# (diffusers, peft, or kohya/sd-scripts, which diffusers converts): <module path><marker>.
_DOWN_MARKERS = (".lora.down.weight", ".lora_A.weight", ".lora_linear_layer.down.weight")
_UP_MARKERS = (".lora.up.weight", ".lora_B.weight", ".lora_linear_layer.up.weight")
_MAGNITUDE = ".lora_magnitude_vector"  # DoRA: one vector per layer, the layer's output size
# diffusers' kohya converter names attention layers after the old attention processors; the
# module each stands for.
_PROCESSOR_NAMES = {".processor.to_q_lora.": ".to_q.lora.", ".processor.to_k_lora.": ".to_k.lora.",
                    ".processor.to_v_lora.": ".to_v.lora.", ".processor.to_out_lora.": ".to_out.0.lora.",
                    ".self_attn.to_q_lora.": ".self_attn.q_proj.lora.",
                    ".self_attn.to_k_lora.": ".self_attn.k_proj.lora.",
                    ".self_attn.to_v_lora.": ".self_attn.v_proj.lora.",
                    ".self_attn.to_out_lora.": ".self_attn.out_proj.lora."}


@dataclass(frozen=True)
class LoraFile:
    """One LoRA of a job, its file already on local disk."""

    file: Path
    scale: float
    label: str  # a short name for messages (the file name)
    index: int  # its place in the job's 'loras' list


@contextmanager
def applied(models, loras: list[LoraFile] | None):
    """The job's LoRAs loaded and scaled for the duration of the block; none left after it.

    On a compiled UNet (COMPILE=1) the LoRA layers would change the compiled blocks' modules and
    every new scale would be a new constant: each such job would recompile. There the LoRAs are
    baked instead: their weight deltas, at the job's scales, are added to the UNet's own weights
    (into the fused projections when FUSED_QKV is on) and the overwritten values restored exactly
    after the job. Text encoders, never compiled, keep peft's layers.
    """
    if not loras:
        yield
        return
    started = time.perf_counter()
    baking = _compiled(models)
    # LoRA layers wrap to_q/to_k/to_v; fused attention reads to_qkv and would ignore them.
    refused = [] if baking else _unfuse_qkv(models)
    baked: list = []  # (tensor, index, original values) to put back
    try:
        placed = {}  # adapter name -> (scale, the models it went into)
        for lora in loras:
            name = f"job_lora_{lora.index}"
            placed[name] = (lora.scale, _load(models, lora, name))
        _set_scales(placed)
        for unet in baking:
            _bake(unet, baked)
        log.info("LoRAs loaded in %.2fs%s: %s", time.perf_counter() - started, " (baked into the compiled UNets)"
                 if baking else "", ", ".join(f"{lora.label} x{lora.scale}" for lora in loras))
        yield
    finally:
        _restore(baked)
        _unload(models)
        for unet in refused:
            unet.fuse_qkv_projections()


def _compiled(models) -> list:
    """The UNets whose blocks run compiled."""
    unets = dict.fromkeys(pipe.unet for pipe in (models.base, models.refiner) if pipe is not None)
    return [unet for unet in unets if any(getattr(module, "_compiled_call_impl", None) is not None
                                          for module in unet.modules())]


def _bake(unet, baked: list) -> None:
    """Add the deltas of ``unet``'s LoRA layers (at their scales) to its weights, then take the
    layers off: the modules are the ones the compiled code was made for. Each overwritten row is
    put in ``baked`` before it changes, so whatever happens part-way (out of memory), the caller's
    restore puts back everything that changed. One delta is alive at a time; the originals are
    kept in host memory, not beside the model on the GPU."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(path, layer) for path, layer in unet.named_modules()
              if isinstance(layer, BaseTunerLayer) and hasattr(layer, "get_delta_weight")]
    for _, layer in layers:
        if any(layer.use_dora.get(name, False) for name in layer.active_adapters):
            raise InputError("A DoRA LoRA cannot run on this worker's compiled UNet; use a plain LoRA, or "
                             "run the worker without COMPILE.")
    with torch.no_grad():
        for path, layer in layers:
            delta = sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)
            for weight, rows in _weights_in_use(unet, path, layer.get_base_layer()):
                baked.append((weight, rows, weight[rows].to("cpu", copy=True)))
                weight[rows] += delta.to(weight.dtype)
            del delta
    unet.unload_lora()  # the original modules back, the same objects


def _weights_in_use(unet, path: str, layer) -> list:
    """The weights the forward pass may read for the layer at ``path``, with their rows: the layer's
    own, and with fused projections its slice of to_qkv (self-attention) or to_kv (cross-attention).
    Both: the fused slice is what the fused processors read, the layer's own what an IP-Adapter's
    cross-attention processor reads in the same job."""
    parent_path, _, name = path.rpartition(".")
    parent = unet.get_submodule(parent_path)
    weights = [(layer.weight, slice(None))]
    if getattr(parent, "fused_projections", False) and name in ("to_q", "to_k", "to_v"):
        order = ("to_k", "to_v") if parent.is_cross_attention else ("to_q", "to_k", "to_v")
        if name in order:
            fused = parent.to_kv if parent.is_cross_attention else parent.to_qkv
            start = sum(_base(getattr(parent, other)).weight.shape[0] for other in order[:order.index(name)])
            weights.append((fused.weight, slice(start, start + layer.weight.shape[0])))
    return weights


def _base(module):
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _restore(baked: list) -> None:
    import torch

    with torch.no_grad():
        for weight, rows, original in reversed(baked):
            weight[rows] = original.to(weight.device)


def _unfuse_qkv(models) -> list:
    """Undo FUSED_QKV on the UNets for this job; the ones to fuse again afterwards."""
    unets = [pipe.unet for pipe in (models.base, models.refiner) if pipe is not None]
    fused = [unet for unet in dict.fromkeys(unets)
             if any("Fused" in type(processor).__name__ for processor in unet.attn_processors.values())]
    for unet in fused:
        # A copy: diffusers' set_attn_processor empties the dict it is given, and we fuse again later.
        unet.set_attn_processor(dict(unet.original_attn_processors))
    return fused


def _load(models, lora: LoraFile, name: str) -> list:
    """Load one LoRA under ``name`` onto every component it fits; the components it went into."""
    file, label, index = lora.file, lora.label, lora.index
    base = models.base
    try:
        state, alphas, metadata = base.lora_state_dict(
            str(file), unet_config=base.unet.config, return_lora_metadata=True
        )
    except Exception as error:
        log.info("LoRA %s unreadable: %s", label, error)
        raise InputError(
            f"LoRA {label}: 'loras[{index}].path' is not a LoRA file this worker can read (.safetensors)."
        ) from None
    unet_part = _part(state, "unet")
    text_parts = {prefix: _part(state, prefix) for prefix in ("text_encoder", "text_encoder_2")}
    stray = [key for key in state if not key.startswith(("unet.", "text_encoder.", "text_encoder_2."))]
    misfit = stray[:1] or _misfit(base.text_encoder, text_parts["text_encoder"], "text_encoder") \
        or _misfit(base.text_encoder_2, text_parts["text_encoder_2"], "text_encoder_2")
    unets = [pipe for pipe in (base, models.refiner) if pipe is not None and unet_part
             and not _misfit(pipe.unet, unet_part, "unet")]
    if not misfit and unet_part and not unets:
        misfit = _misfit(base.unet, unet_part, "unet")
    if misfit or not state:
        what = f"its layer {_layer_label(misfit[0])} {misfit[1]}" if len(misfit) > 1 else "it holds no LoRA layers"
        raise InputError(
            f"LoRA {label} in 'loras[{index}]' does not fit this worker's SDXL model: {what} "
            "(a LoRA for another model?)."
        )
    into = []
    try:
        for pipe in unets:
            pipe.load_lora_into_unet(state, alphas, unet=pipe.unet, adapter_name=name, metadata=metadata,
                                     _pipeline=pipe)
            into.append(pipe.unet)
        for prefix, part in text_parts.items():
            if part:  # text_encoder_2 is shared with the refiner: loading it once serves both
                encoder = getattr(base, prefix)
                base.load_lora_into_text_encoder(state, alphas, text_encoder=encoder, prefix=prefix,
                                                 adapter_name=name, metadata=metadata, _pipeline=base)
                into.append(encoder)
    except Exception as error:
        log.info("LoRA %s failed to load: %s", label, error)
        raise InputError(f"LoRA {label} in 'loras[{index}]' could not be loaded into this model.") from None
    return into


def _set_scales(placed: dict) -> None:
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    by_model: dict[int, tuple[object, list, list]] = {}
    for name, (scale, models) in placed.items():
        for model in models:
            entry = by_model.setdefault(id(model), (model, [], []))
            entry[1].append(name)
            entry[2].append(scale)
    for model, names, scales in by_model.values():
        if hasattr(model, "unload_lora"):  # a diffusers model (UNet)
            model.set_adapters(names, scales)
        else:  # a transformers text encoder
            set_adapters_for_text_encoder(names, model, scales)


def _unload(models) -> None:
    """Remove every LoRA layer from every pipeline; the base weights were never touched."""
    for pipe in (models.base, models.refiner):
        if pipe is not None:
            pipe.unload_lora_weights()  # unet and both text encoders (img2img shares the base's)
    if leftover_layers(models):
        log.error("LoRA layers left after unloading: %s", leftover_layers(models)[:5])


def leftover_layers(models) -> list[str]:
    """Names of any LoRA layers still in the pipelines' UNets and text encoders (none, normally)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    parts = {"unet": models.base.unet, "text_encoder": models.base.text_encoder,
             "text_encoder_2": models.base.text_encoder_2}
    if models.refiner is not None:
        parts["refiner.unet"] = models.refiner.unet
    return [f"{part}.{name}" for part, model in parts.items() if model is not None
            for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


# --- matching a LoRA's layers to a model ---


def _part(state: dict, prefix: str) -> dict:
    return {key[len(prefix) + 1:]: value for key, value in state.items() if key.startswith(prefix + ".")}


def _module_and_half(key: str) -> tuple[str, str] | None:
    """The module a LoRA key belongs to and which half it is ("down", "up", "magnitude"); None for
    a key no loader would place."""
    for alias, module in _PROCESSOR_NAMES.items():
        key = key.replace(alias, module)
    for marker in _DOWN_MARKERS:
        if key.endswith(marker):
            return key[: -len(marker)], "down"
    for marker in _UP_MARKERS:
        if key.endswith(marker):
            return key[: -len(marker)], "up"
    if key.endswith(_MAGNITUDE):
        return key[: -len(_MAGNITUDE)], "magnitude"
    return None


def _misfit(model, part: dict, prefix: str) -> tuple:
    """() when every key of ``part`` names a layer of ``model`` with matching sizes; else (the key,
    what is wrong). Every key is checked: one the loaders would not place is a misfit too."""
    for key, tensor in part.items():
        found = _module_and_half(key)
        name = f"{prefix}.{key}"
        if found is None:
            return name, "is not a LoRA weight this worker knows"
        path, half = found
        layer = _find_layer(model, path)
        if layer is None:
            return name, f"names no layer of the model's {prefix}"
        size_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        size_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        if size_in is None:
            return name, "is on a layer a LoRA cannot adapt"
        if half == "magnitude":
            if tensor.numel() != size_out:
                return name, f"has {tensor.numel()} outputs where the model's layer has {size_out}"
            continue
        if tensor.ndim < 2:
            return name, "is not a matrix"
        if half == "down" and tensor.shape[1] != size_in:
            return name, f"takes {tensor.shape[1]} inputs where the model's layer takes {size_in}"
        if half == "up" and tensor.shape[0] != size_out:
            return name, f"gives {tensor.shape[0]} outputs where the model's layer gives {size_out}"
    return ()


def _find_layer(model, path: str):
    """The module at ``path``; text encoder paths are found with or without ``text_model.`` (LoRA
    files name them as transformers 4 did, transformers 5's CLIPTextModel has no such level)."""
    for candidate in (path, path.removeprefix("text_model."), f"text_model.{path}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _layer_label(key: str) -> str:
    """A layer's name for a message: as it is when it is plainly a module path, else only its length."""
    return f"'{key}'" if len(key) <= 160 and all(c.isalnum() or c in "._" for c in key) else \
        f"(a name of {len(key)} characters)"
