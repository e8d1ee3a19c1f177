"""Hostile input images: the bytes decide (not the Content-Type), and a bomb is refused before decoding."""

import base64
import io

import pytest
from PIL import Image

from sdxl_worker.errors import InputError
from sdxl_worker.inputs.images import decode_image
from sdxl_worker.testing.files import png_declaring
from sdxl_worker.testing.servers import Server, body
from tests.helpers import worker_with


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def refused(data: bytes, **settings) -> str:
    with pytest.raises(InputError) as caught:
        if settings:  # as a worker with these settings reads a job's image
            worker_with(None, **settings).images.image(base64.b64encode(data).decode(), "image")
        else:
            decode_image(data, "image")
    message = str(caught.value)
    assert "'image'" in message and "\n" not in message
    return message


def test_a_png_declaring_huge_dimensions_is_refused_from_its_header():
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    assert refused(bomb) == ("'image' has more than 178,956,970 pixels; the limit is 16,777,216 pixels "
                             "(MAX_IMAGE_PIXELS).")  # Pillow's own guard, at twice its limit, answers first
    assert refused(png_declaring(8000, 6000)) == \
        "'image' has 8000x6000 pixels; the limit is 16,777,216 pixels (MAX_IMAGE_PIXELS)."


def test_a_real_bomb_over_the_limit_is_refused_before_decoding():
    # 5000 x 5000 one-bit pixels: a few kilobytes of PNG, 75 MB once decoded to RGB.
    bomb = png(Image.new("1", (5000, 5000)))
    assert len(bomb) < 50_000
    assert "5000x5000" in refused(bomb)


def test_the_pixel_limit_comes_from_the_setting():
    assert "11x11" in refused(png(Image.new("RGB", (11, 11))), MAX_IMAGE_PIXELS="100")
    small = base64.b64encode(png(Image.new("RGB", (10, 10)))).decode()
    assert worker_with(None, MAX_IMAGE_PIXELS="100").images.image(small, "image").size == (10, 10)


@pytest.mark.parametrize("data", [
    b"<html><body>not an image</body></html>",
    b"GIF89a",  # a signature and nothing after it
    png(Image.new("RGB", (64, 64), "red"))[:100],  # truncated
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    b"%PDF-1.4\n",
    b"\0" * 1000,
])
def test_what_is_not_an_image_is_refused(data):
    assert "not an image" in refused(data)


def test_the_content_type_is_ignored_the_bytes_decide():
    load_image = worker_with(None, ALLOW_PRIVATE_URLS="1").images.image
    picture = png(Image.new("RGB", (16, 16), "blue"))
    routes = {"/lying.html": body(picture, "text/html"), "/fake.png": body(b"<html>hi</html>", "image/png")}
    with Server(routes) as server:
        assert load_image(server.url("/lying.html"), "image").size == (16, 16)
        with pytest.raises(InputError, match="not an image"):
            load_image(server.url("/fake.png"), "image")


def test_a_text_file_as_base64_is_not_an_image():
    with pytest.raises(InputError, match="not an image"):
        worker_with(None).images.image(base64.b64encode(b"root:x:0:0:root:/root:/bin/bash\n").decode(), "image_url")
