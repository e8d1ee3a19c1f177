"""A job's work in units (engine/work.py), as the check pass holds it to MAX_JOB_WORK."""

from __future__ import annotations

import dataclasses

import pytest

from sdxl_worker.engine import work
from sdxl_worker.errors import InputError
from sdxl_worker.request.types import Request


def test_work_counts_both_stages_guidance_and_the_schedulers_that_call_the_model_twice(models):
    from sdxl_worker.engine.plan import make_plan

    def units(**inputs):
        request = Request.from_input({"prompt": "a", "width": 1024, "height": 1024, **inputs})
        plan = make_plan(request, models.has_refiner, models.scheduler_configs)
        return work.job_work(plan.step_counts, 1024, 1024, len(plan.seeds), request.guidance_scale)

    # worker-sdxl's defaults: 25 base steps + 50 x 0.3 = 15 refiner steps, each with guidance.
    assert units() == (25 + 15) * 2
    assert units(guidance_scale=1.0) == 25 + 15  # no guidance: one call a step
    assert units(scheduler="HeunDiscrete", refine="no_refiner") == (2 * 25 - 1) * 2  # Heun: two calls a step
    assert units(num_images=3, refine="no_refiner") == 3 * 25 * 2


def test_controlnets_count_half_a_call_on_each_base_step_and_can_be_named_as_the_fix():
    from sdxl_worker.engine.plan import make_plan
    from sdxl_worker.runtime.checks import Abilities, check

    steps = {"base": 25, "refiner": 15}
    assert work.job_work(steps, 1024, 1024, 1, 7.5, controlnets=2) == (25 + 15 + 25 * 0.5 * 2) * 2
    control = {"model": "canny", "image": "https://e.com/c.png"}
    request = Request.from_input({"prompt": "a", "guidance_scale": 7.5, "refine": "base_image_refiner",
                                  "controlnets": [control] * 3})
    plan = make_plan(request, True)
    plan = dataclasses.replace(plan, step_counts=steps)
    able = {"controlnets": ("canny",)}
    check(request, plan, Abilities(max_job_work=155, **able))  # (25 + 15 + 37.5) x 2: at the limit
    with pytest.raises(InputError) as refused:
        check(request, plan, Abilities(max_job_work=154, **able))
    message = str(refused.value)
    assert "3 ControlNet(s) at 0.5 a base step each" in message
    assert message.endswith("or the number of 'controlnets'.")


def test_model_calls_count_controlnets_on_base_steps_only_and_any_guidance_above_one_doubles():
    assert work.model_calls({"base": 10, "refiner": 4}, 7.5) == 28  # no ControlNet unless named
    assert work.model_calls({"refiner": 10}, 7.5, controlnets=2) == 20  # a refiner-only job: no base steps
    assert work.model_calls({"base": 10}, 1.5) == 20
    assert work.model_calls({"base": 10}, 1.0) == 10
