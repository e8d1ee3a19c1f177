"""The numbers users rely on, written down here from the README's input table, docs/checkpoints.md and
the publishers' recipes, never read from the modules that hold them: change a default, a limit, a
sampler or a preset, regenerate the docs, and these still fail until the change is meant."""

from __future__ import annotations

import pytest

from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.errors import InputError
from sdxl_worker.request.types import Request
from sdxl_worker.studio.form import fields

# Each input's default as the README documents it (None: unset, the worker decides).
DEFAULTS = {
    "width": None, "height": None, "num_images": 1, "seed": None, "scheduler": "DDIM", "num_inference_steps": 25,
    "guidance_scale": 7.5, "refine": None, "high_noise_frac": None, "refiner_inference_steps": 50, "strength": 0.3,
    "task": None, "prompt_strength": 0.8, "apply_watermark": False, "preview_steps": 0, "preview_size": 256,
    "preview_format": "jpeg", "preview_quality": 75, "loras": (), "controlnets": (), "ip_adapter": None,
    "model": None, "preset": None, "output_format": "png", "output_quality": 90, "upload": None,
}

# (field, the highest value accepted, the lowest refused above it); and the same below.
HIGHEST = [("width", 2048, 2056), ("height", 2048, 2056), ("num_images", 4, 5), ("num_inference_steps", 200, 201),
           ("guidance_scale", 50, 50.5), ("refiner_inference_steps", 200, 201), ("strength", 1, 1.01),
           ("prompt_strength", 1, 1.01), ("preview_steps", 400, 401), ("preview_size", 1024, 1025),
           ("preview_quality", 100, 101), ("output_quality", 100, 101)]
LOWEST = [("width", 256, 248), ("height", 256, 248), ("num_images", 1, 0), ("num_inference_steps", 1, 0),
          ("guidance_scale", 0, -0.5), ("refiner_inference_steps", 1, 0), ("preview_size", 64, 63),
          ("preview_quality", 1, 0), ("output_quality", 1, 0)]

# Each sampler name: the diffusers class it builds and the settings it changes (docs: the scheduler table).
SAMPLERS = {
    "DDIM": ("DDIMScheduler", {}), "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),
    "KLMS": ("LMSDiscreteScheduler", {}), "K_EULER": ("EulerDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "DPMSolverSinglestep": ("DPMSolverSinglestepScheduler", {}), "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}), "UniPC": ("UniPCMultistepScheduler", {}),
    "K_EULER_KARRAS": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "KLMS_KARRAS": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "HeunDiscreteKarras": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPMSolverMultistepKarras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPMSolverSinglestepKarras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DPMSolverSDE_Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True,
                                                            "algorithm_type": "sde-dpmsolver++"}),
    "UniPC_Karras": ("UniPCMultistepScheduler", {"use_karras_sigmas": True}),
    "K_EULER_TRAILING": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),  # SDXL-Lightning's card
    "K_EULER_ANCESTRAL_TRAILING": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),  # Turbo
    "DDIM_TRAILING": ("DDIMScheduler", {"timestep_spacing": "trailing"}),  # Hyper-SD's card
    "LCM": ("LCMScheduler", {}), "DDPM": ("DDPMScheduler", {}), "K_LMS": ("LMSDiscreteScheduler", {}),
    "K_HEUN": ("HeunDiscreteScheduler", {}), "K_DPM_2": ("KDPM2DiscreteScheduler", {}),
    "K_DPM_2_ANCESTRAL": ("KDPM2AncestralDiscreteScheduler", {}),
    "K_DPMPP_2M": ("DPMSolverMultistepScheduler", {}), "K_DPMPP_2S_ANCESTRAL": ("DPMSolverSinglestepScheduler", {}),
}

# Each fast preset as its publisher's recipe gives it: steps, sampler, guidance (docs/checkpoints.md).
PRESETS = {"lightning-4": (4, "K_EULER_TRAILING", 0.0), "lightning-8": (8, "K_EULER_TRAILING", 0.0),
           "hyper-8": (8, "DDIM_TRAILING", 0.0), "lcm-4": (4, "LCM", 1.0), "turbo-1": (1, "K_EULER_ANCESTRAL_TRAILING", 0.0)}


def request(**inputs) -> Request:
    return Request.from_input({"prompt": "a cat", **inputs})


def test_each_input_left_out_gets_its_documented_default():
    asked = request()
    assert {name: getattr(asked, name) for name in DEFAULTS} == DEFAULTS


@pytest.mark.parametrize("name, highest, refused", HIGHEST)
def test_the_highest_value_of_each_input_is_accepted_and_the_next_refused_naming_it(name, highest, refused):
    request(**{name: highest})
    with pytest.raises(InputError, match=f"'{name}'"):
        request(**{name: refused})


@pytest.mark.parametrize("name, lowest, refused", LOWEST)
def test_the_lowest_value_of_each_input_is_accepted_and_the_one_below_refused_naming_it(name, lowest, refused):
    request(**{name: lowest})
    with pytest.raises(InputError, match=f"'{name}'"):
        request(**{name: refused})


def test_a_job_takes_at_most_4_loras_3_controlnets_and_4_reference_images():
    lora, control = {"path": "a/b"}, {"model": "canny", "image": "https://e.com/c.png"}
    request(loras=[lora] * 4, controlnets=[control] * 3, ip_adapter={"image": ["https://e.com/r.png"] * 4})
    for too_many in ({"loras": [lora] * 5}, {"controlnets": [control] * 4},
                     {"ip_adapter": {"image": ["https://e.com/r.png"] * 5}}):
        with pytest.raises(InputError):
            request(**too_many)


def test_entries_left_incomplete_get_their_documented_defaults():
    asked = request(loras=[{"path": "a/b"}], controlnets=[{"model": "canny", "image": "https://e.com/c.png"}],
                    ip_adapter={"image": "https://e.com/r.png"})
    assert (asked.loras[0].scale, asked.loras[0].weight_name) == (1.0, None)
    entry = asked.controlnets[0]
    assert (entry.preprocess, entry.low_threshold, entry.high_threshold, entry.scale, entry.start, entry.end) == \
        ("none", 100, 200, 1.0, 0.0, 1.0)
    assert asked.ip_adapter.scale == 0.6


def test_every_sampler_name_builds_its_documented_class_and_settings(models):
    assert len(SAMPLERS) == 28
    for name, (cls, settings) in SAMPLERS.items():
        built = build_scheduler(name, models.scheduler_configs["base"])
        assert type(built).__name__ == cls, name
        assert {key: built.config[key] for key in settings} == settings, name
        request(scheduler=name)  # and the schema takes the name
    with pytest.raises(InputError, match="'scheduler'"):
        request(scheduler="K_EULER_A")


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_runs_its_publishers_recipe(name):
    steps, sampler, guidance = PRESETS[name]
    asked = request(preset=name)
    assert (asked.num_inference_steps, asked.scheduler, asked.guidance_scale, asked.refine) == \
        (steps, sampler, guidance, "no_refiner")


def test_the_studio_form_shows_the_documented_defaults_and_ranges():
    drawn = {field["name"]: field for field in fields()}
    assert (drawn["num_inference_steps"]["default"], drawn["num_inference_steps"]["min"],
            drawn["num_inference_steps"]["max"]) == (25, 1, 200)
    assert (drawn["width"]["min"], drawn["width"]["max"], drawn["width"]["step"], drawn["width"]["default"]) == \
        (256, 2048, 8, None)
    assert (drawn["guidance_scale"]["default"], drawn["guidance_scale"]["min"], drawn["guidance_scale"]["max"]) == \
        (7.5, 0, 50)
    assert drawn["preview_steps"]["default"] == 2  # the studio's own: previews on for a first run
    assert drawn["scheduler"]["default"] == "DDIM" and "K_EULER_TRAILING" in drawn["scheduler"]["options"]
    assert drawn["refine"]["options"] == ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]


@pytest.mark.parametrize("inputs, sentence", [
    ({"width": True}, "'width' must be a whole number or null, got the boolean true."),
    ({"num_images": "3"}, "'num_images' must be a whole number, got the text '3'."),
    ({"num_images": [1]}, "'num_images' must be a whole number, got a list."),
    ({"num_images": {"a": 1}}, "'num_images' must be a whole number, got a JSON object."),
    ({"num_images": 2.5}, "'num_images' must be a whole number, got float 2.5."),
    ({"num_images": None}, "'num_images' must be a whole number, got null."),
    ({"guidance_scale": float("nan")}, "'guidance_scale' must be a number, got nan (not a finite number)."),
    ({"prompt": 5}, "'prompt' must be string or null, got int 5."),
    ({"apply_watermark": "yes"}, "'apply_watermark' must be boolean, got the text 'yes'."),
])
def test_a_value_of_the_wrong_kind_is_described_in_the_sentence(inputs, sentence):
    with pytest.raises(InputError) as refused:
        request(**inputs)
    assert str(refused.value) == sentence


def test_the_readme_table_gives_each_inputs_type_default_and_range_in_words():
    from sdxl_worker.request.schema import markdown_table

    rows = {line.split("|")[1].strip(): line for line in markdown_table().splitlines()[2:]}
    assert rows["`width`"].startswith("| `width` | integer | unset | [256, 2048]; multiple of 8 |")
    assert rows["`strength`"].startswith("| `strength` | number | `0.3` | (0, 1] |")
    assert rows["`high_noise_frac`"].startswith("| `high_noise_frac` | number | unset | (0, 1) |")
    assert rows["`apply_watermark`"].startswith("| `apply_watermark` | boolean | `false` | - |")
    assert rows["`prompt`"].startswith("| `prompt` | string | unset | at most 10,000 characters |")
    assert rows["`loras`"].startswith("| `loras` | array | unset | at most 4 items |")
    assert rows["`output_format`"].startswith("| `output_format` | string | `png` | `png`, `jpeg`, `webp` |")


@pytest.mark.parametrize("inputs, sentence", [
    ({"num_images": 9}, "'num_images' must be at least 1 and at most 4, got 9."),
    ({"strength": 0}, "'strength' must be greater than 0 and at most 1, got 0."),
    ({"high_noise_frac": 1}, "'high_noise_frac' must be greater than 0 and less than 1, got 1."),
    ({"width": 1001}, "'width' must be a multiple of 8, got 1001."),
    ({"prompt": "x" * 10_001}, "'prompt' is too long: at most 10000 characters, got 10001."),
    ({"model": ""}, "'model' must not be empty."),
    ({"loras": [{"path": "a"}] * 5}, "'loras' must have at most 4 items."),
    ({"controlnets": [{"model": "c"}]}, "'controlnets[0]' is missing 'image'."),
    ({"promt": "a"}, "Unknown input 'promt' (did you mean 'prompt'?); see the README for the inputs this worker takes."),
    ({f"x{n}": n for n in range(1, 8)},
     "Unknown input 'x1', 'x2', 'x3', 'x4', 'x5' and 2 more; see the README for the inputs this worker takes."),
    ({"output_format": "gif"}, "'output_format' must be one of png, jpeg, webp; got 'gif'."),
    ({"loras": [{"path": "a", "scale": 9}]}, "'loras[0].scale' must be at least -4 and at most 4, got 9."),
    ({"controlnets": [{"model": "c", "image": "i", "start": 2}]},
     "'controlnets[0].start' must be at least 0 and at most 1, got 2."),
])
def test_each_kind_of_limit_is_one_sentence_naming_the_field_the_limit_and_the_value(inputs, sentence):
    with pytest.raises(InputError) as refused:
        request(**inputs)
    assert str(refused.value) == sentence
