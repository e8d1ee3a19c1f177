"""Every path on the tiny model: sizes, seeds, the refiner's steps and what reaches it."""

import numpy as np
import pytest

from sdxl_worker.engine import generate
from sdxl_worker.engine.plan import make_plan
from sdxl_worker.request.schema import SCHEDULERS
from sdxl_worker.request.types import Request
from tests.helpers import FAST, decode, final, photo, pixels, png_data_url


@pytest.mark.parametrize(
    "inputs, size",
    [
        ({"refine": "no_refiner", "width": 320, "height": 256}, (320, 256)),
        ({"refine": "base_image_refiner", "width": 256, "height": 384}, (256, 384)),
        ({"high_noise_frac": 0.5, "width": 384, "height": 256}, (384, 256)),
        # 300x200: the short side under 256, so scaled up 1.28x keeping the aspect ratio
        ({"image": png_data_url(photo()), "width": None, "height": None, "prompt_strength": 0.5}, (384, 256)),
        ({"image": png_data_url(photo()), "width": 256, "height": 320, "prompt_strength": 0.5}, (256, 320)),
        ({"image_url": png_data_url(photo()), "width": None, "height": None}, (384, 256)),
    ],
)
def test_each_path_returns_images_of_the_requested_size(run, inputs, size):
    output = final(run({**FAST, **inputs}))
    assert decode(output["images"][0]).size == size
    assert output["image_url"] == output["images"][0]


def test_output_shape(run):
    output = final(run({**FAST, "num_images": 2, "seed": 10, "refine": "no_refiner"}))
    assert set(output) == {"images", "image_url", "seed", "seeds", "timings"}
    assert output["seed"] == 10 and output["seeds"] == [10, 11]
    assert len(output["images"]) == 2
    assert {"base", "encode", "total"} <= set(output["timings"])
    assert all(isinstance(ms, int) and ms >= 0 for ms in output["timings"].values())


def test_same_seed_same_pixels_other_seed_other_pixels(run):
    first = pixels(final(run(FAST)))
    again = pixels(final(run(FAST)))
    other = pixels(final(run({**FAST, "seed": 2})))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_a_random_seed_is_returned_and_reproduces_the_image(run):
    inputs = {**FAST, "seed": None, "refine": "no_refiner"}
    output = final(run(inputs))
    again = final(run({**inputs, "seed": output["seed"]}))
    assert np.array_equal(pixels(output), pixels(again))


def test_the_refiner_runs_only_the_steps_after_high_noise_frac(models):
    steps = {"base": 0, "refiner": 0}
    request = Request.from_input({**FAST, "num_inference_steps": 10, "high_noise_frac": 0.8, "scheduler": "K_EULER"})
    plan = make_plan(request, has_refiner=True)
    generate.run(models, plan, on_step=lambda stage, step, kwargs: steps.__setitem__(stage, step))
    assert steps == {"base": 8, "refiner": 2}


def test_base_image_refiner_runs_strength_times_refiner_steps(models):
    steps = {"base": 0, "refiner": 0}
    request = Request.from_input({**FAST, "num_inference_steps": 6, "refiner_inference_steps": 10, "strength": 0.3})
    plan = make_plan(request, has_refiner=True)
    generate.run(models, plan, on_step=lambda stage, step, kwargs: steps.__setitem__(stage, step))
    assert steps == {"base": 6, "refiner": 3}


@pytest.mark.parametrize("change", [{"negative_prompt": "fog, rain"}, {"guidance_scale": 2.0}])
def test_negative_prompt_and_guidance_reach_the_refiner(run, change):
    # The refine task runs the refiner alone: any difference comes from the refiner.
    inputs = {**FAST, "image_url": png_data_url(photo(256, 256)), "width": None, "height": None}
    plain = pixels(final(run(inputs)))
    changed = pixels(final(run({**inputs, **change})))
    assert not np.array_equal(plain, changed)


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_runs(run, scheduler):
    output = final(run({**FAST, "scheduler": scheduler, "num_inference_steps": 3, "high_noise_frac": 0.5}))
    assert decode(output["images"][0]).size == (256, 256)


def test_a_scheduler_does_not_leak_into_the_next_job(run, models):
    before = pixels(final(run({**FAST, "refine": "no_refiner"})))
    final(run({**FAST, "refine": "no_refiner", "scheduler": "K_EULER_ANCESTRAL"}))
    after = pixels(final(run({**FAST, "refine": "no_refiner"})))
    assert np.array_equal(before, after)


def test_without_a_refiner_the_base_alone_runs(run, models_without_refiner):
    output = final(run(FAST, on=models_without_refiner))
    assert "refiner" not in output["timings"]








@pytest.mark.parametrize("scheduler, cls, karras", [("K_EULER_ANCESTRAL", "EulerAncestralDiscreteScheduler", False),
                                                    ("KarrasDPM", "DPMSolverMultistepScheduler", True)])
@pytest.mark.parametrize("refine", ["base_image_refiner", "expert_ensemble_refiner"])
def test_the_refiner_runs_the_sampler_the_job_names(run, models, scheduler, cls, karras, refine):
    """Both stages use the job's sampler (written here from the scheduler table), not the refiner's own."""
    final(run({**FAST, "scheduler": scheduler, "refine": refine, "refiner_inference_steps": 4, "strength": 0.5}))
    for pipe in (models.base, models.refiner):
        assert type(pipe.scheduler).__name__ == cls
        assert bool(pipe.scheduler.config.get("use_karras_sigmas", False)) == karras
