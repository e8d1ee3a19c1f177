"""Encoding and the payload guard: lossless PNG, the formats, and results that fit RunPod's limit."""

import io

import numpy as np
import pytest
from PIL import Image

from sdxl_worker.delivery.deliver import Encoding, deliver, encode, encode_png, inline_bytes
from sdxl_worker.errors import InputError
from sdxl_worker.request.types import Request
from tests.helpers import decode


def noise(size: int = 1024, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)


def smooth(size: int = 256) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x % 256, y % 256, (x + y) // 2 % 256], -1).astype(np.uint8)
    return Image.fromarray(pixels)


def request(**inputs) -> dict:
    return Request.from_input({"prompt": "a cat", **inputs})


@pytest.mark.parametrize("image", [smooth(), noise(64), noise(64, mode="RGBA"), noise(64, mode="L"),
                                   smooth().resize((257, 31))], ids=["smooth", "noise", "rgba", "grey", "odd-size"])
def test_png_is_lossless_and_readable_by_pillow(image):
    decoded = Image.open(io.BytesIO(encode_png(image)))
    decoded.load()  # checks every chunk's CRC and the zlib stream
    assert decoded.mode == image.mode and decoded.size == image.size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_png_is_no_bigger_than_raw_pixels_on_a_smooth_image():
    assert len(encode_png(smooth())) < 256 * 256 * 3 / 4


@pytest.mark.parametrize("fmt, mime, pil_format", [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"),
                                                   ("webp", "image/webp", "WEBP")])
def test_each_format_arrives_as_a_data_url_of_that_type(fmt, mime, pil_format):
    delivery = deliver([smooth(), smooth()], request(output_format=fmt, output_quality=80))
    assert [url.split(";")[0] for url in delivery.images] == [f"data:{mime}"] * 2
    assert decode(delivery.images[0]).format == pil_format
    assert set(delivery.timings) == {"encode", "upload"} and delivery.warnings == []


def test_output_quality_changes_lossy_files():
    image = noise(128)
    assert len(encode(image, Encoding("jpeg", 40))) < len(encode(image, Encoding("jpeg", 95)))
    assert len(encode(image, Encoding("webp", 40))) < len(encode(image, Encoding("webp", 95)))


def test_inline_size_counts_base64_and_image_url_twice():
    one = inline_bytes([3000], "image/png")
    assert one == 2 * (len("data:image/png;base64,") + 4000 + 4)
    assert inline_bytes([3000, 3000], "image/png") == one * 3 // 2


def test_four_noise_images_at_1024_stay_under_the_inline_limit():
    images = [noise(1024, seed) for seed in range(4)]
    delivery = deliver(images, request(num_images=4))
    total = sum(len(url) for url in delivery.images) + len(delivery.images[0])
    assert total <= 10_000_000  # INLINE_LIMIT_MB's default, RunPod's /run limit
    assert len(delivery.warnings) == 1 and "JPEG" in delivery.warnings[0] and "10.0 MB" in delivery.warnings[0]
    assert [decode(url).size for url in delivery.images] == [(1024, 1024)] * 4


def test_lossless_webp_comes_first_when_it_fits():
    images = [smooth(512)] * 2
    png = inline_bytes([len(encode_png(image)) for image in images], "image/png")
    webp = inline_bytes([len(encode(image, Encoding("webp"))) for image in images], "image/webp")
    assert webp < png
    room = webp + 16_000 + 100  # room for WebP, not PNG
    delivery = deliver(images, request(num_images=2), room_bytes=room)
    assert delivery.images[0].startswith("data:image/webp") and "lossless WebP" in delivery.warnings[0]
    assert np.array_equal(np.asarray(decode(delivery.images[0]).convert("RGB")), np.asarray(images[0]))


def test_nothing_fits_gives_one_error_naming_the_fixes():
    with pytest.raises(InputError) as caught:
        deliver([noise(256, seed) for seed in range(2)], request(num_images=2), room_bytes=50_000)
    message = str(caught.value)
    for fix in ("BUCKET_", "'num_images'", "'output_format'", "'output_quality'"):
        assert fix in message


def test_a_job_payload_has_the_delivery_fields(run, models):
    [result] = run({"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2,
                    "refine": "no_refiner", "output_format": "jpeg", "output_quality": 70})
    assert result["images"][0].startswith("data:image/jpeg;base64,") and result["image_url"] == result["images"][0]
    assert {"base", "encode", "upload", "total"} <= set(result["timings"]) and "warnings" not in result


def test_output_quality_set_on_the_job_changes_the_files_it_returns(run):
    job = {"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 2, "refine": "no_refiner",
           "seed": 4, "output_format": "jpeg"}
    sizes = {}
    for quality in (20, 95):
        [result] = run(dict(job, output_quality=quality))
        data = result["images"][0].partition(",")[2]
        sizes[quality] = len(data)
    assert sizes[95] > 1.5 * sizes[20], sizes


def test_timings_are_whole_milliseconds_for_every_stage_that_ran(run):
    import time

    started = time.perf_counter()
    [result] = run({"prompt": "a fox", "width": 256, "height": 256, "num_inference_steps": 3, "seed": 4,
                    "refine": "base_image_refiner", "refiner_inference_steps": 4, "strength": 0.5})
    elapsed_ms = (time.perf_counter() - started) * 1000
    timings = result["timings"]
    assert {"base", "refiner", "encode", "total"} <= set(timings)
    assert all(isinstance(ms, int) for ms in timings.values())
    # Milliseconds, not seconds: the job's own total is the wall time this test measured around it.
    assert 0.5 * elapsed_ms <= timings["total"] <= elapsed_ms + 1
    assert timings["base"] + timings["refiner"] <= timings["total"]
    assert timings["base"] > 0 and timings["refiner"] > 0


def test_upload_true_without_storage_is_refused_before_any_work(run):
    [result] = run({"prompt": "a fox", "upload": True})
    assert "'upload'" in result["error"] and "BUCKET_ENDPOINT_URL" in result["error"]
