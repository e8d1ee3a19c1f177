"""Step counts per stage (engine/steps.py), counted before a job runs: the numbers written here are
diffusers' own timestep rules worked by hand for SDXL's scheduler config."""

from __future__ import annotations

import pytest

from sdxl_worker.engine.plan import make_plan
from sdxl_worker.request.types import Request


@pytest.mark.parametrize("inputs, counts", [
    ({}, {"base": 25, "refiner": 15}),  # worker-sdxl's defaults: 25 base steps, 50 x 0.3 refiner steps
    ({"refine": "no_refiner"}, {"base": 25}),
    ({"high_noise_frac": 0.8}, {"base": 20, "refiner": 5}),  # the ensemble splits one schedule of 25
    ({"refine": "no_refiner", "scheduler": "PNDM", "num_inference_steps": 4}, {"base": 5}),  # PLMS repeats one
    ({"refine": "no_refiner", "image": "https://e.com/a.png", "prompt_strength": 0.5, "num_inference_steps": 30},
     {"base": 15}),
    ({"image_url": "https://e.com/a.png", "refiner_inference_steps": 20, "strength": 0.25}, {"refiner": 5}),
    # Heun calls the UNet twice a step (49 timesteps for 25 steps); the refiner's share is made odd, as
    # diffusers does for second-order schedulers: 10 timesteps below the hand-off become 11.
    ({"scheduler": "HeunDiscrete", "high_noise_frac": 0.8}, {"base": 39, "refiner": 11}),
    ({"num_inference_steps": 10, "high_noise_frac": 0.5}, {"base": 5, "refiner": 5}),
    ({"refine": "no_refiner", "scheduler": "HeunDiscrete", "image": "https://e.com/a.png", "prompt_strength": 0.5,
      "num_inference_steps": 30}, {"base": 29}),
    # A hand-off exactly on a timestep: 10 steps are 901, 801, ..., 101, 1, and 0.799 cuts at 201, which
    # the base keeps (t >= 201: 8 steps) and the refiner does not (t < 201: 2 steps, even: kept even).
    ({"num_inference_steps": 10, "high_noise_frac": 0.799}, {"base": 8, "refiner": 2}),
    ({"refine": "no_refiner", "image": "https://e.com/a.png", "prompt_strength": 1.0, "num_inference_steps": 10},
     {"base": 10}),  # the whole schedule
])
def test_each_stage_counts_the_steps_its_pipeline_will_take(models, inputs, counts):
    request = Request.from_input({"prompt": "a cat", **inputs})
    assert make_plan(request, True, models.scheduler_configs).step_counts == counts


def test_without_a_refiner_config_only_the_base_is_counted(models):
    request = Request.from_input({"prompt": "a cat", "image_url": "https://e.com/a.png"})
    assert make_plan(request, False, {"base": models.scheduler_configs["base"]}).step_counts == {}


def test_the_base_is_given_the_size_for_txt2img_and_the_strength_for_an_input_image():
    from sdxl_worker.engine.steps import base_args

    txt2img = make_plan(Request.from_input({"prompt": "a", "width": 768, "height": 512, "num_inference_steps": 9}), True)
    assert base_args(txt2img) == {"num_inference_steps": 9, "width": 768, "height": 512}
    img2img = make_plan(Request.from_input({"prompt": "a", "image": "https://e.com/a.png", "prompt_strength": 0.6}), True)
    assert base_args(img2img) == {"num_inference_steps": 25, "strength": 0.6}
