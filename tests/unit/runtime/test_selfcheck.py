"""The start-up self-check: a missing library stops the worker with one sentence naming the package."""

import pytest

from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.runtime import selfcheck
from tests.helpers import run_handler, worker_with


def test_every_scheduler_in_the_table_builds_for_every_stage_in_this_environment(models):
    selfcheck.check_schedulers(models.scheduler_configs)  # raises on the first one that cannot
    assert set(models.scheduler_configs) == {"base", "refiner"}
    for name in ("KLMS", "KLMS_KARRAS", "K_LMS"):  # the ones a missing SciPy broke
        assert type(build_scheduler(name, models.scheduler_configs["base"])).__name__ == "LMSDiscreteScheduler"


def test_every_library_an_input_needs_imports_in_this_environment():
    selfcheck.check_libraries()


def test_a_missing_library_is_one_sentence_naming_the_package_and_what_needs_it():
    def importer(module):
        if module == "imwatermark":
            raise ModuleNotFoundError("No module named 'imwatermark'")

    with pytest.raises(selfcheck.SelfCheckFailed) as refused:
        selfcheck.check_libraries(importer)
    message = str(refused.value)
    assert "'invisible-watermark'" in message and "'apply_watermark'" in message
    assert "pip install" in message and message.count(". ") == 0


def test_a_scheduler_that_cannot_be_built_names_it(models, monkeypatch):
    from diffusers import LMSDiscreteScheduler

    def needs_scipy(*args, **kwargs):
        raise ImportError("\nLMSDiscreteScheduler requires the scipy library but it was not found in your environment.")

    monkeypatch.setattr(LMSDiscreteScheduler, "from_config", needs_scipy)
    with pytest.raises(selfcheck.SelfCheckFailed, match=r"'KLMS' cannot be built for the base model \(LMSDiscrete"):
        selfcheck.check_schedulers(models.scheduler_configs)


def test_the_worker_without_scipy_stops_at_start_up_naming_it(tmp_path):
    # A scipy that fails to import, first on the path: what a fresh install without it meets.
    (tmp_path / "scipy").mkdir()
    (tmp_path / "scipy" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'scipy'\")\n")
    done = run_handler(BASE_MODEL="tiny", REFINER_MODEL="none", PYTHONPATH=str(tmp_path))
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "'scipy'" in errors[0] and "KLMS" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_bad_max_job_work_stops_the_worker_before_loading_anything():
    done = run_handler(BASE_MODEL="tiny", REFINER_MODEL="none", MAX_JOB_WORK="lots")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "MAX_JOB_WORK='lots' is not a number" in errors[0], done.stderr[-2000:]
    assert "Loaded base" not in done.stderr


def test_the_build_check_runs_beside_the_start_and_a_broken_sampler_is_refused_by_name(monkeypatch, caplog):
    """Building every sampler takes about a second: it may not delay the start, and what it finds
    reaches the log and the jobs that ask for that sampler."""
    import logging
    import time

    from diffusers import LMSDiscreteScheduler

    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.runtime.job import run_job

    def broken(*args, **kwargs):
        raise ImportError("\nLMSDiscreteScheduler requires the scipy library but it was not found in your environment.")

    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu"))
    monkeypatch.setattr(LMSDiscreteScheduler, "from_config", broken)
    started = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        selfcheck.check_scheduler_classes()
        thread = selfcheck.check_schedulers_in_background(models)
        waited = time.perf_counter() - started
        thread.join(30)
    assert waited < 0.1, f"the start waited {waited:.2f} s for the scheduler check"
    assert set(models.broken_samplers) == {"KLMS", "KLMS_KARRAS", "K_LMS"}
    assert "'KLMS' cannot be built for the base model (LMSDiscreteScheduler requires the scipy" in caplog.text
    job = {"prompt": "a", "width": 256, "height": 256, "num_inference_steps": 2, "scheduler": "K_LMS"}
    assert list(run_job(worker_with(models), {"id": "lms", "input": job}))[-1] == {
        "error": "'scheduler' 'K_LMS' cannot run on this worker (its start-up check failed; the log says why); "
                 "choose another."}
