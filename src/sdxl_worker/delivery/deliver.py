"""Delivery: encode the finished images, then upload them (presigned URLs) or return them inline.

PNG is written here rather than by Pillow: the same pixels, a cheap row filter and zlib's
run-length strategy, several times faster than Pillow's default level (bench/encode.py).
Inline results are kept under the size RunPod accepts (the payload guard): when they would
not fit, a smaller encoding is delivered with a warning, and an error names the fixes only
when nothing fits.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from sdxl_worker.config import JobSettings
from sdxl_worker.delivery.storage import Storage, UploadError
from sdxl_worker.errors import MB, InputError, megabytes

log = logging.getLogger(__name__)

FORMATS = ("png", "jpeg", "webp")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSION = {"png": "png", "jpeg": "jpg", "webp": "webp"}

# What the payload holds besides the images (seeds, timings, warnings) and RunPod's envelope.
PAYLOAD_RESERVE_BYTES = 16_000

_PNG_CHANNELS = {"L": (1, 0), "RGB": (3, 2), "RGBA": (4, 6)}  # mode -> (bytes per pixel, PNG colour type)


@dataclass(frozen=True)
class Encoding:
    """How images are written: a format, and a quality for the lossy ones (None: lossless)."""

    format: str
    quality: int | None = None

    def describe(self) -> str:
        name = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}[self.format]
        if self.quality is None:
            return name if self.format == "png" else f"lossless {name}"
        return f"{name} quality {self.quality}"


def encode_png(image: Image.Image) -> bytes:
    """A lossless PNG: 'Sub' filter on every row (numpy), then zlib level 1 with the RLE strategy.

    Pillow tries five filters per row and LZ77-matches at every level; after a Sub filter a
    generated image is mostly small repeated differences, which run-length coding catches at a
    fraction of the cost, for files about the size of Pillow's level 1.
    """
    if image.mode not in _PNG_CHANNELS:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    channels, colour_type = _PNG_CHANNELS[image.mode]
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width * channels)
    rows = np.empty((image.height, image.width * channels + 1), dtype=np.uint8)
    rows[:, 0] = 1  # filter type Sub: each byte minus the same channel of the pixel to its left
    rows[:, 1:channels + 1] = pixels[:, :channels]
    np.subtract(pixels[:, channels:], pixels[:, :-channels], out=rows[:, channels + 1:])  # wraps mod 256
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = compressor.compress(rows.data) + compressor.flush()
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode(image: Image.Image, encoding: Encoding) -> bytes:
    if encoding.format == "png":
        return encode_png(image)
    buffer = io.BytesIO()
    if encoding.format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=encoding.quality)
    elif encoding.quality is None:
        # Lossless at low effort: within 2% of the default effort's size, in under half its time.
        image.save(buffer, format="WEBP", lossless=True, method=1, quality=0)
    else:
        image.save(buffer, format="WEBP", quality=encoding.quality)
    return buffer.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# INLINE_LIMIT_MB's default (RunPod's /run limit), in bytes: the room of a delivery not told another.
DEFAULT_INLINE_LIMIT = int(JobSettings().inline_limit_mb * MB)


def inline_bytes(sizes: list[int], mime: str) -> int:
    """The payload bytes of these files as data URLs: every image, plus images[0] again as `image_url`."""
    urls = [len(f"data:{mime};base64,") + 4 * ((size + 2) // 3) + 4 for size in sizes]  # + quotes, comma
    return sum(urls) + (urls[0] if urls else 0)


@dataclass
class Delivery:
    images: list[str]  # presigned URLs or data URLs, in order
    timings: dict = field(default_factory=dict)  # encode, upload (ms)
    warnings: list[str] = field(default_factory=list)


def deliver(images: list[Image.Image], asked, storage: Storage | None = None,
            job_id: str = "local", room_bytes: int | None = None) -> Delivery:
    """Encode the images as asked; upload them when storage is there and wanted, else inline them.

    Args:
        images: the job's images.
        asked: how the job wants them (its Plan, or a Request): ``output_format``,
            ``output_quality`` and ``upload`` (False: always inline).
        storage: where to upload (the job's s3Config, else the worker's bucket); None: inline.
        job_id: names the uploaded files.
        room_bytes: the bytes inline images may take (default: the whole INLINE_LIMIT_MB; less
            when previews used some).
    """
    encoding = Encoding(asked.output_format,
                        None if asked.output_format == "png" else asked.output_quality)
    timings = {"encode": 0.0, "upload": 0.0}
    warnings: list[str] = []
    encoded: list[bytes] = []

    if storage is not None and asked.upload is not False:
        urls, failure = _upload(images, encoding, storage, job_id, encoded, timings)
        if urls is not None:
            return Delivery(urls, _rounded(timings))
        warnings.append(f"The images could not be uploaded ({failure}), so they are returned inline.")
        log.warning("job %s: upload failed (%s); delivering inline", job_id, failure)

    started = time.perf_counter()
    limit = DEFAULT_INLINE_LIMIT if room_bytes is None else room_bytes
    files, used = _fit_inline(images, encoding, encoded, warnings, bool(warnings), limit)
    timings["encode"] += time.perf_counter() - started
    return Delivery([data_url(data, MIME[used.format]) for data in files], _rounded(timings), warnings)


def _upload(images, encoding, storage, job_id, encoded, timings):
    """Each image is encoded and uploaded in its own thread, so one image's upload overlaps the
    others' encoding (Pillow, zlib and boto3's sockets all release the GIL).

    Returns (urls, None), or (None, reason) when any upload failed; `encoded` keeps the files
    for the inline fallback either way.
    """
    mime, extension = MIME[encoding.format], EXTENSION[encoding.format]
    started = time.perf_counter()
    encode_ends, upload_starts = [], []
    files: dict[int, bytes] = {}

    def encode_and_upload(index: int) -> str:
        files[index] = encode(images[index], encoding)
        encode_ends.append(time.perf_counter())
        upload_starts.append(time.perf_counter())
        return storage.upload(storage.key(job_id, index, extension), files[index], mime)

    with ThreadPoolExecutor(max_workers=len(images), thread_name_prefix="deliver") as pool:
        futures = [pool.submit(encode_and_upload, index) for index in range(len(images))]
        urls, failure = [], None
        for future in futures:
            try:
                urls.append(future.result())
            except UploadError as error:
                failure = failure or str(error)
    finished = time.perf_counter()
    encoded.extend(files[index] for index in range(len(images)))
    timings["encode"] += max(encode_ends) - started  # wall time, the uploads overlapping
    timings["upload"] = finished - min(upload_starts)
    return (None, failure) if failure else (urls, None)


def _encode_all(images: list[Image.Image], encoding: Encoding) -> list[bytes]:
    """The images encoded side by side: the encoders release the GIL, a GPU host has cores to spare."""
    if len(images) == 1:
        return [encode(images[0], encoding)]
    with ThreadPoolExecutor(max_workers=min(len(images), os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda image: encode(image, encoding), images))


def _fit_inline(images, asked: Encoding, encoded: list[bytes], warnings: list[str], uploaded_failed: bool,
                limit: int):
    """The first encoding, from the one asked for down a ladder of smaller ones, whose payload fits ``limit``."""
    budget = limit - PAYLOAD_RESERVE_BYTES
    files = encoded or _encode_all(images, asked)
    size = inline_bytes([len(data) for data in files], MIME[asked.format])
    if size <= budget:
        return files, asked
    for fallback in _fallbacks(asked):
        candidate = _encode_all(images, fallback)
        candidate_size = inline_bytes([len(data) for data in candidate], MIME[fallback.format])
        if candidate_size <= budget:
            warnings.append(
                f"The {len(images)} image(s) as {asked.describe()} come to {megabytes(size)} inline, over the "
                f"{megabytes(limit)} limit, so they are {fallback.describe()} ({megabytes(candidate_size)}); configure storage "
                f"(BUCKET_* variables) or ask for fewer images to get {asked.describe()}."
            )
            return candidate, fallback
    where = "storage failed and " if uploaded_failed else ""
    raise InputError(
        f"The {len(images)} image(s) come to {megabytes(size)} inline, over the {megabytes(limit)} RunPod accepts, "
        f"and {where}no smaller encoding fits; configure storage (BUCKET_* variables), ask for fewer images "
        f"('num_images') or smaller ones ('width', 'height'), or set 'output_format' to jpeg or webp "
        f"with a lower 'output_quality'."
    )


def _fallbacks(asked: Encoding) -> list[Encoding]:
    """Smaller encodings, best first: lossless WebP for PNG, then high-quality JPEG (never above the ask)."""
    ladder = [Encoding("webp")] if asked.format == "png" else []
    ladder += [Encoding("jpeg", quality) for quality in (95, 85)
               if asked.quality is None or quality < asked.quality or asked.format != "jpeg"]
    return [encoding for encoding in ladder if encoding != asked]


def _rounded(timings: dict) -> dict:
    return {name: round(seconds * 1000) for name, seconds in timings.items()}
