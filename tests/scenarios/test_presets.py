"""Fast presets on the tiny model: the documented scheduler, steps and guidance, their own weights
loaded once and kept, the same pixels as diffusers' recipe, and the refusals."""

from __future__ import annotations

import pytest
import torch

from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.request.presets import PRESETS
from sdxl_worker.testing.tiny_presets import write_tiny_presets
from tests.helpers import final, pixels

JOB = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "seed": 7}


@pytest.fixture(scope="module")
def baked(tmp_path_factory):
    return write_tiny_presets(tmp_path_factory.mktemp("hub"))


def _hub_caches(monkeypatch, models, hub_cache, runpod_cache=None) -> None:
    """The models' hub caches (HF_HUB_CACHE, RUNPOD_MODEL_CACHE), where presets are looked up, for this test."""
    from dataclasses import replace

    where = {"hub_cache": hub_cache} | ({"runpod_cache": runpod_cache} if runpod_cache else {})
    monkeypatch.setattr(models, "settings", replace(models.settings, **where))


@pytest.fixture
def with_presets(baked, models, monkeypatch):
    _hub_caches(monkeypatch, models, baked)
    return baked


def _unet_calls(unet) -> tuple:
    calls = []
    handle = unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    return calls, handle


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_runs_its_documented_scheduler_steps_and_guidance(name, with_presets, models, run):
    from sdxl_worker.engine import preset_weights

    preset = PRESETS[name]
    unet, _ = preset_weights.unet_for(models, name)
    calls, handle = _unet_calls(unet)
    try:
        out = final(run(dict(JOB, preset=name)))
    finally:
        handle.remove()
    assert "error" not in out, out
    assert set(out["timings"]) >= {"base"} and "refiner" not in out["timings"]  # refiner off
    # One UNet call per step, each on the batch of one image: no classifier-free guidance doubling it.
    assert calls == [1] * preset.steps, (name, calls)
    scheduler = build_scheduler(preset.scheduler, models.scheduler_configs["base"])
    expected_class = {"K_EULER_TRAILING": "EulerDiscreteScheduler", "DDIM_TRAILING": "DDIMScheduler",
                      "LCM": "LCMScheduler", "K_EULER_ANCESTRAL_TRAILING": "EulerAncestralDiscreteScheduler"}
    assert type(scheduler).__name__ == expected_class[preset.scheduler]
    if preset.scheduler != "LCM":
        assert scheduler.config.timestep_spacing == "trailing"
    assert pixels(out).shape[:2] == (256, 256)  # the job's own size wins over a preset's


def test_turbo_defaults_to_its_training_size(with_presets, run):
    out = final(run({"prompt": "a cat", "seed": 1, "preset": "turbo-1"}))
    assert pixels(out).shape[:2] == (512, 512)


def test_a_lora_preset_gives_diffusers_recipe_pixels_and_leaves_the_default_job_untouched(with_presets, models, run):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.testing.memory import fresh_memory

    before = pixels(final(run(dict(JOB, refine="no_refiner"))))
    ours = final(run(dict(JOB, preset="lightning-4")))
    # The publisher's recipe, in plain diffusers: load and fuse the LoRA, trailing Euler, 4 steps, no guidance.
    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model() / "base", add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(with_presets / "models--ByteDance--SDXL-Lightning" / "snapshots" / "tiny"),
                           weight_name=PRESETS["lightning-4"].file)
    pipe.fuse_lora()
    fresh_memory(pipe.unet)  # the worker fuses into a copy of the UNet, in fresh memory (testing/memory.py)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    reference = pipe(JOB["prompt"], width=256, height=256, num_inference_steps=4, guidance_scale=0,
                     generator=[torch.Generator("cpu").manual_seed(7)]).images[0]
    import numpy as np

    assert np.abs(pixels(ours).astype(int) - np.asarray(reference).astype(int)).max() == 0
    # The next job without a preset: the checkpoint's own UNet, the pixels it gave before.
    assert pixels(final(run(dict(JOB, refine="no_refiner")))).tolist() == before.tolist()


def test_preset_weights_load_once_and_stay(with_presets, models, run):
    models.preset_unets.pop("lightning-8", None)
    first = final(run(dict(JOB, preset="lightning-8")))
    second = final(run(dict(JOB, preset="lightning-8")))
    assert "preset_load" in first["timings"] and "preset_load" not in second["timings"]
    assert pixels(first).tolist() == pixels(second).tolist()


def test_preset_with_img2img_loras_and_previews(with_presets, run):
    from tests.helpers import photo, png_data_url

    outputs = run(dict(JOB, preset="hyper-8", image=png_data_url(photo(256, 256)), prompt_strength=0.5,
                       preview_steps=2))
    assert len(outputs) > 1 and "error" not in outputs[-1]  # previews, then the image
    assert pixels(outputs[-1]).shape[:2] == (256, 256)


@pytest.mark.parametrize("extra, field", [
    ({"num_inference_steps": 30}, "'num_inference_steps' must be 4"),
    ({"scheduler": "DDIM"}, "'scheduler' cannot be changed"),
    ({"guidance_scale": 7}, "'guidance_scale' must be at most 1"),
    ({"refine": "expert_ensemble_refiner"}, "'refine' cannot be 'expert_ensemble_refiner'"),
])
def test_inputs_that_would_break_a_preset_are_refused(with_presets, run, extra, field):
    out = run(dict(JOB, preset="lightning-4", **extra))[-1]
    assert field in out["error"]


def test_inputs_a_preset_allows_override_it(with_presets, run):
    out = final(run(dict(JOB, preset="lcm-4", guidance_scale=1.5, num_inference_steps=4, refine="base_image_refiner",
                         width=320, height=256)))
    assert "error" not in out, out
    assert pixels(out).shape[:2] == (256, 320) and "refiner" in out["timings"]


def test_a_preset_not_baked_is_refused_naming_the_build_argument(tmp_path, monkeypatch, models, run):
    _hub_caches(monkeypatch, models, tmp_path, tmp_path / "none")
    out = run(dict(JOB, preset="turbo-1"))[-1]
    assert "--build-arg PRESETS=turbo-1" in out["error"] and "'preset'" in out["error"]
