"""Input images and masks: fetched (src/fetch.py), checked to be an image, decoded to RGB or grey."""

from __future__ import annotations

import io
import os

from PIL import Image, ImageOps

from src.errors import InputError
from src.fetch import fetch

MAX_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", 4096 * 4096))


def load_image(source: str, field: str) -> Image.Image:
    """The image named by ``source`` as RGB, EXIF orientation applied; InputError naming ``field``."""
    return decode_image(fetch(source, field), field)


def decode_image(data: bytes, field: str, background=(255, 255, 255)) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise InputError(f"'{field}' has {image.width}x{image.height} pixels; the limit is {MAX_PIXELS:,} pixels.")
        image.load()
    except InputError:
        raise
    except Exception:
        raise InputError(f"'{field}' is not an image this worker can read (PNG, JPEG, WebP, ...).") from None
    return to_rgb(ImageOps.exif_transpose(image), background)


def to_rgb(image: Image.Image, background=(255, 255, 255)) -> Image.Image:
    """RGB, with any transparency laid on white (not black, which is what plain convert does)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale (PNG): plain convert clips everything above 255 to white.
        image = image.convert("I").point(lambda value: value / 257).convert("L")
    return image.convert("RGB")


def load_mask(source: str, field: str, size: tuple[int, int]) -> Image.Image:
    """The inpainting mask as greyscale (white = repaint, black = keep), resized to ``size``.

    Transparency counts as black (keep): a mask painted as white strokes on a transparent layer
    repaints the strokes only. A mask of another size than its image is stretched to it, so the
    same regions line up.
    """
    mask = decode_image(fetch(source, field), field, background=(0, 0, 0)).convert("L")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.LANCZOS)
    return mask
