"""Input images and masks as users send them: real PNG/JPEG/GIF files made here, decoded to RGB or grey."""

import io

import numpy as np
import pytest
from PIL import Image

from sdxl_worker.errors import InputError
from sdxl_worker.inputs.images import decode_image, to_rgb
from tests.helpers import png_data_url, worker_with


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (200, 0, 0))
    image.paste((0, 0, 200), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: the blue half ends on top
    decoded = decode_image(encoded(image, "JPEG", exif=exif, quality=95), "image")
    assert decoded.size == (20, 40)
    top, bottom = np.asarray(decoded)[5, 10], np.asarray(decoded)[35, 10]
    assert top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2]


def test_transparency_is_laid_on_white_not_black():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    decoded = decode_image(encoded(image, "PNG"), "image")
    assert decoded.mode == "RGB"
    assert decoded.getpixel((4, 4)) == (255, 255, 255)
    assert decoded.getpixel((0, 0)) == (255, 0, 0)


def test_half_transparent_pixels_blend_with_white():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert decode_image(encoded(image, "PNG"), "image").getpixel((0, 0)) == (127, 127, 127)


def test_a_palette_image_with_a_transparent_colour():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    decoded = decode_image(encoded(image, "GIF", transparency=0), "image")
    assert decoded.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.getpixel((1, 1)) == (0, 200, 0)


@pytest.mark.parametrize(
    "image, fmt, expected",
    [
        (Image.new("L", (8, 8), 90), "PNG", (90, 90, 90)),
        (Image.new("1", (8, 8), 1), "PNG", (255, 255, 255)),
        (Image.new("I;16", (8, 8), 40000), "PNG", (155, 155, 155)),  # 16-bit, scaled, not clipped to white
        (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", (255, 0, 0)),  # pure red in CMYK
    ],
)
def test_other_modes_become_rgb(image, fmt, expected):
    decoded = decode_image(encoded(image, fmt), "image")
    assert decoded.mode == "RGB"
    assert np.abs(np.subtract(decoded.getpixel((4, 4)), expected)).max() <= 3


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "TGA", "PPM"])
def test_formats_outside_the_list_are_refused_by_name(fmt):
    data = encoded(Image.new("RGB", (16, 16), (10, 200, 30)), fmt)
    with pytest.raises(InputError, match=r"'image' .*PNG, JPEG, WEBP, GIF, BMP"):
        decode_image(data, "image")


def test_a_mask_is_grey_and_stretched_to_its_image():
    mask = Image.new("RGB", (50, 50), (0, 0, 0))
    mask.paste((255, 255, 255), (25, 0, 50, 50))
    loaded = worker_with(None).images.mask(png_data_url(mask), "mask", (200, 100))
    assert loaded.mode == "L" and loaded.size == (200, 100)
    assert loaded.getpixel((10, 50)) == 0 and loaded.getpixel((190, 50)) == 255


def test_a_transparent_mask_keeps_where_nothing_is_painted():
    strokes = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 255), (8, 0, 16, 16))
    loaded = worker_with(None).images.mask(png_data_url(strokes), "mask", (16, 16))
    assert loaded.getpixel((2, 8)) == 0 and loaded.getpixel((12, 8)) == 255


def test_a_mask_that_is_not_an_image_is_named():
    with pytest.raises(InputError, match="'mask'"):
        worker_with(None).images.mask("bm90IGFuIGltYWdl", "mask", (64, 64))


@pytest.mark.parametrize("mode, colour", [("LA", (0, 0)), ("PA", (0, 0)), ("RGBA", (0, 0, 0, 0))])
def test_every_mode_with_an_alpha_channel_is_laid_on_white(mode, colour):
    image = Image.new(mode, (4, 4), colour)
    decoded = decode_image(encoded(image.convert("RGBA") if mode == "PA" else image, "PNG"), "image")
    assert decoded.getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(image).getpixel((1, 1)) == (255, 255, 255)


def test_32_bit_greyscale_is_scaled_like_16_bit():
    image = Image.new("I", (4, 4), 65535)
    assert to_rgb(image).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("I", (4, 4), 257 * 100)).getpixel((0, 0)) == (100, 100, 100)
    assert to_rgb(Image.new("I;16", (4, 4), 257 * 100)).getpixel((0, 0)) == (100, 100, 100)


def test_a_palette_image_without_transparency_keeps_its_colours():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert to_rgb(image).getpixel((0, 0)) == (10, 20, 30)


def test_a_masks_transparency_is_black_and_it_is_stretched_with_lanczos():
    painted = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    painted.paste((255, 255, 255, 255), (10, 5, 30, 25))
    loaded = worker_with(None).images.mask(png_data_url(painted), "mask", (64, 48))
    flat = Image.alpha_composite(Image.new("RGBA", (40, 30), (0, 0, 0, 255)), painted).convert("L")
    assert np.array_equal(np.asarray(loaded), np.asarray(flat.resize((64, 48), Image.Resampling.LANCZOS)))


def test_images_and_masks_are_refused_by_their_field_and_the_pixel_limit():
    reader = worker_with(None, MAX_IMAGE_PIXELS="100").images
    big = png_data_url(Image.new("RGB", (11, 11)))
    for read, field in ((lambda: reader.image(big, "image_url"), "image_url"),
                        (lambda: reader.mask(big, "mask_url", (11, 11)), "mask_url")):
        with pytest.raises(InputError) as refused:
            read()
        assert str(refused.value) == f"'{field}' has 11x11 pixels; the limit is 100 pixels (MAX_IMAGE_PIXELS)."
    for read, field in ((lambda: reader.image("ftp://x/y.png", "image_url"), "image_url"),
                        (lambda: reader.mask("ftp://x/y.png", "mask_url", (8, 8)), "mask_url")):
        with pytest.raises(InputError) as refused:
            read()
        assert str(refused.value).startswith(f"'{field}' uses the URL scheme 'ftp:'")
