"""Previews as stream chunks: a small JPEG or WebP data URL that always fits RunPod's 1 MB chunk."""

from __future__ import annotations

from PIL import Image

from sdxl_worker.delivery.deliver import MIME, Encoding, data_url, encode

MAX_PREVIEW_BYTES = 900_000  # RunPod drops stream chunks over 1 MB; leave room for the JSON around it


def preview_data_url(image: Image.Image, image_format: str, quality: int) -> str:
    """JPEG or WebP as a data URL, stepping the quality down in the rare case it would not fit a stream chunk."""
    while True:
        url = data_url(encode(image, Encoding(image_format, quality)), MIME[image_format])
        if len(url) - url.index(",") - 1 <= MAX_PREVIEW_BYTES or quality <= 5:  # the base64 part
            return url
        quality //= 2
