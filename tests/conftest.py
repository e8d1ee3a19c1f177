"""One tiny-model fixture for the whole suite: base + refiner, loaded once through the real path."""

import base64
import importlib.util
import io
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("BASE_MODEL", "tiny")
os.environ.setdefault("REFINER_MODEL", "tiny")


@pytest.fixture(scope="session")
def models():
    from sdxl_worker.engine.models import Settings, load_models

    return load_models(Settings(base="tiny", refiner="tiny", vae=None, device="cpu"))


ROOT = Path(__file__).resolve().parents[1]


def run_handler(*args, **env):
    """``python handler.py ARGS`` in a subprocess, with these environment variables added."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "handler.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, **env),
    )


def bench_script(name: str):
    """A script under bench/ (not a package), loaded as a module so its logic can be tested."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def models_without_refiner(models):
    """The same weights with the refiner turned off, sharing the loaded base."""
    from dataclasses import replace

    return replace(models, refiner=None)


@pytest.fixture
def run(models):
    """Run one job through the real generator; return every yield."""
    from sdxl_worker.runtime.job import run_job

    def _run(inputs: dict, on=None, job_id="test"):
        return list(run_job(on or models, {"id": job_id, "input": inputs}))

    return _run


def decode(data_url: str) -> Image.Image:
    header, _, payload = data_url.partition(",")
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
