"""Schedulers built per job from the model's config (engine/schedulers.py): every name builds its class with its
tweaks, nothing shared between jobs. The table itself is tested in tests/unit/request/test_samplers.py."""


import pytest

from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.request.samplers import SCHEDULERS

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






