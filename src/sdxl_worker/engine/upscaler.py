"""The model upscaler of the high-resolution pass (``hires.upscaler: model``).

UPSCALER_MODEL names a 2x or 4x super-resolution model of the ESRGAN family (ESRGAN, Real-ESRGAN,
BSRGAN and the model sites' files trained on them), which spandrel builds from the weights alone:
it recognises the architecture, its size and its scale from the names and shapes of the tensors.
The file is ``.safetensors``, or a ``.pth`` read by torch's weights-only unpickler (tensors,
dictionaries and numbers; a file that would run code, TorchScript included, is refused). It is
loaded once at start-up and runs on the models' device, in their dtype where the model supports
it (float32 otherwise). Images are upscaled in tiles of TILE input pixels, each seen with MARGIN
pixels of its neighbours around it, and each tile's result goes to the host as 8-bit pixels at
once, so the device holds one tile's activations whatever the image (a 4x model makes a
1600-pixel image 6400 pixels a side). The stop check runs between tiles. The model's output is
resized with Lanczos to the pass's size when its scale differs from ``hires.scale``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image

from sdxl_worker.config import DEFAULT_UPSCALER, DEFAULT_UPSCALER_WEIGHT, UPSCALER_TYPES, upscaler_weight_refusal
from sdxl_worker.errors import StartupError

TILE = 512  # input pixels a side per tile: a multiple of every size an ESRGAN-family model asks for (1 or 4)
MARGIN = 32  # pixels of context around each tile, cut off its output: no seams where tiles meet
SAMPLE = 64  # pixels a side of the blank image the model's operations are counted on at start-up
FAMILY = "ESRGAN"  # spandrel's id of the architecture it runs (ESRGAN, Real-ESRGAN, BSRGAN layouts)
SCALES = (2, 4)
log = logging.getLogger(__name__)


def pixels_seen(width: int, height: int) -> int:
    """The input pixels the model works on for a ``width`` x ``height`` image: each tile with the
    context its neighbours lend it (what the work budget counts, engine/work.py)."""
    def seen(side: int) -> int:
        return side + 2 * min(MARGIN, TILE) * (math.ceil(side / TILE) - 1)

    return seen(width) * seen(height)


class Upscaler:
    """``upscaler(image, size)`` -> the image upscaled by the model, then resized to ``size``."""

    def __init__(self, descriptor, device: str, dtype):
        self.descriptor, self.device, self.dtype = descriptor, device, dtype
        self.flops_per_pixel = self._count_flops()  # what the work budget counts (engine/work.py)

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    def __call__(self, image: Image.Image, size: tuple[int, int],
                 between: Callable[[], None] | None = None) -> Image.Image:
        """``between()`` runs before each tile: it raises to stop the job (a cancel, the job's time limit)."""
        import torch

        array = np.array(image.convert("RGB"))  # a writable copy, as torch.from_numpy wants
        pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div(255)
        picture = Image.fromarray(self._tiles(pixels.to(self.device, self.dtype), between))
        return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

    def _tiles(self, pixels, between) -> np.ndarray:
        """The model over ``pixels`` (1, 3, h, w in 0-1), tile by tile, as 8-bit (h x scale, w x scale, 3)."""
        height, width = pixels.shape[-2:]
        scale = self.scale
        out = np.empty((height * scale, width * scale, 3), np.uint8)
        for top in range(0, height, TILE):
            for left in range(0, width, TILE):
                if between is not None:
                    between()
                bottom, right = min(top + TILE, height), min(left + TILE, width)
                above, before = max(top - MARGIN, 0), max(left - MARGIN, 0)  # the tile with its context
                piece = self.descriptor(pixels[..., above:min(bottom + MARGIN, height), before:min(right + MARGIN, width)])
                piece = piece[..., (top - above) * scale:(bottom - above) * scale,
                              (left - before) * scale:(right - before) * scale]
                out[top * scale:bottom * scale, left * scale:right * scale] = _eight_bits(piece)
        return out

    def _count_flops(self) -> float:
        """The model's floating-point operations per input pixel, counted by torch on a small blank image."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.descriptor(torch.zeros(1, 3, SAMPLE, SAMPLE, device=self.device, dtype=self.dtype))
        return counter.get_total_flops() / SAMPLE**2


def _eight_bits(piece) -> np.ndarray:
    import torch

    return piece[0].float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def load_upscaler(source: str | None, weight: str, device: str, dtype, resolve) -> Upscaler | None:
    """UPSCALER_MODEL's upscaler, or None when it is unset.

    Args:
        source: UPSCALER_MODEL: a weight file, or a hub id or folder holding ``weight``.
        weight: UPSCALER_WEIGHT, the file's path inside ``source``.
        device, dtype: the models' (torch dtype); float32 where the model cannot run in ``dtype``.
        resolve: the models' name-to-folder rule (a baked hub id becomes its snapshot folder).
    """
    if source is None:
        return None
    path = _weight_file(source, weight, resolve)
    try:
        import spandrel
    except ImportError as error:
        raise StartupError(f"UPSCALER_MODEL needs the spandrel library, which cannot be imported here ({error}); "
                           "install requirements-upscaler.txt with torchvision built for this torch (the Docker "
                           "image has both), or leave UPSCALER_MODEL unset.") from None
    named = f"UPSCALER_MODEL={source!r}"
    try:
        weights = _read(path)
    except OSError as error:
        raise _unreadable(source, weight, _reason(error)) from None
    except Exception as error:  # a pickle the weights-only reader refuses, a broken file
        raise StartupError(f"{named} cannot be read as weights ({_reason(error)}); use an ESRGAN-family 2x or 4x "
                           f".safetensors or .pth file (e.g. {_example()}).") from None
    try:
        descriptor = spandrel.ModelLoader("cpu").load_from_state_dict(spandrel.canonicalize_state_dict(weights))
    except Exception as error:  # whatever spandrel raises on weights it cannot place
        raise StartupError(f"{named} is not a model spandrel can build ({_reason(error)}); use an ESRGAN-family 2x "
                           f"or 4x file (e.g. {_example()}).") from None
    scale, family = descriptor.scale, descriptor.architecture.id
    channels = (descriptor.input_channels, descriptor.output_channels)
    if family != FAMILY or scale not in SCALES or descriptor.purpose != "SR" or channels != (3, 3):
        images = "" if channels == (3, 3) else f" of {channels[0]}-channel images"
        raise StartupError(
            f"{named} is a {scale}x {descriptor.purpose} model ({descriptor.architecture.name}){images}; the hires pass runs "
            f"ESRGAN-family upscalers of RGB images by 2x or 4x (ESRGAN, Real-ESRGAN, BSRGAN files); use one "
            f"(e.g. {_example()}).")
    import torch

    supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    run_as = dtype if supported.get(dtype, True) else torch.float32
    descriptor.to(device).to(run_as).eval()
    upscaler = Upscaler(descriptor, device, run_as)
    log.info("Upscaler %s: %s %dx (%s), %s, %.1f M operations a pixel", source, descriptor.architecture.name, scale,
             " ".join(descriptor.tags), str(run_as).replace("torch.", ""), upscaler.flops_per_pixel / 1e6)
    return upscaler


def _read(path: str) -> dict:
    """The file's tensors: safetensors, or a pickle through torch's weights-only unpickler, which
    refuses every global but tensors' own (and TorchScript archives) before anything runs."""
    import torch

    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _weight_file(source: str, weight: str, resolve) -> str:
    """The weight file on disk: ``source`` itself, ``weight`` inside a folder or a baked hub id, or
    ``weight`` fetched from the hub (which HF_HUB_OFFLINE forbids, as for every model)."""
    local = Path(source).expanduser()
    if source.lower().endswith(UPSCALER_TYPES):
        return str(local)
    if local.is_file():
        raise StartupError(f"UPSCALER_MODEL={source!r} is a file, but not a .safetensors or .pth one; convert it, "
                           f"or name a folder or hub id holding one with UPSCALER_WEIGHT.")
    refusal = upscaler_weight_refusal(weight)
    if refusal:
        raise StartupError(f"{refusal}; name the upscaler's weight file inside UPSCALER_MODEL (e.g. {_example()}).")
    if local.is_dir():  # a folder of the user's: the file must be there
        if not (local / weight).is_file():
            raise _unreadable(source, weight, f"no file {weight!r} in it")
        return str(local / weight)
    snapshot = resolve(source, "")  # a hub id baked into the image, or in RunPod's cache: its folder
    baked = Path(snapshot) / PurePosixPath(weight)
    if snapshot != source and baked.is_file():
        return str(baked)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, weight)
    except Exception as error:  # not on the hub, or offline and not baked
        raise _unreadable(source, weight, _reason(error)) from None


def _unreadable(source: str, weight: str, reason: str) -> StartupError:
    what = f"UPSCALER_MODEL={source!r}" + ("" if source.lower().endswith(UPSCALER_TYPES) else
                                          f" with UPSCALER_WEIGHT={weight!r}")
    return StartupError(f"Could not load {what}: {reason.rstrip('.')}. Bake it into the image (--build-arg "
                        f"UPSCALER_MODEL), point UPSCALER_MODEL at a .safetensors or .pth file, or leave it unset.")


def _reason(error: Exception) -> str:
    """The error in a few words: its kind, and the line that says what was wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    telling = [line for line in lines if "Unsupported global" in line or "TorchScript" in line]
    line = (telling or lines or [""])[0].split(". ")[0][:200].rstrip(".")  # its first sentence: not torch's advice
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def _example() -> str:
    return f"UPSCALER_MODEL={DEFAULT_UPSCALER} with UPSCALER_WEIGHT={DEFAULT_UPSCALER_WEIGHT}"
