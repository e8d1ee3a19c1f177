"""The warm-up (runtime/warmup.py): short jobs through the real path at start-up, so no user job pays
first-call costs. A compiler failing during it is in tests/unit/engine/test_compile.py."""

import logging

import pytest

from sdxl_worker.engine.speed import Speedups
from sdxl_worker.runtime import warmup
from tests.helpers import worker_with


def test_warm_up_runs_one_job_through_the_real_path(models, caplog):
    from sdxl_worker.runtime.warmup import warm_up

    with caplog.at_level(logging.INFO, logger="sdxl_worker.runtime.warmup"):
        warm_up(worker_with(models), ((256, 256, 1),))
    assert any("Warm-up 256x256" in record.getMessage() for record in caplog.records)


class _Worker:
    """What the warm-up reads of a worker: its models' refiner and speed-ups and the load times."""

    def __init__(self, has_refiner=True, speedups=None):
        self.models = type("Models", (), {})()
        self.models.has_refiner, self.models.speedups, self.models.load_seconds = has_refiner, speedups, {}


def _recording(monkeypatch, answer=None) -> list:
    jobs = []

    def run_job(worker, job):
        jobs.append(job)
        yield answer or {"images": ["..."]}

    monkeypatch.setattr(warmup, "run_job", run_job)
    return jobs


def test_each_size_is_run_then_the_first_again_with_a_prompt_over_77_tokens(monkeypatch):
    jobs = _recording(monkeypatch)
    warmup.warm_up(_Worker(), ((1024, 1024, 1), (832, 1216, 2)))
    assert [job["id"] for job in jobs] == ["warm-up-1024x1024x1", "warm-up-832x1216x2", "warm-up-1024x1024x1"]
    first = jobs[0]["input"]
    assert first == {"prompt": "warm-up", "negative_prompt": "warm-up", "width": 1024, "height": 1024,
                     "num_images": 1, "num_inference_steps": 2, "seed": 0,
                     "refine": "expert_ensemble_refiner", "high_noise_frac": 0.5}
    assert jobs[1]["input"]["num_images"] == 2
    assert len(jobs[2]["input"]["prompt"].split()) == 60 and len(jobs[2]["input"]["prompt"]) > 77 * 4


def test_without_a_refiner_the_warm_up_jobs_ask_for_none(monkeypatch):
    jobs = _recording(monkeypatch)
    warmup.warm_up(_Worker(has_refiner=False), ((512, 512, 1),))
    assert all("refine" not in job["input"] for job in jobs)


def test_a_failing_warm_up_job_stops_the_start_with_one_sentence(monkeypatch):
    _recording(monkeypatch, {"error": "CUDA out of memory."})
    with pytest.raises(warmup.WarmUpFailed) as failed:
        warmup.warm_up_if_asked(_Worker(speedups=Speedups(warmup=True, warmup_sizes=((512, 512, 1),))))
    assert str(failed.value) == ("Warm-up job 512x512 failed (CUDA out of memory.); the cause is logged above. "
                                 "Try COMPILE=0 (or WARMUP=0) if it is the compiler.")


def test_nothing_runs_unless_the_speed_ups_ask_for_a_warm_up(monkeypatch):
    jobs = _recording(monkeypatch)
    worker = _Worker(speedups=Speedups(warmup=False))
    warmup.warm_up_if_asked(worker)
    warmup.warm_up_if_asked(_Worker(speedups=None))
    assert jobs == [] and worker.models.load_seconds == {}
    asked = _Worker(speedups=Speedups(warmup=True, warmup_sizes=((256, 256, 1),)))
    warmup.warm_up_if_asked(asked)
    assert len(jobs) == 2 and asked.models.load_seconds["warm-up"] >= 0
