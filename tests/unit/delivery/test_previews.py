"""Previews as stream chunks (delivery/previews.py): small data URLs that always fit RunPod's 1 MB chunk."""

import base64
import io

import numpy as np
from PIL import Image

from sdxl_worker.delivery.previews import preview_data_url


def _decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def test_a_preview_is_a_jpeg_or_webp_data_url_of_the_image():
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    jpeg = preview_data_url(image, "jpeg", 80)
    assert jpeg.startswith("data:image/jpeg;base64,")
    assert _decoded(jpeg).size == (64, 48) and _decoded(jpeg).format == "JPEG"
    webp = preview_data_url(image, "webp", 80)
    assert webp.startswith("data:image/webp;base64,") and _decoded(webp).format == "WEBP"


def test_a_preview_too_large_for_a_chunk_is_made_smaller_until_it_fits():
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = Image.fromarray(noise)  # noise: the worst case for JPEG, over 900,000 base64 bytes at quality 100
    url = preview_data_url(image, "jpeg", 100)
    assert len(url.split(",", 1)[1]) <= 900_000
    assert _decoded(url).size == (1024, 1024)
    first_try = preview_data_url(Image.new("RGB", (1024, 1024)), "jpeg", 100)  # a flat one fits at once
    assert len(first_try) < 100_000
