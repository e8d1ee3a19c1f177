"""The depth preprocessor: a depth map made in the worker from a control image (``preprocess: depth``).

DEPTH_MODEL names a depth-estimation model transformers loads (Depth Anything V2 Small by default
when it is set: Apache-2.0, 25 M parameters). It is loaded once at start-up and runs in float32
on the models' device. Its output is relative inverse depth (larger is nearer), scaled per image
to 0-255: near bright, far dark, as the SDXL depth ControlNets were trained on MiDaS- and
Zoe-style maps (docs/control.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


class DepthEstimator:
    """``estimator(image)`` -> the image's depth map, grey in three channels, at the image's size."""

    def __init__(self, model, processor, device: str):
        self.model, self.processor, self.device = model, processor, device

    def __call__(self, image: Image.Image) -> Image.Image:
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.no_grad():
            predicted = self.model(**inputs).predicted_depth  # (1, h, w) at the model's input size
        depth = torch.nn.functional.interpolate(predicted[:, None].float(), size=(image.height, image.width),
                                                mode="bicubic", align_corners=False)[0, 0]
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2))


def load_depth(source: str | None, device: str, resolve) -> DepthEstimator | None:
    """DEPTH_MODEL's estimator, or None when it is unset (``resolve``: the models' name-to-folder rule)."""
    if source is None:
        return None
    from transformers import AutoModelForDepthEstimation

    from sdxl_worker.engine import image_processors

    where = resolve(source, "")
    model, processor = loaded("DEPTH_MODEL", source, lambda: (AutoModelForDepthEstimation.from_pretrained(where),
                                                               image_processors.from_pretrained(where)))
    return DepthEstimator(model.to(device).eval().requires_grad_(False), processor, device)


def loaded(variable: str, source: str, load):
    """``load()``, a preprocessor's model and processor; one sentence naming ``variable`` if they
    cannot be read (StartupError: the worker stops at start-up, as for any model it cannot load)."""
    from pathlib import Path

    from sdxl_worker.errors import StartupError

    try:
        return load()
    except (OSError, ValueError) as error:
        where = "the folder" if Path(source).exists() else "the Hugging Face hub id"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise StartupError(f"Could not load {variable}={source!r} ({where}): {reason.rstrip('.')}. Bake it into the "
                           f"image (--build-arg {variable}), point {variable} at a folder, or leave it unset.") from None
