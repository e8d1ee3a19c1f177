"""What jobs run on (runtime/worker.py): the settings held, and what the worker can do for a job."""

from __future__ import annotations

from dataclasses import replace

from sdxl_worker.request.types import Request
from tests.helpers import worker_with


def test_the_job_limits_come_from_the_settings_in_the_users_units(models):
    worker = worker_with(models, MAX_JOB_WORK="50", INLINE_LIMIT_MB="2.5")
    assert (worker.max_job_work, worker.inline_limit_bytes) == (50, 2_500_000)


def test_what_the_worker_can_do_follows_its_models(models, models_without_refiner):
    request = Request.from_input({"prompt": "a"})
    able = worker_with(models).abilities(request, has_storage=False)
    assert (able.has_refiner, able.has_storage, able.model_names, able.broken_models) == (True, False, ("default",), ())
    assert (able.controlnets, able.has_ip_adapter, able.cpu_offload, able.switch_work) == ((), False, False, 0)
    assert able.presets == ()  # looked up only for a job that names a preset
    assert set(able.scheduler_configs) == {"base", "refiner"}
    without = worker_with(models_without_refiner).abilities(request, has_storage=True)
    assert (without.has_refiner, without.has_storage, set(without.scheduler_configs)) == (False, True, {"base"})
    broken = replace(models, broken={"default": "it failed"}, broken_samplers={"KLMS": "no scipy"})
    able = worker_with(broken).abilities(Request.from_input({"prompt": "a", "scheduler": "KLMS"}), has_storage=False)
    assert (able.broken_models, able.broken_samplers, able.scheduler_configs) == (("default",), ("KLMS",), None)
