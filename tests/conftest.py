"""One tiny-model fixture for the whole suite: base + refiner, loaded once through the real path."""

import base64
import importlib.util
import io
import os
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("BASE_MODEL", "tiny")
os.environ.setdefault("REFINER_MODEL", "tiny")


@pytest.fixture(scope="session")
def models():
    from src.models import Settings, load_models

    return load_models(Settings(base="tiny", refiner="tiny", vae=None, device="cpu"))


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
    from src.job import run_job

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
