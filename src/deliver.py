"""Delivery: the finished images as data URLs in the final payload.

PNG at zlib level 1: lossless (the same pixels as Pillow's default level 6) and several
times faster to encode, for files a little larger.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

PNG_COMPRESS_LEVEL = 1


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def deliver(images: list[Image.Image]) -> list[str]:
    return [data_url(encode_png(image)) for image in images]
