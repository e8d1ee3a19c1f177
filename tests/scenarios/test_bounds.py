"""Bounds that hold against hostile jobs: LoRA paths stay in LORA_DIR, sizes taken from images stay in
range, a job's total work has a budget, secrets never reach the log, LoRA downloads stream to disk.
After each refusal the worker serves a normal job."""

from __future__ import annotations

import base64
import ctypes
import io
import logging
import os
import struct
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sdxl_worker import config
from sdxl_worker.engine.plan import fit_image_size, fits_the_range
from sdxl_worker.errors import InputError
from sdxl_worker.inputs import lora_files
from sdxl_worker.request.types import Request
from sdxl_worker.testing.servers import Server, body
from sdxl_worker.testing.tiny_loras import tiny_lora
from tests.helpers import decode, png_data_url, worker_with

SMALL = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 3,
         "refine": "no_refiner"}


def serves_a_normal_job(run) -> bool:
    final = run(SMALL)[-1]
    return "images" in final and decode(final["images"][0]).size == (256, 256)


# --- LoRA paths ---

@contextmanager
def watch_opens(path: Path):
    """Every open of ``path`` by any code (Python, Rust or C), seen by the kernel (inotify IN_OPEN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert fd >= 0
    in_open = 0x20
    assert libc.inotify_add_watch(fd, str(path).encode(), in_open) >= 0
    opened: list[int] = []
    try:
        yield opened
    finally:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            data = b""
        while data:
            _, mask, _, length = struct.unpack_from("iIII", data)
            opened.append(mask)
            data = data[16 + length:]
        os.close(fd)


@pytest.fixture
def lora_dir(tmp_path, worker_env):
    root = tmp_path / "loras"
    (root / "style").mkdir(parents=True)
    (root / "style" / lora_files.DEFAULT_WEIGHT_NAME).write_bytes(tiny_lora("base", ["to_q"], seed=5))
    worker_env["LORA_DIR"] = str(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    secret = elsewhere / "x.safetensors"
    secret.write_bytes(tiny_lora("base", ["to_q"], seed=6))  # a real LoRA: loading it would work
    (root / "linked").mkdir()
    (root / "linked" / lora_files.DEFAULT_WEIGHT_NAME).symlink_to(secret)
    return root, secret


def test_a_lora_that_leads_out_of_lora_dir_is_refused_and_the_file_never_opened(run, lora_dir):
    root, secret = lora_dir
    forms = [
        {"path": "style", "weight_name": str(secret)},  # an absolute weight_name
        {"path": "style", "weight_name": "../../elsewhere/x.safetensors"},  # a relative one climbing out
        {"path": "linked"},  # a link inside LORA_DIR pointing out of it
        {"path": "style", "weight_name": "sub/../../../elsewhere/x.safetensors"},
    ]
    for lora in forms:
        with watch_opens(secret) as opened:
            error = run(dict(SMALL, loras=[lora]))[-1]["error"]
        assert "LORA_DIR" in error, error
        assert opened == [], f"{lora} opened the file outside LORA_DIR"
    # A weight_name is a file name in the LoRA's folder and nothing else, even where a path would stay inside.
    (root / "style" / "sub").mkdir()
    (root / "style" / "sub" / "x.safetensors").write_bytes(secret.read_bytes())
    error = run(dict(SMALL, loras=[{"path": "style", "weight_name": "sub/x.safetensors"}]))[-1]["error"]
    assert "'loras[0].weight_name' must be a file name inside the LoRA's folder" in error
    assert serves_a_normal_job(run)
    # Inside LORA_DIR, the folder's file loads.
    assert "images" in run(dict(SMALL, loras=[{"path": "style"}]))[-1]


def test_the_refusal_reads_the_same_whether_or_not_the_file_exists(run, lora_dir):
    root, secret = lora_dir
    missing = secret.parent.parent / "nowhere" / secret.name  # the same file name, in no folder at all

    def refusal(lora):
        return run(dict(SMALL, loras=[lora]))[-1]["error"]

    assert refusal({"path": str(secret)}) == refusal({"path": str(missing)})
    assert refusal({"path": "../elsewhere/x.safetensors"}) == refusal({"path": "../nowhere/x.safetensors"})
    assert (refusal({"path": "style", "weight_name": "../../elsewhere/x.safetensors"})
            == refusal({"path": "style", "weight_name": "../../nowhere/x.safetensors"}))


# --- sizes taken from input images ---

@pytest.mark.parametrize("size, expected", [
    ((1, 1), (256, 256)),
    ((3000, 3000), (2048, 2048)),
    ((300, 203), (376, 256)),
    ((4096, 1024), (2048, 512)),
    ((2048, 256), (2048, 256)),  # 8:1, the widest that fits
    ((1023, 1025), (1016, 1024)),
])
def test_sizes_from_images_fit_the_output_range_keeping_the_aspect_ratio(size, expected):
    assert fit_image_size(*size) == expected


@pytest.mark.parametrize("size", [(6000, 200), (65500, 10), (10, 65500), (2049, 256)])
def test_an_aspect_ratio_that_cannot_fit_is_one_sentence_naming_image(size):
    from sdxl_worker.engine.plan import make_plan
    from sdxl_worker.runtime.checks import Abilities, check_decoded

    plan = make_plan(Request.from_input({"prompt": "a", "image": "https://e.com/a.png"}), True)
    with pytest.raises(InputError, match=r"^'image' is \d+x\d+, an aspect ratio of .* crop it, or give 'width' and 'height'"):
        check_decoded(plan, size, "image", Abilities())


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 70000), st.integers(1, 70000))
def test_any_image_size_gives_a_size_in_range_or_a_refusal(width, height):
    if not fits_the_range(width, height):
        assert max(width, height) / min(width, height) > 2048 / 256
        return
    out_width, out_height = fit_image_size(width, height)
    for side in (out_width, out_height):
        assert 256 <= side <= 2048 and side % 8 == 0
    # The aspect ratio survives, up to rounding each side down to a multiple of 8.
    assert abs(out_width / out_height - width / height) <= 8 / min(out_width, out_height) * (width / height + 1)


def _png(width: int, height: int) -> str:
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), np.full_like(x, 90)], axis=-1)
    return png_data_url(Image.fromarray(rgb.astype(np.uint8)))


# End to end, one job grows its image into range, one shrinks it (small: the pure rule above holds
# 3000x3000 -> 2048x2048 without a 2048x2048 denoise on the CPU), one cannot fit.
@pytest.mark.parametrize("size, expected", [((1, 1), (256, 256)), ((4000, 500), (2048, 256)), ((6000, 200), None)])
def test_jobs_without_a_size_take_a_bounded_size_from_their_image(run, size, expected):
    job = {"prompt": "a red fox", "image": _png(*size), "num_inference_steps": 2, "prompt_strength": 0.5,
           "refine": "no_refiner", "seed": 1}
    final = run(job)[-1]
    if expected is None:
        assert final["error"].startswith("'image' is 6000x200"), final
    else:
        assert decode(final["images"][0]).size == expected, final
    assert serves_a_normal_job(run)


def test_the_refiner_only_task_names_image_url(run):
    final = run({"image_url": _png(6000, 200), "refiner_inference_steps": 4, "strength": 0.5})[-1]
    assert final["error"].startswith("'image_url' is 6000x200")


# --- the total work of a job ---

def test_a_job_sized_by_its_image_is_held_to_the_budget_before_any_step(run, worker_env, monkeypatch):
    import sdxl_worker.runtime.job

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pipelines ran for a job over the budget")

    monkeypatch.setattr(sdxl_worker.runtime.job, "run_streamed", must_not_run)
    worker_env["MAX_JOB_WORK"] = "10"
    [final] = run({"prompt": "a red fox", "image": _png(3000, 3000), "num_inference_steps": 20, "prompt_strength": 1.0,
                   "refine": "no_refiner"})
    # 3000x3000 runs at 2048x2048: 4 units an image-step, 20 steps, x2 for guidance: 160 units.
    assert final["error"].startswith("This job is 160 units of work, 16.0x the worker's budget of 10 (MAX_JOB_WORK"), \
        final


def test_the_largest_job_the_schema_allows_is_refused_before_anything_runs(run, monkeypatch):
    import sdxl_worker.runtime.job

    def must_not_run(*args, **kwargs):
        raise AssertionError("the pipelines ran for a job over the budget")

    monkeypatch.setattr(sdxl_worker.runtime.job, "run_streamed", must_not_run)
    job = {"prompt": "a red fox", "width": 2048, "height": 2048, "num_images": 4, "num_inference_steps": 200,
           "refine": "base_image_refiner", "refiner_inference_steps": 200, "strength": 1.0}
    [final] = run(job)
    error = final["error"]
    assert "MAX_JOB_WORK" in error and "12,800 units" in error and "2.1x" in error, error
    for field in ("'num_images'", "'width'/'height'", "'num_inference_steps'", "'refiner_inference_steps'"):
        assert field in error
    assert error.count(". ") == 0 and error.endswith(".")
    monkeypatch.undo()
    assert serves_a_normal_job(run)






def test_the_budget_is_an_environment_variable(run, worker_env):
    worker_env["MAX_JOB_WORK"] = "0.5"  # SMALL is 2 steps x 2 x 1/16 = 0.25 units
    assert "images" in run(SMALL)[-1]
    error = run(dict(SMALL, num_images=3))[-1]["error"]
    assert "0.75 units" in error and "1.5x the worker's budget of 0.5 " in error
    for bad in ("lots", "-1", "0", "inf", "nan"):
        with pytest.raises(config.ConfigError, match="MAX_JOB_WORK"):
            config.jobs({"MAX_JOB_WORK": bad})


# --- secrets in the log ---





# --- LoRA downloads stream to disk ---

def _big_safetensors(megabytes: int) -> bytes:
    import torch
    from safetensors.torch import save

    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    count = megabytes * 1024 * 1024 // 4 // 2
    return save({f"{layer}.lora.down.weight": torch.zeros(count // 64, 64),
                 f"{layer}.lora.up.weight": torch.zeros(64, count // 64)})


def test_a_lora_download_streams_to_disk_without_holding_the_file_in_memory(tmp_path, worker_env):
    data = _big_safetensors(64)
    worker_env["ALLOW_PRIVATE_URLS"] = "1"
    worker_env["LORA_CACHE_DIR"] = str(tmp_path / "cache")
    with Server({"/big.safetensors": body(data)}) as files:
        tracemalloc.start()
        try:
            path = worker_with(None, **worker_env).lora_files.resolve({"path": files.url("/big.safetensors")}, 0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert path.stat().st_size == len(data) and path.read_bytes() == data
    assert peak < len(data) / 16, f"peak {peak / 2**20:.1f} MB of Python memory for a {len(data) / 2**20:.0f} MB file"
    assert not list(path.parent.glob("*.part"))  # moved into place when complete


def test_a_lora_download_cut_short_leaves_nothing_in_the_cache(tmp_path, worker_env):
    worker_env["ALLOW_PRIVATE_URLS"] = "1"
    worker_env["LORA_CACHE_DIR"] = str(tmp_path / "cache")
    worker_env["LORA_MAX_MB"] = "1"
    with Server({"/big.safetensors": body(_big_safetensors(4))}) as files:
        with pytest.raises(InputError, match="larger than"):
            worker_with(None, **worker_env).lora_files.resolve({"path": files.url("/big.safetensors")}, 0)
    assert list((tmp_path / "cache").iterdir()) == []


def test_tiff_is_refused_like_any_format_outside_the_list(run):
    buffer = io.BytesIO()
    Image.new("RGB", (256, 256), (200, 30, 30)).save(buffer, format="TIFF")
    import base64

    final = run({"prompt": "a", "image": base64.b64encode(buffer.getvalue()).decode(), "refine": "no_refiner"})[-1]
    assert final["error"] == "'image' is not an image this worker can read (PNG, JPEG, WEBP, GIF, BMP)."


def test_a_token_in_a_lora_url_never_reaches_the_log_or_the_error(run, caplog):
    token = "Ab3" * 30
    with caplog.at_level(logging.INFO):
        error = run(dict(SMALL, loras=[{"path": f"https://files.example.invalid/dl/{token}"}]))[-1]["error"]
    for text in (error, caplog.text):
        assert not [token[i:i + 8] for i in range(len(token) - 7) if token[i:i + 8] in text]
    assert "'<a name of 90 characters>'" in error


@pytest.mark.parametrize("path", ["a\0b", "x" * 300])
def test_unreadable_local_paths_are_refused_not_crashed_on(run, lora_dir, path):
    error = run(dict(SMALL, loras=[{"path": path}]))[-1]["error"]
    assert "'loras[0].path'" in error and "internal error" not in error


def test_a_weight_name_with_a_file_path_is_refused(run, lora_dir):
    error = run(dict(SMALL, loras=[{"path": "style/pytorch_lora_weights.safetensors",
                                    "weight_name": "other.safetensors"}]))[-1]["error"]
    assert "'loras[0].weight_name' applies to a folder" in error


@pytest.mark.parametrize("inputs, words", [
    ({"loras": [{"path": "style", "weight_name": "../x.safetensors"}]}, "'loras[0].weight_name'"),
    ({"loras": [{"path": "/somewhere/x.safetensors"}]}, "LORA_DIR"),
    ({"prompt": '("fog").blend(1, 2)'}, "'prompt' has weighting syntax"),
    ({"negative_prompt": "word " * 800}, "'negative_prompt' is"),
])
def test_refusals_that_need_no_download_come_before_the_image_is_fetched(run, worker_env, inputs, words):
    worker_env["ALLOW_PRIVATE_URLS"] = "1"  # LORA_DIR unset
    with Server({"/photo.png": body(base64.b64decode(_png(256, 256).partition(",")[2]))}) as files:
        job = {"prompt": "a fox", "image": files.url("/photo.png"), "num_inference_steps": 2, "refine": "no_refiner",
               **inputs}
        error = run(job)[-1]["error"]
        assert words in error and files.requests == [], (error, files.requests)
