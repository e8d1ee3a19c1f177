"""SDXL's invisible watermark, on request (``apply_watermark``), on the final images.

The pipelines are loaded with ``add_watermarker=False`` so a job decides. This embeds the same
48 bits with the same DWT-DCT method as diffusers' StableDiffusionXLWatermarker (Stability's
message), so the usual decoders (``imwatermark.WatermarkDecoder("bits", 48)``) find it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MIN_PIXELS = 256 * 256  # invisible-watermark refuses smaller images


def apply_watermark(images: list[Image.Image]) -> list[Image.Image]:
    """The images with the watermark embedded; any smaller than 256x256 pixels are returned as they are."""
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", WATERMARK_BITS)
    marked = []
    for image in images:
        if image.width * image.height < MIN_PIXELS:
            marked.append(image)
            continue
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # the encoder works in BGR
        marked.append(Image.fromarray(np.ascontiguousarray(encoder.encode(bgr, "dwtDct")[:, :, ::-1])))
    return marked
