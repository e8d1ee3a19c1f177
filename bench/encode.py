"""Encoding one 1024x1024 result for delivery: this worker's formats against worker-sdxl's way.

worker-sdxl saves each image as a PNG at Pillow's default level to disk, reads the file back
and base64-encodes it. Here the same images go through sdxl_worker.delivery.deliver's encoders to a data URL.
Two images, both made in code (deterministic): a photo-like one (smooth gradients, shapes,
mild sensor noise) and pure noise (the worst case for every lossless coder).

    python bench/encode.py [--runs 9]

Prints median milliseconds (methods timed round-robin) and bytes (the data URL) per format and
the speed-up over worker-sdxl's way; "same pixels" checks that the lossless ones decode to the
input exactly.
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sdxl_worker.delivery.deliver import MIME, Encoding, data_url, encode


def photo_like(size: int = 1024, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.55 + 0.4 * np.sin(2.1 * x + 1.3 * y), 0.45 + 0.35 * np.cos(3.0 * y - 0.7 * x),
                    0.35 + 0.5 * x * y], axis=-1)
    image = Image.fromarray((sky * 255).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        left, top = rng.integers(0, size, 2)
        width, height = rng.integers(30, 300, 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(left), int(top), int(left + width), int(top + height)], fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(2))  # soft edges, like a lens
    grain = rng.normal(0, 2, (size, size, 3)).round()  # mild sensor noise
    return Image.fromarray((np.asarray(image, dtype=np.int16) + grain).clip(0, 255).astype(np.uint8))


def pure_noise(size: int = 1024, seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def worker_sdxl_way(image: Image.Image, folder: Path) -> str:
    path = folder / "image.png"
    image.save(path)  # Pillow's default PNG: compress_level 6, adaptive filters
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def pillow_level_1(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return data_url(buffer.getvalue())


def ours(encoding: Encoding):
    return lambda image: data_url(encode(image, encoding), MIME[encoding.format])


def timed(work) -> tuple[float, str]:
    started = time.perf_counter()
    result = work()
    return (time.perf_counter() - started) * 1000, result


def same_pixels(url: str, image: Image.Image) -> bool:
    decoded = Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")
    return np.array_equal(np.asarray(decoded), np.asarray(image))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs per row (the median is shown)")
    args = parser.parse_args()

    methods = [
        ("worker-sdxl: Pillow PNG level 6, disk, base64", None, True),
        ("Pillow PNG level 1 (data URL)", pillow_level_1, True),
        ("this worker: png (default)", ours(Encoding("png")), True),
        ("this worker: lossless webp (guard fallback)", ours(Encoding("webp")), True),
        ("this worker: jpeg quality 90", ours(Encoding("jpeg", 90)), False),
        ("this worker: jpeg quality 95 (guard fallback)", ours(Encoding("jpeg", 95)), False),
        ("this worker: webp quality 90", ours(Encoding("webp", 90)), False),
    ]
    print(f"1024x1024 RGB, median of {args.runs} runs, bytes = the data URL as delivered inline\n")
    print("| image | method | median ms | bytes | speed vs worker-sdxl | size vs worker-sdxl | same pixels |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for image_name, image in (("photo-like", photo_like()), ("noise", pure_noise())):
            works = [(lambda image=image: worker_sdxl_way(image, Path(folder))) if method is None
                     else (lambda method=method, image=image: method(image)) for _, method, _ in methods]
            times, urls = [[] for _ in works], [None] * len(works)
            for _ in range(args.runs):  # round-robin, so a busy moment on the host hits every method alike
                for index, work in enumerate(works):
                    ms, urls[index] = timed(work)
                    times[index].append(ms)
            medians = [statistics.median(row) for row in times]
            for (label, _, lossless), ms, url in zip(methods, medians, urls):
                pixels = ("yes" if same_pixels(url, image) else "NO") if lossless else "lossy"
                print(f"| {image_name} | {label} | {ms:.1f} | {len(url):,} | {medians[0] / ms:.2f}x | "
                      f"{len(url) / len(urls[0]):.2f} | {pixels} |")

if __name__ == "__main__":
    main()
