"""Requests written for Replicate cog-sdxl, Stability/Bedrock and Segmind, run unchanged.

The seed examples (000, 001, 003) run with their step counts and sizes lowered. Where an
example needs an input another issue adds, the test is skipped until that input exists.
"""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sdxl_worker.errors import InputError
from sdxl_worker.request.dialects import translate
from sdxl_worker.request.schema import INPUT_SCHEMA
from tests.helpers import decode

INPUTS = INPUT_SCHEMA["properties"]


def needs(*fields, issue):
    missing = [field for field in fields if field not in INPUTS]
    return pytest.mark.skipif(bool(missing), reason=f"needs issue {issue} ({', '.join(missing)})")


def _png_base64(size=(256, 256)) -> str:
    """A real PNG as bare base64, as Stability's init_image and Segmind's image take it."""
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _pixels(outputs) -> np.ndarray:
    assert "error" not in outputs[-1], outputs[-1]
    return np.asarray(decode(outputs[-1]["images"][0]))


# The seed 000 example ("Streaming SDXL", Replicate's camelCase), 1024 -> 256 and 50 -> 2 steps.
SEED_000 = {
    "width": 256, "height": 256, "prompt": "An astronaut riding a rainbow unicorn", "refine": "no_refiner",
    "loraScale": 0.6, "scheduler": "K_EULER", "previewSteps": 1, "guidanceScale": 7.5, "highNoiseFrac": 0.8,
    "applyWatermark": True, "negativePrompt": "", "promptStrength": 0.8, "numberOfInferenceSteps": 2,
}


@needs("preview_steps", issue=3)
@needs("apply_watermark", issue=4)
def test_seed_000_streaming_sdxl_example_runs(run):
    outputs = run(SEED_000)
    assert decode(outputs[-1]["images"][0]).size == (256, 256)


def test_seed_000_example_without_the_inputs_other_issues_add(run):
    request = {k: v for k, v in SEED_000.items() if k not in ("previewSteps", "applyWatermark")}
    ours = {"width": 256, "height": 256, "prompt": "An astronaut riding a rainbow unicorn", "refine": "no_refiner",
            "scheduler": "K_EULER", "guidance_scale": 7.5, "negative_prompt": "", "num_inference_steps": 2}
    assert _pixels(run(dict(request, seed=5))).tolist() == _pixels(run(dict(ours, seed=5))).tolist()


def test_replicate_cog_sdxl_names():
    sent = {"prompt": "a fox", "num_outputs": 2, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.7,
            "refine_steps": 10, "lora_weights": "https://example.com/style.safetensors", "lora_scale": 0.6,
            "disable_safety_checker": True, "prompt_strength": 0.5}
    assert translate(sent).input == {
        "prompt": "a fox", "num_images": 2, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.7,
        "refiner_inference_steps": 10, "loras": [{"path": "https://example.com/style.safetensors", "scale": 0.6}],
        "prompt_strength": 0.5, "negative_prompt": "",
    }
    # cog-sdxl's defaults: no refiner, an empty negative prompt; the plan ignores high_noise_frac.
    assert translate({"prompt": "a fox", "num_outputs": 1, "high_noise_frac": 0.8}).input == {
        "prompt": "a fox", "num_images": 1, "refine": "no_refiner", "negative_prompt": "", "high_noise_frac": 0.8}
    assert translate({"prompt": "a fox", "num_outputs": 1, "negative_prompt": "dark"}).input["negative_prompt"] == "dark"
    # lora_scale with no LoRA (cog sends it always) scales nothing; with one LoRA it is its scale.
    assert "loras" not in translate({"prompt": "a", "lora_scale": 0.6}).input
    one = translate({"prompt": "a", "loras": [{"path": "a/b"}], "lora_scale": 0.3}).input
    assert one["loras"] == [{"path": "a/b", "scale": 0.3}]


@pytest.mark.parametrize(
    "sent, words",
    [
        ({"prompt": "a", "loras": [{"path": "a/b"}, {"path": "c/d"}], "lora_scale": 0.3}, ["'lora_scale'", "single"]),
        ({"prompt": "a", "loras": [{"path": "a/b", "scale": 1}], "lora_scale": 0.3}, ["'lora_scale'", "'loras[0].scale'"]),
        ({"prompt": "a", "num_images": 2, "samples": 2}, ["'num_images'", "'samples'"]),
        ({"prompt": "a", "num_outputs": 2, "numOutputs": 2}, ["'num_outputs'", "'numOutputs'"]),
        ({"text_prompts": [{"text": "a"}], "prompt": "b"}, ["'prompt'", "'text_prompts'"]),
        ({"text_prompts": "a fox"}, ["'text_prompts'", "list"]),
        ({"text_prompts": [{"text": "a", "weight": "heavy"}]}, ["'text_prompts[0].weight'"]),
        ({"text_prompts": [{"text": "a"}], "init_image_mode": "MAGIC"}, ["'init_image_mode'"]),
        ({"text_prompts": [{"text": "a"}], "image_strength": 1}, ["'image_strength'", "less than 1"]),
        ({"text_prompts": [{"text": "a"}], "init_image_mode": "STEP_SCHEDULE", "image_strength": 0.3},
         ["'image_strength'", "STEP_SCHEDULE"]),
        ({"text_prompts": [{"text": "a"}], "step_schedule_end": 0.9}, ["'step_schedule_end'"]),
        ({"prompt": "a", "img_width": 256, "base64": "yes"}, ["'base64'"]),
        ({"prompt": "a", "replicate_weights": "https://x/y.tar"}, ["'replicate_weights'", "'loras'"]),
    ],
)
def test_what_cannot_map_is_named_as_sent(sent, words):
    with pytest.raises(InputError) as error:
        translate(sent)
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize(
    "sent, words",
    [
        ({"prompt": "a", "samples": 5}, ["'samples' must be at least 1 and at most 4, got 5."]),
        ({"prompt": "a", "numberOfInferenceSteps": 0}, ["'numberOfInferenceSteps' must be"]),
        ({"text_prompts": [{"text": "a"}], "cfg_scale": 99}, ["'cfg_scale' must be"]),
        ({"text_prompts": [{"text": "blurry", "weight": -1}]}, ["'text_prompts' is required"]),
        ({"prompt": "a", "img_width": 300}, ["'img_width' must be a multiple of 8"]),
        ({"prompt": "a", "previewSteps": "x" if "preview_steps" in INPUTS else 1}, ["'previewSteps'"]),
        ({"prompt": "a", "loraScale": 7, "loras": [{"path": "a/b"}]}, ["'loraScale' must be"]),
        ({"prompt": "a", "lora_weights": "./missing.safetensors", "num_outputs": 1},
         ["LoRA 'missing.safetensors'", "'lora_weights'", "LORA_DIR"]),
        ({"text_prompts": [{"text": "a"}], "init_image": _png_base64(), "steps": 2, "image_strength": 0.9},
         ["'1 - image_strength' 0.1 x 'steps' 2 leaves no step"]),
    ],
)
def test_errors_from_later_steps_name_the_field_as_sent(run, sent, words):
    error = run(sent)[-1]["error"]
    for word in words:
        assert word in error


def test_stability_text_prompts_become_weighted_prompts():
    request = translate({"text_prompts": [
        {"text": "a lighthouse", "weight": 1}, {"text": "oil painting (old)", "weight": 0.5},
        {"text": "blurry", "weight": -1}, {"text": "text", "weight": -1.4}, {"text": "ignored", "weight": 0},
    ], "seed": 0, "cfg_scale": 7, "steps": 30, "samples": 2, "sampler": "K_EULER"}).input
    assert request == {
        "prompt": "a lighthouse, (oil painting \\(old\\):0.5)", "negative_prompt": "blurry, (text:1.4)",
        "guidance_scale": 7, "num_inference_steps": 30, "num_images": 2, "scheduler": "K_EULER",
    }  # seed 0 means random at Stability: left unset


# The seed 001 example (Bedrock stability.stable-diffusion-xl-v1), steps 50 -> 2, 1024 -> 256.
SEED_001 = {"text_prompts": [{"text": "A beautiful sunset over the mountains"}], "seed": 42, "steps": 2,
            "cfg_scale": 7, "width": 256, "height": 256}


def test_seed_001_stability_bedrock_example_runs(run):
    outputs = run(SEED_001)
    assert outputs[-1]["seed"] == 42 and decode(outputs[-1]["images"][0]).size == (256, 256)
    ours = {"prompt": "A beautiful sunset over the mountains", "seed": 42, "num_inference_steps": 2,
            "guidance_scale": 7, "width": 256, "height": 256}
    assert _pixels(outputs).tolist() == _pixels(run(ours)).tolist()


@pytest.mark.skipif("K_DPMPP_2M" not in INPUTS["scheduler"].get("enum", []), reason="needs issue 4 (sampler names)")
def test_stability_sampler_names_run(run):
    assert decode(run(dict(SEED_001, sampler="K_DPMPP_2M"))[-1]["images"][0]).size == (256, 256)


def test_stability_img2img_keeps_image_strength_of_the_input(run):
    image = _png_base64()
    common = {"seed": 9, "width": 256, "height": 256, "refine": "no_refiner", "guidance_scale": 7}
    stability = {"text_prompts": [{"text": "a red fox"}], "init_image": image, "steps": 4, "seed": 9, "cfg_scale": 7}
    # image_strength 0.35 keeps 35% of the input: diffusers strength (our prompt_strength) 0.65.
    assert translate(dict(stability, image_strength=0.35)).input["prompt_strength"] == 0.65
    assert translate(stability).input["prompt_strength"] == 0.65  # Stability's default image_strength
    assert translate(dict(stability, prompt_strength=0.5)).input["prompt_strength"] == 0.5  # ours, if given
    ours = _pixels(run(dict(common, prompt="a red fox", image=image, num_inference_steps=4, prompt_strength=0.65)))
    kept = _pixels(run(dict(stability, image_strength=0.35, refine="no_refiner")))
    assert kept.tolist() == ours.tolist()
    schedule = dict(stability, init_image_mode="STEP_SCHEDULE", step_schedule_start=0.65, refine="no_refiner")
    assert _pixels(run(schedule)).tolist() == ours.tolist()
    # Keeping more of the input (0.75) is repainting less of it (0.25), not more.
    more_kept = _pixels(run(dict(stability, image_strength=0.75, refine="no_refiner")))
    assert more_kept.tolist() != kept.tolist()
    less_repainted = dict(common, prompt="a red fox", image=image, num_inference_steps=4, prompt_strength=0.25)
    assert more_kept.tolist() == _pixels(run(less_repainted)).tolist()


# The seed 003 example (Segmind), with a real image, steps 25 -> 2 and 512 -> 256.
SEED_003 = {
    "image": _png_base64(), "samples": 1, "prompt": "A fantasy landscape, trending on artstation, mystical sky",
    "negative_prompt": "nude, disfigured, blurry", "scheduler": "DDIM", "num_inference_steps": 4,
    "guidance_scale": 10.5, "strength": 0.75, "seed": 98877465625, "img_width": 256, "img_height": 256,
    "base64": False,
}


def test_seed_003_segmind_example_runs(run):
    outputs = run(SEED_003)
    assert outputs[-1]["seed"] == 98877465625 and decode(outputs[-1]["images"][0]).size == (256, 256)
    ours = {k: v for k, v in SEED_003.items() if k not in ("samples", "strength", "img_width", "img_height", "base64")}
    ours.update(num_images=1, prompt_strength=0.75, width=256, height=256)
    # Segmind's strength is the img2img strength; our refiner's strength is left alone.
    assert _pixels(outputs).tolist() == _pixels(run(ours)).tolist()


def test_segmind_scheduler_names_and_base64():
    assert translate({"prompt": "a", "img_width": 512, "scheduler": "Euler a"}).input["scheduler"] == "K_EULER_ANCESTRAL"
    assert translate({"prompt": "a", "scheduler": "Euler a"}).input["scheduler"] == "Euler a"  # ours: not renamed


@needs("upload", issue=6)
def test_segmind_base64_chooses_inline_or_upload():
    assert translate({"prompt": "a", "base64": True}).input["upload"] is False
    assert translate({"prompt": "a", "base64": False}).input["upload"] is None


def test_this_workers_own_requests_pass_unchanged():
    ours = {"prompt": "a", "num_images": 2, "strength": 0.5, "seed": 0, "high_noise_frac": 0.8,
            "loras": [{"path": "a/b", "scale": 0.5}]}
    translation = translate(ours)
    assert translation.input == ours and translation.sent_as == {}


def test_a_sent_name_with_regex_characters_is_plain_text_in_errors(run):
    # Found by the hypothesis storm: a key ending in a backslash broke the renaming of errors.
    outputs = run({"prompt": "a", "numOutputs": 9, "A\\": 1, "Weird$1": 2})
    assert len(outputs) == 1 and "'numOutputs'" in outputs[0]["error"]


def test_a_cog_sdxl_request_with_high_noise_frac_and_base_image_refiner_runs_with_a_warning(run):
    outputs = run({"prompt": "a fox", "refine": "base_image_refiner", "high_noise_frac": 0.8, "width": 256,
                   "height": 256, "num_inference_steps": 2, "refine_steps": 4, "strength": 0.5, "seed": 3})
    final = outputs[-1]
    assert "images" in final, final
    assert len(final["warnings"]) == 1 and "'high_noise_frac' was ignored" in final["warnings"][0]
