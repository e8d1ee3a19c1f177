"""One tiny-model fixture for the whole suite: base + refiner, loaded once through the real path."""

import os

import pytest

os.environ.setdefault("BASE_MODEL", "tiny")
os.environ.setdefault("REFINER_MODEL", "tiny")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # One process per core (-n 2 on two cores): each computes on one thread, and so do the workers
    # it starts (they inherit this), instead of every process's torch taking every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def models():
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models

    return load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))


@pytest.fixture(scope="session")
def models_without_refiner(models):
    """The same weights with the refiner turned off, sharing the loaded base: as load_models leaves
    them with REFINER_MODEL=none (no refiner pipelines, no refiner scheduler config)."""
    from dataclasses import replace

    return replace(models, refiner=None, refiner_inpaint=None,
                   scheduler_configs={"base": models.scheduler_configs["base"]})


@pytest.fixture(scope="session")
def worker(models):
    """The tiny models in a worker with the default settings (a test's own: ``worker_with``)."""
    from tests.helpers import worker_with

    return worker_with(models)


@pytest.fixture
def worker_env() -> dict:
    """The worker's settings for this test, as environment variables start-up would read
    (``worker_env["LORA_DIR"] = ...``); ``run`` builds its worker from them."""
    return {}


@pytest.fixture
def run(models, worker, worker_env):
    """Run one job through the real generator; return every yield. ``on``: other models, or
    another worker (tests.helpers.worker_with)."""
    from sdxl_worker.runtime.job import run_job
    from tests.helpers import worker_with

    def _run(inputs: dict, on=None, job_id="test"):
        if on is not None and hasattr(on, "lora_files"):
            target = on
        else:
            target = worker_with(on or models, **worker_env) if (on is not None or worker_env) else worker
        return list(run_job(target, {"id": job_id, "input": inputs}))

    return _run
