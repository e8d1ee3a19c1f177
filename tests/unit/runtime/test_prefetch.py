"""src/sdxl_worker/runtime/prefetch.py: the helper process that reads a cold start's files into memory ahead of need,
and the recorded list of the files the start opens."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdxl_worker import config
from sdxl_worker.runtime import prefetch
from tests.helpers import ROOT, bench_script


@pytest.fixture(scope="module")
def page_cache():
    """bench/cold_start.py's eviction and mincore check, to see what the helper put in memory."""
    return bench_script("cold_start")


def start_prefetch(env: dict):
    """The helper as start-up starts it, with the settings ``env`` gives."""
    return prefetch.start(config.runtime(env), config.models(env))


def _baked(root: Path) -> dict:
    """A base and a refiner as the builder bakes them (fp16 files only), with bytes on disk."""
    files = {
        "base/vae/diffusion_pytorch_model.fp16.safetensors": 1 << 16,
        "base/text_encoder/model.fp16.safetensors": 1 << 17,
        "base/text_encoder_2/model.fp16.safetensors": 1 << 17,
        "base/unet/diffusion_pytorch_model.fp16.safetensors": 1 << 20,
        "refiner/unet/diffusion_pytorch_model.fp16.safetensors": 1 << 20,
    }
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(os.urandom(size))
    return {"BASE_MODEL": str(root / "base"), "REFINER_MODEL": str(root / "refiner"), "VAE_MODEL": "base"}


def _finished(started: prefetch.Prefetch) -> int:
    assert started.helper is not None, started.summary
    return started.helper.wait(timeout=60)


def test_the_helper_puts_the_start_files_and_the_weights_in_memory(tmp_path, page_cache):
    env = _baked(tmp_path)
    library = tmp_path / "site-packages" / "somelib.so"
    library.parent.mkdir()
    library.write_bytes(os.urandom(1 << 18))
    listed = tmp_path / "start-files.txt"
    listed.write_text(f"{library}\n{tmp_path / 'uninstalled.so'}\n")  # a stale entry is skipped
    files = [library] + sorted((tmp_path / "base").rglob("*.safetensors")) + [
        tmp_path / "refiner/unet/diffusion_pytorch_model.fp16.safetensors"
    ]
    os.sync()
    page_cache._evict(files)
    if page_cache.resident_fraction(files) > 0.05:
        pytest.skip("this file system keeps the pages in memory whatever is asked")

    assert _finished(start_prefetch(dict(env, START_FILES=str(listed)))) == 0
    assert page_cache.resident_fraction(files) > 0.95


def test_read_goes_through_the_list_then_the_weights_and_counts_every_byte(tmp_path):
    _baked(tmp_path)
    weights = sorted(str(p) for p in tmp_path.rglob("*.safetensors"))
    library = tmp_path / "lib.so"
    library.write_bytes(os.urandom(1 << 16))
    listed = tmp_path / "start-files.txt"
    # A part of a library (path, offset, length), one running past the end, and a file now gone.
    listed.write_text(f"{library}\t4096\t8192\n{library}\t61440\t65536\n/nonexistent/lib.so\n")
    expected = 8192 + 4096 + sum(Path(p).stat().st_size for p in weights)
    assert prefetch.read(listed, weights) == expected
    assert prefetch.read(tmp_path / "no-list.txt", []) == 0




def test_nothing_starts_when_there_is_nothing_to_read_or_it_is_turned_off(tmp_path, monkeypatch):
    env = _baked(tmp_path)
    no_list = str(tmp_path / "absent.txt")
    off = start_prefetch(dict(env, START_FILES=no_list, PREFETCH="0"))
    assert off.helper is None and "PREFETCH=0" in off.summary
    # The built-in model is made in code: nothing baked, and no list recorded.
    tiny = start_prefetch({"BASE_MODEL": "tiny", "REFINER_MODEL": "tiny", "START_FILES": no_list})
    assert tiny.helper is None and "nothing to read" in tiny.summary and no_list in tiny.summary
    # Weights that would not fit in free memory are left out; then only a list is worth a helper.
    monkeypatch.setattr(prefetch, "available_memory", lambda: 1 << 20)
    assert start_prefetch(dict(env, START_FILES=no_list)).helper is None
    listed = tmp_path / "start-files.txt"
    listed.write_text(f"{tmp_path / 'base/vae/diffusion_pytorch_model.fp16.safetensors'}\n")
    started = start_prefetch(dict(env, START_FILES=str(listed)))
    assert _finished(started) == 0
    assert str(listed) in started.summary and "left out" in started.summary


def test_the_log_line_says_what_the_helper_reads(tmp_path):
    env = _baked(tmp_path)
    weights_only = start_prefetch(dict(env, START_FILES=str(tmp_path / "absent.txt")))
    assert _finished(weights_only) == 0
    assert "GB of weights" in weights_only.summary and "start_files makes one" in weights_only.summary




def test_the_command_lines_say_how_to_use_them():
    done = subprocess.run([sys.executable, "-m", "sdxl_worker.runtime.prefetch"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "--read" in done.stderr
    done = subprocess.run([sys.executable, "-m", "sdxl_worker.runtime.start_files", "a", "b"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "start_files [PATH]" in done.stderr
