"""Input images and masks: fetched (src/sdxl_worker/inputs/fetch.py), checked to be an image, decoded to RGB or grey.

The bytes decide, never the Content-Type: they must open as one of IMAGE_FORMATS. The pixel
count in the header is checked before any pixel is decoded, so a small file declaring huge
dimensions (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from sdxl_worker.config import FetchSettings
from sdxl_worker.errors import InputError
from sdxl_worker.inputs.fetch import Fetcher

# No TIFF: its decoder (libtiff, with its many codecs) is the largest attack surface of all, and
# what it would bring (CMYK from print workflows) also arrives as JPEG, which is decoded.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


MAX_PIXELS = FetchSettings().max_image_pixels  # MAX_IMAGE_PIXELS' default


class ImageReader:
    """Input images and masks, fetched by ``fetcher`` and decoded under ``max_pixels`` (MAX_IMAGE_PIXELS)."""

    def __init__(self, fetcher: Fetcher, max_pixels: int = MAX_PIXELS):
        self.fetcher, self.max_pixels = fetcher, max_pixels

    def image(self, source: str, field: str) -> Image.Image:
        """The image named by ``source`` as RGB, EXIF orientation applied; InputError naming ``field``."""
        return decode_image(self.fetcher.fetch(source, field), field, max_pixels=self.max_pixels)

    def mask(self, source: str, field: str, size: tuple[int, int]) -> Image.Image:
        """The inpainting mask as greyscale (white = repaint, black = keep), resized to ``size``.

        Transparency counts as black (keep): a mask painted as white strokes on a transparent layer
        repaints the strokes only. A mask of another size than its image is stretched to it, so the
        same regions line up.
        """
        data = self.fetcher.fetch(source, field)
        mask = decode_image(data, field, background=(0, 0, 0), max_pixels=self.max_pixels).convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.LANCZOS)
        return mask


def decode_image(data: bytes, field: str, background=(255, 255, 255), max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``data`` as an RGB image laid on ``background``; InputError naming ``field`` for anything else."""
    return to_rgb(open_image(data, field, max_pixels), background)


def open_image(data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``data`` decoded as it is (any mode, EXIF orientation applied), its pixels counted before any is
    decoded; InputError naming ``field`` for anything that is not an image of IMAGE_FORMATS."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked just below
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        if image.width * image.height > max_pixels:
            raise _too_many_pixels(field, f"{image.width}x{image.height}", max_pixels)
        image.load()
        return ImageOps.exif_transpose(image)
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own guard, at its own (higher) limit
        raise _too_many_pixels(field, f"more than {2 * Image.MAX_IMAGE_PIXELS:,}", max_pixels) from None
    except Exception:  # Pillow raises many kinds for broken or hostile files
        raise InputError(f"'{field}' is not an image this worker can read "
                         f"({', '.join(IMAGE_FORMATS)}).") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """An image file's (width, height) from its header, nothing decoded; None when it is not one."""
    try:
        return Image.open(io.BytesIO(data), formats=IMAGE_FORMATS).size
    except Exception:  # Pillow raises many kinds for what is not an image
        return None


def transparent_to_white(data: bytes, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A mask in OpenAI's convention (transparent pixels are edited) in this worker's (white is
    repainted): 255 minus its alpha. A mask with no see-through pixel (an opaque RGBA file included)
    is taken as this worker's already."""
    image = open_image(data, field, max_pixels)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        if alpha.getextrema()[0] < 255:  # some pixel is see-through: OpenAI's convention
            return ImageOps.invert(alpha)
    return to_rgb(image).convert("L")  # an opaque mask (editors save them as RGBA too): white repaints


def _too_many_pixels(field: str, size: str, max_pixels: int) -> InputError:
    return InputError(f"'{field}' has {size} pixels; the limit is {max_pixels:,} pixels (MAX_IMAGE_PIXELS).")


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
