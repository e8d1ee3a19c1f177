"""Input images: fetched from an http(s) URL, a data URL or bare base64, decoded to RGB.

One module for every image the user sends, so every limit applies to all of them.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.request

from PIL import Image, ImageOps

from src.errors import InputError

MAX_DOWNLOAD_BYTES = int(os.environ.get("MAX_IMAGE_BYTES", 20 * 1024 * 1024))
MAX_PIXELS = int(os.environ.get("MAX_IMAGE_PIXELS", 4096 * 4096))
TIMEOUT_SECONDS = float(os.environ.get("IMAGE_FETCH_TIMEOUT", 10))


def load_image(source: str, field: str) -> Image.Image:
    """The image named by ``source`` as RGB, EXIF orientation applied; InputError naming ``field``."""
    data = _read(source.strip(), field)
    return decode_image(data, field)


def _read(source: str, field: str) -> bytes:
    lowered = source[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _download(source, field)
    if lowered.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header.lower():
            raise InputError(f"'{field}' is a data URL without base64 data.")
        return _b64(payload, field)
    if "://" in source[:12] or lowered.startswith(("file:", "ftp:")):
        raise InputError(f"'{field}' must be an http(s) URL, a data URL or base64 data; other URL schemes are refused.")
    return _b64(source, field)


def _b64(payload: str, field: str) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"'{field}' is neither an http(s) URL nor valid base64 image data.") from None


def _download(url: str, field: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "sdxl-worker"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            data = response.read(MAX_DOWNLOAD_BYTES + 1)
    except Exception as error:  # URLError, HTTPError, timeouts, bad status lines
        reason = getattr(error, "reason", None) or getattr(error, "code", None) or type(error).__name__
        raise InputError(f"'{field}' could not be downloaded ({reason}).") from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise InputError(f"'{field}' is larger than {MAX_DOWNLOAD_BYTES // (1024 * 1024)} MB.")
    return data


def decode_image(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise InputError(f"'{field}' has {image.width}x{image.height} pixels; the limit is {MAX_PIXELS:,} pixels.")
        image.load()
    except InputError:
        raise
    except Exception:
        raise InputError(f"'{field}' is not an image this worker can read (PNG, JPEG, WebP, ...).") from None
    return to_rgb(ImageOps.exif_transpose(image))


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency laid on white (not black, which is what plain convert does)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")
