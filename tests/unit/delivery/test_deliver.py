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


# --- the PNG's own bytes, each mode, and the room an inline result has ---


def test_a_png_has_sdxls_header_fields_and_ends_with_iend():
    import struct
    import zlib

    data = encode_png(Image.new("RGB", (3, 2), (250, 5, 0)))
    header = struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, adaptive filters, no interlace
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[8:33] == struct.pack(">I", 13) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"


@pytest.mark.parametrize("mode, colour, decoded_mode, decoded", [
    ("LA", (128, 64), "RGBA", (128, 128, 128, 64)),
    ("P", 3, "RGB", (30, 20, 10)),
    ("1", 1, "RGB", (255, 255, 255)),
    ("I;16", 40000, "RGB", None),
])
def test_every_image_mode_is_written_as_grey_rgb_or_rgba(mode, colour, decoded_mode, decoded):
    image = Image.new(mode, (5, 3), colour)
    if mode == "P":
        image.putpalette([0, 0, 0] * 3 + [30, 20, 10] + [0, 0, 0] * 252)
    read = Image.open(io.BytesIO(encode_png(image)))
    assert read.mode == decoded_mode and read.size == (5, 3)
    if decoded is not None:
        assert read.getpixel((4, 2)) == decoded


def test_a_transparent_image_as_jpeg_loses_only_its_alpha():
    image = Image.new("RGBA", (16, 16), (200, 30, 30, 128))
    read = Image.open(io.BytesIO(encode(image, Encoding("jpeg", 90))))
    assert read.format == "JPEG" and read.mode == "RGB"
    assert np.abs(np.subtract(read.getpixel((8, 8)), (200, 30, 30))).max() <= 3


def test_an_inline_result_uses_its_room_to_the_byte():
    image = smooth(64)
    png = len(encode_png(image))
    exact = inline_bytes([png], "image/png") + 16_000  # the payload's reserve
    kept = deliver([image], request(), room_bytes=exact)
    assert kept.images[0].startswith("data:image/png") and kept.warnings == []
    smaller = deliver([image], request(), room_bytes=exact - 1)
    assert not smaller.images[0].startswith("data:image/png")
    webp = len(encode(image, Encoding("webp")))
    webp_room = inline_bytes([webp], "image/webp") + 16_000
    assert webp_room < exact - 1
    fitted = deliver([image], request(), room_bytes=webp_room)
    assert fitted.images[0].startswith("data:image/webp")
    assert fitted.warnings == [
        f"The 1 image(s) as PNG come to {inline_bytes([png], 'image/png'):,} bytes inline, over the {webp_room:,} "
        f"bytes limit, so they are lossless WebP ({inline_bytes([webp], 'image/webp'):,} bytes); configure storage "
        "(BUCKET_* variables) or ask for fewer images to get PNG."]


class FakeStorage:
    """Storage as deliver sees it: a key per image, and an upload that works or fails as told."""

    def __init__(self, fail: str | None = None):
        self.fail, self.uploads = fail, []

    def key(self, job_id: str, index: int, extension: str) -> str:
        return f"{job_id}/{index}.{extension}"

    def upload(self, key: str, data: bytes, content_type: str) -> str:
        from sdxl_worker.delivery.storage import UploadError

        if self.fail:
            raise UploadError(self.fail)
        self.uploads.append((key, content_type, data[:4]))
        return f"https://bucket.example/{key}?signed"


def test_with_storage_each_image_is_uploaded_under_its_job_and_index():
    storage = FakeStorage()
    delivery = deliver([smooth(32), noise(32)], request(output_format="webp", output_quality=80, num_images=2),
                       storage=storage, job_id="job-9")
    assert delivery.images == ["https://bucket.example/job-9/0.webp?signed", "https://bucket.example/job-9/1.webp?signed"]
    assert sorted((key, kind, head) for key, kind, head in storage.uploads) == [
        ("job-9/0.webp", "image/webp", b"RIFF"), ("job-9/1.webp", "image/webp", b"RIFF")]
    assert delivery.warnings == [] and set(delivery.timings) == {"encode", "upload"}
    assert all(isinstance(ms, int) and ms >= 0 for ms in delivery.timings.values())


def test_upload_false_keeps_images_inline_even_with_storage():
    storage = FakeStorage()
    delivery = deliver([smooth(32)], request(upload=False), storage=storage)
    assert delivery.images[0].startswith("data:image/png") and storage.uploads == []


def test_a_failed_upload_falls_back_inline_with_a_warning_and_the_reason():
    delivery = deliver([smooth(32)], request(), storage=FakeStorage(fail="storage refused the upload (AccessDenied)"),
                       job_id="job-3")
    assert delivery.images[0].startswith("data:image/png")
    assert delivery.warnings == ["The images could not be uploaded (storage refused the upload (AccessDenied)), so "
                                 "they are returned inline."]
    with pytest.raises(InputError) as caught:
        deliver([noise(256)], request(), storage=FakeStorage(fail="down"), room_bytes=20_000)
    assert "RunPod accepts, and storage failed and no smaller encoding fits;" in str(caught.value)
    with pytest.raises(InputError) as caught:
        deliver([noise(256)], request(), room_bytes=20_000)
    assert "RunPod accepts, and no smaller encoding fits;" in str(caught.value)


def test_a_too_large_preview_steps_its_quality_down_by_halves(monkeypatch):
    from sdxl_worker.delivery import previews

    tried = []
    real = previews.encode

    def recording(image, encoding):
        tried.append(encoding.quality)
        return real(image, encoding)

    monkeypatch.setattr(previews, "encode", recording)
    image = noise(64)
    monkeypatch.setattr(previews, "MAX_PREVIEW_BYTES", 10)  # nothing fits: down to the floor
    previews.preview_data_url(image, "jpeg", 100)
    assert tried == [100, 50, 25, 12, 6, 3]
    tried.clear()
    previews.preview_data_url(image, "jpeg", 80)
    assert tried == [80, 40, 20, 10, 5]  # 5 is the floor too
    url = previews.data_url(real(image, Encoding("jpeg", 90)), "image/jpeg")
    exact = len(url) - url.index(",") - 1
    monkeypatch.setattr(previews, "MAX_PREVIEW_BYTES", exact)
    tried.clear()
    assert previews.preview_data_url(image, "jpeg", 90) == url and tried == [90]
    monkeypatch.setattr(previews, "MAX_PREVIEW_BYTES", exact - 1)
    tried.clear()
    previews.preview_data_url(image, "jpeg", 90)
    assert tried[:2] == [90, 45]


@pytest.mark.parametrize("asked, ladder", [
    (Encoding("png"), [Encoding("webp"), Encoding("jpeg", 95), Encoding("jpeg", 85)]),
    (Encoding("webp"), [Encoding("jpeg", 95), Encoding("jpeg", 85)]),
    (Encoding("webp", 80), [Encoding("jpeg", 95), Encoding("jpeg", 85)]),
    (Encoding("jpeg", 100), [Encoding("jpeg", 95), Encoding("jpeg", 85)]),
    (Encoding("jpeg", 95), [Encoding("jpeg", 85)]),  # never the quality asked for again, never above it
    (Encoding("jpeg", 90), [Encoding("jpeg", 85)]),
    (Encoding("jpeg", 85), []),
])
def test_the_smaller_encodings_tried_best_first(asked, ladder):
    from sdxl_worker.delivery.deliver import _fallbacks

    assert _fallbacks(asked) == ladder


def test_encodings_are_named_as_the_warning_gives_them():
    assert [Encoding("png").describe(), Encoding("webp").describe(), Encoding("jpeg", 95).describe(),
            Encoding("webp", 70).describe()] == ["PNG", "lossless WebP", "JPEG quality 95", "WebP quality 70"]


def test_data_urls_and_inline_sizes_of_nothing():
    from sdxl_worker.delivery.deliver import data_url

    assert data_url(b"\x89PNG") == "data:image/png;base64,iVBORw=="
    assert inline_bytes([], "image/png") == 0


def test_timings_count_encoding_and_uploading_in_milliseconds(monkeypatch):
    import itertools

    from sdxl_worker.delivery import deliver as delivering

    ticks = itertools.count()
    monkeypatch.setattr(delivering.time, "perf_counter", lambda: float(next(ticks)) / 4)  # 250 ms a reading
    inline = deliver([smooth(16)], request())
    assert inline.timings == {"encode": 250, "upload": 0}
    storage = FakeStorage()
    uploaded = deliver([smooth(16)], request(), storage=storage)  # readings: start, encoded, upload starts, done
    assert uploaded.timings == {"encode": 250, "upload": 250}
    assert storage.uploads[0][0] == "local/0.png"  # a job without an id


def test_a_failed_upload_is_logged_with_its_job_and_reason(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="sdxl_worker.delivery.deliver"):
        deliver([smooth(16)], request(), storage=FakeStorage(fail="storage did not answer"), job_id="job-5")
    assert caplog.messages == ["job job-5: upload failed (storage did not answer); delivering inline"]
