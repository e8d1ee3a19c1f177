"""LoRAs per job: find each file, load it onto the UNets and text encoders it fits, unload after.

``applied(models, loras)`` is a context manager around one job's run. Every LoRA is loaded
with diffusers' LoRA API (peft) under a job-local adapter name and removed in ``finally``,
so the next job runs on the untouched weights and gives the pixels it would have given
before any LoRA was used. URLs are downloaded through src/fetch.py (its limits apply) into
a disk cache keyed by a hash of the URL, capped in size, least recently used evicted first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from src.errors import InputError
from src.fetch import fetch_into

log = logging.getLogger(__name__)

MAX_LORAS = 4  # per job; each one adds its own low-rank matmuls to every step
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# How diffusers (and peft) name the two halves of one LoRA layer: prefix.<module path>.<marker>
_DOWN_MARKERS = (".lora.down.weight", ".lora_A.weight", ".lora_linear_layer.down.weight")
_UP_MARKERS = (".lora.up.weight", ".lora_B.weight", ".lora_linear_layer.up.weight")


def max_file_bytes() -> int:
    return int(float(os.environ.get("LORA_MAX_MB", 1024)) * 1024 * 1024)


def cache_dir() -> Path:
    root = os.environ.get("LORA_CACHE_DIR") or Path.home() / ".cache" / "sdxl-worker" / "loras"
    return Path(root)


def cache_cap_bytes() -> int:
    return int(float(os.environ.get("LORA_CACHE_MB", 4096)) * 1024 * 1024)


@contextmanager
def applied(models, loras: list[dict] | None):
    """The job's LoRAs loaded and scaled for the duration of the block; none left after it."""
    if not loras:
        yield
        return
    started = time.perf_counter()
    # LoRA layers wrap to_q/to_k/to_v; fused attention reads to_qkv and would ignore them.
    refused = _unfuse_qkv(models)
    try:
        placed = {}  # adapter name -> (scale, the models it went into)
        for index, lora in enumerate(loras):
            name = f"job_lora_{index}"
            placed[name] = (lora.get("scale", 1.0), _load(models, lora, index, name))
        _set_scales(placed)
        log.info("LoRAs loaded in %.2fs: %s", time.perf_counter() - started,
                 ", ".join(f"{_label(lora)} x{lora.get('scale', 1.0)}" for lora in loras))
        yield
    finally:
        _unload(models)
        for unet in refused:
            unet.fuse_qkv_projections()


def _unfuse_qkv(models) -> list:
    """Undo FUSED_QKV on the UNets for this job; the ones to fuse again afterwards."""
    unets = [pipe.unet for pipe in (models.base, models.refiner) if pipe is not None]
    fused = [unet for unet in dict.fromkeys(unets)
             if any("Fused" in type(processor).__name__ for processor in unet.attn_processors.values())]
    for unet in fused:
        # A copy: diffusers' set_attn_processor empties the dict it is given, and we fuse again later.
        unet.set_attn_processor(dict(unet.original_attn_processors))
    return fused


# --- finding the file ---


def lora_dir() -> Path | None:
    """LORA_DIR: the one folder local LoRA paths may point into (unset: no local paths)."""
    root = os.environ.get("LORA_DIR")
    return Path(root).resolve() if root else None


def _inside_lora_dir(path: str, index: int, label: str) -> Path | None:
    """A local path, resolved inside LORA_DIR; None when the path does not look local.

    Jobs come from anyone holding the endpoint key: a path must not reach the rest of the disk.
    """
    looks_local = path.startswith(("/", ".", "~")) or not _HUB_ID.match(path)
    root = lora_dir()
    if root is None:
        if looks_local:
            raise InputError(f"LoRA {label}: local paths in 'loras[{index}].path' need LORA_DIR set on the worker.")
        return None
    local = (root / path).resolve() if not path.startswith("/") else Path(path).resolve()
    if not local.is_relative_to(root):
        if looks_local:
            raise _outside_lora_dir(label, f"loras[{index}].path")
        return None
    return local


def _outside_lora_dir(label: str, field: str) -> InputError:
    # The same words whether or not the file exists: a refusal must not tell what is on the disk.
    return InputError(f"LoRA {label}: '{field}' must lead to a file inside LORA_DIR, the worker's LoRA folder.")


def _check_weight_name(weight_name: str | None, index: int, label: str) -> None:
    """A weight_name is a .safetensors file name inside the LoRA's folder: no folders, no way out."""
    if weight_name is None:
        return
    if (not weight_name or "/" in weight_name or "\\" in weight_name or weight_name.startswith(".")
            or "\0" in weight_name):
        raise InputError(
            f"LoRA {label}: 'loras[{index}].weight_name' must be a file name inside the LoRA's folder "
            "(no '/', no leading '.'), for a folder inside LORA_DIR or a hub repo."
        )
    if not weight_name.endswith(".safetensors"):
        raise InputError(f"LoRA {label}: 'loras[{index}].weight_name' must name a .safetensors file.")


def resolve(lora: dict, index: int) -> Path:
    """The local .safetensors file a LoRA entry names, downloading it if it is a URL."""
    path, weight_name = lora["path"].strip(), lora.get("weight_name")
    label = _label(lora)
    _check_weight_name(weight_name, index, label)
    if path.lower().startswith(("http://", "https://")):
        return _cached_download(path, index, label)
    local = _inside_lora_dir(path, index, label)
    if local is not None and local.exists():
        file = (local / (weight_name or DEFAULT_WEIGHT_NAME)).resolve() if local.is_dir() else local
        if not file.is_relative_to(lora_dir()):  # a link inside the folder that points out of it
            raise _outside_lora_dir(label, f"loras[{index}].{'weight_name' if weight_name else 'path'}")
        if not file.is_file():
            raise InputError(f"LoRA {label}: the folder in 'loras[{index}].path' has no file {file.name!r}.")
        if file.suffix != ".safetensors":  # pickled weights can run code when loaded
            raise InputError(f"LoRA {label}: 'loras[{index}].path' must be a .safetensors file.")
        return file
    if path.startswith(("/", ".", "~")) or not _HUB_ID.match(path):
        raise InputError(
            f"LoRA {label}: 'loras[{index}].path' is not an https URL, a hub id (owner/name) or an existing local path."
        )
    return _from_hub(path, weight_name or DEFAULT_WEIGHT_NAME, index, label)


def _from_hub(repo_id: str, weight_name: str, index: int, label: str) -> Path:
    """A file of a hub repo: from the local hub cache, downloaded only where the hub is reachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        try:
            return Path(hf_hub_download(repo_id, weight_name, local_files_only=True))
        except Exception:
            if offline:
                raise
        size = get_hf_file_metadata(hf_hub_url(repo_id, weight_name)).size or 0
        if size > max_file_bytes():
            raise InputError(f"LoRA {label}: 'loras[{index}]' is larger than {max_file_bytes() // 2**20} MB.")
        return Path(hf_hub_download(repo_id, weight_name))
    except InputError:
        raise
    except Exception as error:
        where = "in this worker's hub cache" if offline else "on the hub"
        raise InputError(
            f"LoRA {label}: {weight_name!r} of hub repo {repo_id!r} was not found {where} "
            f"({type(error).__name__}); give 'loras[{index}].weight_name' or an https URL."
        ) from None


def _cached_download(url: str, index: int, label: str) -> Path:
    folder = cache_dir()
    file = folder / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".safetensors")
    if file.is_file():
        os.utime(file)  # most recently used: the last to be evicted
        log.info("LoRA %s from the cache", label)
        return file
    started = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    # Streamed to a file beside its final place (a LoRA can be a gigabyte): memory holds one
    # network read at a time, and the cache gets the file only once it is whole and checked.
    handle, staging = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            try:
                fetch_into(url, f"loras[{index}].path", out.write, max_bytes=max_file_bytes())
            except InputError as error:
                raise InputError(f"LoRA {label}: {error}") from None
        _check_safetensors(staging, index, label)  # never cache a file that cannot load
        os.replace(staging, file)  # atomic: a reader sees the whole file or none
    finally:
        Path(staging).unlink(missing_ok=True)
    log.info("LoRA %s downloaded: %.1f MB in %.2fs", label, file.stat().st_size / 2**20, time.perf_counter() - started)
    evict(folder, cache_cap_bytes(), keep=file)
    return file


def evict(folder: Path, cap_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used files until the folder holds at most ``cap_bytes``."""
    files = sorted((f for f in folder.glob("*.safetensors") if f.is_file()), key=lambda f: f.stat().st_mtime)
    total = sum(f.stat().st_size for f in files)
    removed = []
    for file in files:
        if total <= cap_bytes:
            break
        if keep is not None and file == keep:
            continue
        total -= file.stat().st_size
        file.unlink(missing_ok=True)
        removed.append(file)
    if removed:
        log.info("LoRA cache: evicted %d file(s) to stay under %d MB", len(removed), cap_bytes // 2**20)
    return removed


def _check_safetensors(path: str, index: int, label: str) -> None:
    """The header parses and matches the file's length: a safetensors file, not a pickle or a page."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            file.keys()
    except Exception:
        raise InputError(
            f"LoRA {label}: 'loras[{index}].path' is not a valid .safetensors file (other formats are refused)."
        ) from None


# --- loading ---


def _load(models, lora: dict, index: int, name: str) -> list:
    """Load one LoRA under ``name`` onto every component it fits; the components it went into."""
    file = resolve(lora, index)
    label = _label(lora)
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
    unets = [pipe for pipe in (base, models.refiner) if pipe is not None and unet_part and _fits(pipe.unet, unet_part)]
    encoders_fit = all(_fits(getattr(base, prefix), part) for prefix, part in text_parts.items() if part)
    known = _layer_keys(unet_part) + sum(_layer_keys(part) for part in text_parts.values())
    if known == 0 or (unet_part and not unets) or not encoders_fit or known != _layer_keys(state):
        raise InputError(
            f"LoRA {label} in 'loras[{index}]' does not fit this worker's SDXL model "
            "(its layers or sizes differ: a LoRA for another model?)."
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


def _layer_keys(state: dict) -> int:
    return sum(1 for key in state if key.endswith(_DOWN_MARKERS + _UP_MARKERS))


def _fits(model, part: dict) -> bool:
    """Every LoRA layer of ``part`` names a layer of ``model`` with matching input and output sizes."""
    for key, tensor in part.items():
        for marker, is_down in [(m, True) for m in _DOWN_MARKERS] + [(m, False) for m in _UP_MARKERS]:
            if key.endswith(marker):
                break
        else:
            continue  # alphas and the like carry no shape to check
        try:
            layer = model.get_submodule(key[: -len(marker)])
        except AttributeError:
            return False
        size_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
        size_out = getattr(layer, "out_features", getattr(layer, "out_channels", None))
        if size_in is None or tensor.ndim < 2:
            return False
        if (is_down and tensor.shape[1] != size_in) or (not is_down and tensor.shape[0] != size_out):
            return False
    return True


def _label(lora: dict) -> str:
    """A short name for the LoRA in messages: its file name, never a whole signed URL."""
    path = lora["path"].split("?")[0].rstrip("/")
    name = path.rsplit("/", 1)[-1] or path
    return repr(name if len(name) <= 60 else name[:57] + "...")
