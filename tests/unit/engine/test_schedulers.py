"""The scheduler table: every name builds its class with its tweaks; docs/modes.md shows the table."""

import re

import pytest

from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.request import schema
from sdxl_worker.request.samplers import SCHEDULERS, markdown_table
from tests.helpers import ROOT

SDXL_CONFIG = {  # stabilityai/stable-diffusion-xl-base-1.0's scheduler/scheduler_config.json, every key
    "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear", "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}


def test_the_tiny_model_ships_sdxl_s_own_scheduler_settings(models):
    """So DDIM (the default), DDPM and LCM run in every test with production's settings."""
    shipped = models.scheduler_configs["base"]
    assert {key: shipped.get(key) for key in SDXL_CONFIG} == SDXL_CONFIG
    ddim = build_scheduler("DDIM", shipped)
    assert (ddim.config.clip_sample, ddim.config.set_alpha_to_one, ddim.config.steps_offset) == (False, False, 1)


def test_building_a_scheduler_from_sdxl_s_config_logs_no_warning():
    import logging

    from diffusers.utils import logging as diffusers_logging

    said = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: said.append(record.getMessage())
    root, verbosity = logging.getLogger("diffusers"), diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_warning()  # the library's own default (start-up may have quieted it)
    root.addHandler(handler)
    try:
        for name in SCHEDULERS:
            build_scheduler(name, SDXL_CONFIG)
    finally:
        root.removeHandler(handler)
        diffusers_logging.set_verbosity(verbosity)
    assert said == []


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_each_name_builds_its_class_with_its_tweaks(name):
    sampler = SCHEDULERS[name]
    scheduler = build_scheduler(name, SDXL_CONFIG)
    assert type(scheduler).__name__ == sampler.cls
    for key, value in sampler.tweaks.items():
        assert scheduler.config[key] == value
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's own config underneath


def test_each_job_gets_a_new_scheduler():
    assert build_scheduler("K_EULER", SDXL_CONFIG) is not build_scheduler("K_EULER", SDXL_CONFIG)


@pytest.mark.parametrize(
    "name, same_as",
    [("K_LMS", "KLMS"), ("K_HEUN", "HeunDiscrete"), ("K_DPMPP_2M", "DPMSolverMultistep"),
     ("DPMSolverMultistepKarras", "KarrasDPM")],
)
def test_aliases_are_the_same_sampler(name, same_as):
    assert SCHEDULERS[name][:2] == SCHEDULERS[same_as][:2]


def test_every_name_the_seeds_promise_is_there():
    promised = ["DDIM", "PNDM", "KLMS", "K_EULER", "K_EULER_ANCESTRAL", "DPMSolverMultistep", "DPMSolverSinglestep",
                "HeunDiscrete", "KarrasDPM", "UniPC", "DDPM", "K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2",
                "K_DPM_2_ANCESTRAL", "K_HEUN", "K_LMS"]
    assert set(promised) <= set(schema.SCHEDULERS) == set(SCHEDULERS)


def test_readme_scheduler_table_is_generated_from_the_table():
    text = (ROOT / "docs" / "modes.md").read_text()
    table = re.search(r"<!-- schedulers:start -->\n(.*?)\n<!-- schedulers:end -->", text, re.S)
    assert table, "docs/modes.md lacks the generated scheduler table markers"
    assert table.group(1).strip() == markdown_table().strip(), \
        "run: python -m sdxl_worker.request.samplers, paste into docs/modes.md"
