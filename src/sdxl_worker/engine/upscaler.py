"""The model upscaler of the high-resolution pass (``hires.upscaler: model``).

UPSCALER_MODEL names a super-resolution model of the ESRGAN family (ESRGAN, Real-ESRGAN, BSRGAN
and the model sites' 2x and 4x files trained on them), read by spandrel, which recognises the
architecture and its size from the weights alone. The file is ``.safetensors``, or ``.pth`` read
by spandrel's restricted unpickler (tensors and dictionaries only, never code). It is loaded once
at start-up and runs on the models' device, in their dtype where the model supports it (float32
otherwise). Large images are upscaled in tiles of TILE input pixels, each seen with MARGIN pixels
of its neighbours around it, so memory stays bounded (a 4x model makes a 1600-pixel image 6400
pixels a side). The model's output is resized with Lanczos to the pass's size when its scale
differs from ``hires.scale`` (a 4x model for a 2x pass).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sdxl_worker.config import DEFAULT_UPSCALER, DEFAULT_UPSCALER_WEIGHT, UPSCALER_TYPES
from sdxl_worker.errors import StartupError

TILE = 512  # input pixels a side per tile
MARGIN = 32  # pixels of context around each tile, cut off its output: no seams where tiles meet
SAMPLE = 64  # pixels a side of the blank image the model's operations are counted on at start-up


class Upscaler:
    """``upscaler(image, size)`` -> the image upscaled by the model, then resized to ``size``."""

    def __init__(self, descriptor, device: str, dtype):
        self.descriptor, self.device, self.dtype = descriptor, device, dtype
        self.flops_per_pixel = self._count_flops()  # what the work budget counts (engine/work.py)

    @property
    def scale(self) -> int:
        return self.descriptor.scale

    def __call__(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        import torch

        array = np.array(image.convert("RGB"))  # a writable copy, as torch.from_numpy wants
        pixels = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().div(255)
        upscaled = self._tiled(pixels.to(self.device, self.dtype))
        out = upscaled[0].float().mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        picture = Image.fromarray(out)
        return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

    def _count_flops(self) -> float:
        """The model's floating-point operations per input pixel, counted by torch on a small blank image."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.descriptor(torch.zeros(1, 3, SAMPLE, SAMPLE, device=self.device, dtype=self.dtype))
        return counter.get_total_flops() / SAMPLE**2

    def _tiled(self, pixels):
        """The model over ``pixels`` (1, 3, h, w in 0-1), tile by tile where the model allows tiling."""
        from spandrel import ModelTiling

        height, width = pixels.shape[-2:]
        model, scale = self.descriptor, self.descriptor.scale
        if (height <= TILE and width <= TILE) or model.tiling != ModelTiling.SUPPORTED:
            return model(pixels)
        out = pixels.new_zeros((1, model.output_channels, height * scale, width * scale))
        for top in range(0, height, TILE):
            for left in range(0, width, TILE):
                bottom, right = min(top + TILE, height), min(left + TILE, width)
                above, before = max(top - MARGIN, 0), max(left - MARGIN, 0)  # the tile with its context
                piece = model(pixels[..., above:min(bottom + MARGIN, height), before:min(right + MARGIN, width)])
                out[..., top * scale:bottom * scale, left * scale:right * scale] = piece[
                    ..., (top - above) * scale:(bottom - above) * scale, (left - before) * scale:(right - before) * scale]
        return out


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
    try:
        descriptor = spandrel.ModelLoader("cpu").load_from_file(path)
    except Exception as error:  # whatever the file or spandrel raises, the start stops in one sentence
        raise _unreadable(source, weight, _first_line(error)) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR" \
            or descriptor.scale < 2 or (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise StartupError(
            f"UPSCALER_MODEL={source!r} is a {descriptor.scale}x {descriptor.purpose} model "
            f"({descriptor.architecture.name}), not an upscaler of RGB images by 2x or more; use an ESRGAN-family "
            f"2x or 4x model (e.g. {_example()}).")
    import torch

    supported = {torch.float16: descriptor.supports_half, torch.bfloat16: descriptor.supports_bfloat16}
    run_as = dtype if supported.get(dtype, True) else torch.float32
    descriptor.to(device).to(run_as).eval()
    return Upscaler(descriptor, device, run_as)


def _weight_file(source: str, weight: str, resolve) -> str:
    """The weight file on disk: ``source`` itself, ``weight`` inside a folder or a baked hub id, or
    ``weight`` fetched from the hub (which HF_HUB_OFFLINE forbids, as for every model)."""
    if source.lower().endswith(UPSCALER_TYPES):
        return str(Path(source).expanduser())
    if not weight.lower().endswith(UPSCALER_TYPES):
        raise StartupError(f"UPSCALER_WEIGHT={weight!r} is not a .safetensors or .pth file; name the upscaler's "
                           f"weight file inside UPSCALER_MODEL (e.g. {_example()}).")
    folder = Path(resolve(source, ""))
    if folder.is_dir():
        if not (folder / weight).is_file():
            raise _unreadable(source, weight, f"no file {weight!r} in it")
        return str(folder / weight)
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(source, weight)
    except Exception as error:  # not on the hub, or offline and not baked
        raise _unreadable(source, weight, _first_line(error)) from None


def _unreadable(source: str, weight: str, reason: str) -> StartupError:
    what = f"UPSCALER_MODEL={source!r}" + ("" if source.lower().endswith(UPSCALER_TYPES) else
                                          f" with UPSCALER_WEIGHT={weight!r}")
    return StartupError(f"Could not load {what}: {reason.rstrip('.')}. Bake it into the image (--build-arg "
                        f"UPSCALER_MODEL), point UPSCALER_MODEL at a .safetensors or .pth file, or leave it unset.")


def _first_line(error: Exception) -> str:
    return ((str(error).strip().splitlines() or [type(error).__name__])[0])[:200]


def _example() -> str:
    return f"UPSCALER_MODEL={DEFAULT_UPSCALER} with UPSCALER_WEIGHT={DEFAULT_UPSCALER_WEIGHT}"
