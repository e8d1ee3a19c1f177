"""The preset table: defaults a job's own values override, refusals where they would break it."""

import re

import pytest

from sdxl_worker.errors import InputError
from sdxl_worker.request import presets, schema
from sdxl_worker.request.samplers import SCHEDULERS
from sdxl_worker.request.types import Request
from tests.helpers import ROOT


def test_every_preset_names_a_scheduler_and_its_documented_settings():
    for name, preset in presets.PRESETS.items():
        assert preset.scheduler in SCHEDULERS and preset.guidance_scale <= preset.max_guidance, name
        assert preset.reference.startswith("https://huggingface.co/" + preset.repo), name
    assert SCHEDULERS["K_EULER_TRAILING"].tweaks == {"timestep_spacing": "trailing"}  # Lightning's page says so
    assert SCHEDULERS["LCM"].cls == "LCMScheduler"


def test_a_preset_sets_defaults_and_the_jobs_own_values_win():
    request = Request.from_input({"prompt": "a cat", "preset": "turbo-1"})
    assert (request.scheduler, request.num_inference_steps, request.guidance_scale, request.refine) == \
        ("K_EULER_ANCESTRAL_TRAILING", 1, 0.0, "no_refiner")
    assert (request.width, request.height) == (512, 512)
    own = Request.from_input({"prompt": "a cat", "preset": "turbo-1", "width": 768, "guidance_scale": 0.5})
    assert (own.width, own.height, own.guidance_scale) == (768, 512, 0.5)
    assert Request.from_input({"prompt": "a cat"}).num_inference_steps == 25  # no preset: the schema's defaults


def test_every_refusal_names_the_field_in_one_sentence():
    with pytest.raises(InputError) as refused:
        Request.from_input({"image_url": "https://example.com/a.png", "preset": "lcm-4"})
    assert str(refused.value).startswith("'preset' 'lcm-4' speeds up the base")
    for extra in ({"num_inference_steps": 8}, {"scheduler": "LCM"}, {"guidance_scale": 2.5}):
        problems = presets.problems("lcm-4", extra)
        assert len(problems) == (0 if extra == {"scheduler": "LCM"} else 1)
    assert schema.validate({"prompt": "a", "preset": None})["preset"] is None


def test_docs_hold_the_generated_preset_table():
    text = (ROOT / "docs" / "checkpoints.md").read_text()
    table = re.search(r"<!-- presets:start -->\n(.*?)\n<!-- presets:end -->", text, re.S)
    assert table and table.group(1).strip() == presets.markdown_table().strip(), \
        "run: python -m sdxl_worker.request.presets, paste into docs/checkpoints.md"


def test_an_input_image_keeps_its_own_size_under_a_sized_preset():
    job = Request.from_input({"prompt": "a cat", "preset": "turbo-1", "image": "https://example.com/a.png"})
    assert (job.width, job.height) == (None, None)  # from the image, once it is read
    assert presets.defaults("lcm-4", {}).get("width") is None, "lcm-4 keeps the schema's size"


def test_each_refusal_of_a_preset_is_its_own_sentence():
    label = "'preset' 'lcm-4'"
    assert presets.problems("lcm-4", {"guidance_scale": 2.0}) == [], "its maximum is allowed"
    assert presets.problems("lcm-4", {"guidance_scale": 2.01}) == [
        f"'guidance_scale' must be at most 2 with {label}; leave it out for 1."]
    assert presets.problems("lcm-4", {"refine": "expert_ensemble_refiner"}) == [
        f"'refine' cannot be 'expert_ensemble_refiner' with {label}, which runs its whole schedule on the base; "
        "use 'base_image_refiner' or leave 'refine' out."]
    assert presets.problems("lcm-4", {"refine": "base_image_refiner"}) == []
    refiner_only = (f"{label} speeds up the base, and a refiner-only job ('image_url') runs no base; "
                    "leave 'preset' out.")
    assert presets.problems("lcm-4", {"task": "refine", "image": "https://example.com/a.png"}) == [refiner_only]
    assert presets.problems("lcm-4", {"task": "img2img", "image": "https://example.com/a.png"}) == []
