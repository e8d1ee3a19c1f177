"""Planning decisions, and the check pass that reads them, without a model."""

import pytest

from sdxl_worker.engine.plan import fit_image_size, fits_the_range, make_plan, output_size, with_image_size
from sdxl_worker.errors import InputError
from sdxl_worker.request.types import Request
from sdxl_worker.runtime.checks import Abilities, check


def plan(has_refiner=True, **inputs):
    """The plan, then the check pass on it: as a job runs them."""
    inputs.setdefault("prompt", "a cat")
    request = Request.from_input(inputs)
    planned = make_plan(request, has_refiner)
    check(request, planned, Abilities(has_refiner=has_refiner))
    return planned


def test_the_plan_itself_refuses_nothing_the_check_pass_would():
    request = Request.from_input({"prompt": "a", "refine": "base_image_refiner", "strength": 0.01})
    planned = make_plan(request, True)  # it decides, whatever it is given
    assert planned.refine == "base_image_refiner"
    with pytest.raises(InputError, match="'strength'"):
        check(request, planned, Abilities(has_refiner=True))


def test_txt2img_refines_the_base_image_by_default():
    p = plan()
    assert (p.task, p.refine, p.width, p.height) == ("txt2img", "base_image_refiner", 1024, 1024)


def test_high_noise_frac_selects_the_expert_ensemble():
    p = plan(high_noise_frac=0.7)
    assert (p.refine, p.high_noise_frac) == ("expert_ensemble_refiner", 0.7)
    assert plan(refine="expert_ensemble_refiner").high_noise_frac == 0.8


def test_image_url_is_the_refiner_alone_and_image_is_img2img():
    assert plan(image_url="https://e.com/a.png").task == "refine"
    p = plan(image="https://e.com/a.png")
    assert (p.task, p.width, p.height) == ("img2img", None, None)


def test_without_a_refiner_nothing_is_refined():
    assert plan(has_refiner=False).refine == "no_refiner"
    with pytest.raises(InputError, match="'refine'"):
        plan(has_refiner=False, refine="base_image_refiner")
    with pytest.raises(InputError, match="REFINER_MODEL"):
        plan(has_refiner=False, image_url="https://e.com/a.png")


def test_seeds_count_up_from_the_given_one_or_a_random_one():
    assert plan(seed=7, num_images=3).seeds == (7, 8, 9)
    drawn = {plan(num_images=2).seeds[0] for _ in range(5)}
    assert len(drawn) > 1 and all(0 <= s < 2**63 for s in drawn)


@pytest.mark.parametrize("inputs, mode", [
    ({"refine": "base_image_refiner"}, "base_image_refiner"),
    ({"refine": "no_refiner"}, "no_refiner"),
    ({"image_url": "https://e.com/a.png"}, "base_image_refiner"),
])
def test_high_noise_frac_with_another_mode_is_ignored_with_one_warning(inputs, mode):
    p = plan(high_noise_frac=0.8, **inputs)
    assert (p.refine, p.high_noise_frac) == (mode, None)
    assert len(p.warnings) == 1 and "'high_noise_frac' was ignored" in p.warnings[0] and mode in p.warnings[0]
    assert plan(high_noise_frac=0.8).warnings == ()  # the ensemble uses it


def test_steps_that_round_to_nothing_are_refused():
    with pytest.raises(InputError, match="'strength'"):
        plan(strength=0.01, refiner_inference_steps=50)
    with pytest.raises(InputError, match="'prompt_strength'"):
        plan(image="https://e.com/a.png", prompt_strength=0.01, num_inference_steps=10)


def test_image_and_mask_are_inpainting_at_the_images_size():
    p = plan(image="https://e.com/a.png", mask="https://e.com/m.png")
    assert (p.task, p.width, p.height) == ("inpaint", None, None)
    assert plan(image="https://e.com/a.png", mask="https://e.com/m.png", task="inpaint").task == "inpaint"
    with pytest.raises(InputError, match="prompt_strength"):
        plan(image="https://e.com/a.png", mask="https://e.com/m.png", num_inference_steps=2, prompt_strength=0.2)


def decided(**inputs):
    """The plan alone, for a worker that has what the job names (no check pass)."""
    return make_plan(Request.from_input({"prompt": "a cat", **inputs}), True)


def test_the_plan_carries_the_requests_settings_under_their_own_names():
    p = decided(prompt="a fox", negative_prompt="blur", apply_watermark=True, preview_steps=3, preview_size=128,
             preview_format="webp", preview_quality=60, output_format="jpeg", output_quality=70, upload=False,
             ip_adapter={"image": "https://e.com/r.png", "scale": 0.25}, seed=11, num_images=2, guidance_scale=4,
             num_inference_steps=12, scheduler="K_EULER", refiner_inference_steps=9, strength=0.5)
    assert (p.prompt, p.negative_prompt, p.apply_watermark, p.ip_adapter_scale) == ("a fox", "blur", True, 0.25)
    assert (p.preview_steps, p.preview_size, p.preview_format, p.preview_quality) == (3, 128, "webp", 60)
    assert (p.output_format, p.output_quality, p.upload, p.seeds) == ("jpeg", 70, False, (11, 12))
    assert (p.guidance_scale, p.num_inference_steps, p.scheduler) == (4, 12, "K_EULER")
    assert (p.refiner_inference_steps, p.strength) == (9, 0.5)
    named = decided(model="community/model", preset="lcm-4", loras=[{"path": "a/b.safetensors", "scale": 0.5}])
    assert (named.model, named.preset) == ("community/model", "lcm-4")
    assert [(lora.path, lora.scale) for lora in named.loras] == [("a/b.safetensors", 0.5)]
    assert decided().ip_adapter_scale is None


def test_a_random_seed_leaves_room_for_every_image_of_the_job(monkeypatch):
    seeds = {decided(num_images=4).seeds for _ in range(20)}
    assert len(seeds) == 20 and all(s[-1] <= 2**63 - 1 for s in seeds)
    monkeypatch.setattr("secrets.randbelow", lambda below: below - 1)  # the largest seed it could draw
    assert decided(num_images=4).seeds[-1] <= 2**63 - 1


def test_a_negative_prompt_with_a_preset_without_guidance_is_a_warning():
    warned = decided(preset="lightning-4", negative_prompt="blur").warnings
    assert warned == ("'negative_prompt' had no effect: 'preset' 'lightning-4' runs without classifier-free "
                      "guidance (guidance_scale 0).",)
    assert decided(preset="lcm-4", negative_prompt="blur").warnings == (
        "'negative_prompt' had no effect: 'preset' 'lcm-4' runs without classifier-free guidance (guidance_scale 1).",)
    assert decided(negative_prompt="blur", guidance_scale=1).warnings == ()  # no preset: nothing to warn of
    assert decided(preset="lcm-4", guidance_scale=2, negative_prompt="blur").warnings == ()  # guided: it counts
    assert decided(preset="lightning-4").warnings == ()
    both = decided(preset="lightning-4", negative_prompt="blur", high_noise_frac=0.8).warnings
    assert len(both) == 2 and both[0].startswith("'high_noise_frac' was ignored")


# --- the output size of a job sized by its input image (docs/modes.md, "Sizes") ---


@pytest.mark.parametrize("width, height, image, size", [
    (640, 448, (3000, 3000), (640, 448)),  # both sides given: the image's size does not matter
    (None, None, (1000, 600), (1000, 600)),  # within the range: kept, each side down to a multiple of 8
    (None, None, (1001, 603), (1000, 600)),
    (None, None, (3000, 1500), (2048, 1024)),  # too large: the long side shrinks to 2048
    (None, None, (200, 100), (512, 256)),  # too small: the short side grows to 256
    (None, None, (4000, 100), (2048, 256)),  # wider than 8:1: clamped at both ends
    (768, None, (1000, 500), (768, 384)),  # one side given: the other follows the image
    (None, 512, (1000, 500), (1024, 512)),
    (2048, None, (100, 1000), (2048, 2048)),  # ... kept within the range
    (None, 256, (10, 1000), (256, 256)),
    (768, None, (1024, 1023), (768, 760)),  # 767.25 rounds down to a multiple of 8
])
def test_an_images_size_becomes_the_output_size_within_the_range(width, height, image, size):
    assert output_size(width, height, image) == size


def test_once_the_image_is_read_the_plan_takes_its_size_and_keeps_everything_else():
    p = decided(image="https://e.com/a.png", width=768, num_inference_steps=20, strength=0.5, seed=5)
    assert (p.width, p.height) == (768, None)
    sized = with_image_size(p, (1000, 500))
    assert (sized.width, sized.height) == (768, 384)
    assert (sized.task, sized.num_inference_steps, sized.strength, sized.seeds) == ("img2img", 20, 0.5, (5,))
    assert (p.width, p.height) == (768, None), "the plan it came from is unchanged"
    by_height = with_image_size(decided(image="https://e.com/a.png", height=512), (1000, 500))
    assert (by_height.width, by_height.height) == (1024, 512)
    whole = with_image_size(decided(image="https://e.com/a.png"), (3000, 1500))
    assert (whole.width, whole.height) == (2048, 1024)


@pytest.mark.parametrize("width, height, fits", [
    (2048, 256, True), (256, 2048, True), (2049, 256, False), (1000, 125, True), (1001, 125, False), (1, 1, True),
    (8000, 1000, True), (8001, 1000, False),
])
def test_an_aspect_ratio_fits_the_range_up_to_8_to_1(width, height, fits):
    assert fits_the_range(width, height) is fits


@pytest.mark.parametrize("width, height, size", [
    (2048, 2048, (2048, 2048)), (2049, 2049, (2048, 2048)), (255, 255, (256, 256)), (256, 257, (256, 256)),
    (4096, 1024, (2048, 512)), (300, 1200, (296, 1200)), (100, 400, (256, 1024)), (1023.9999999, 1024, (1024, 1024)),
])
def test_fitting_an_image_keeps_its_aspect_ratio_in_multiples_of_8(width, height, size):
    assert fit_image_size(width, height) == size
