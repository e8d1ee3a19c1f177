"""One tiny-model fixture for the whole suite: base + refiner, loaded once through the real path."""

import os

import pytest

os.environ.setdefault("BASE_MODEL", "tiny")
os.environ.setdefault("REFINER_MODEL", "tiny")


@pytest.fixture(scope="session")
def models():
    from sdxl_worker.engine.models import Settings, load_models

    return load_models(Settings(base="tiny", refiner="tiny", vae=None, device="cpu"))


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
