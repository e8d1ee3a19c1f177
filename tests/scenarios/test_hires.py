"""The high-resolution second pass (``hires``) on the tiny model: the same pixels as the two calls made
with diffusers' public API, previews through both passes, the asked size, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_worker.runtime.job import run_job
from tests.helpers import decode, final, pixels, worker_with

JOB = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "seed": 4, "num_inference_steps": 4,
       "refine": "no_refiner"}


def job(models, settings: dict | None = None, **inputs) -> list:
    return list(run_job(worker_with(models, **(settings or {})), {"id": "hires", "input": {**JOB, **inputs}}))


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_a_hires_job_equals_diffusers_two_calls(models, upscaler):
    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model

    base = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model() / "base", add_watermarker=False)
    redraw = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    for pipe in (base, redraw):
        pipe.scheduler = DDIMScheduler.from_config(base.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(4)  # one stream for both calls, as the job's
    first = base(JOB["prompt"], width=256, height=256, num_inference_steps=4, guidance_scale=7.5,
                 generator=[generator], output_type="latent" if upscaler == "latent" else "pil").images
    if upscaler == "latent":  # 256 -> 384: the latents 32x32 -> 48x48, bilinear
        upscaled = torch.nn.functional.interpolate(first, size=(48, 48), mode="bilinear", align_corners=False)
    else:
        upscaled = [first[0].resize((384, 384), Image.Resampling.LANCZOS)]
    reference = redraw(JOB["prompt"], image=upscaled, strength=0.5, num_inference_steps=6, guidance_scale=7.5,
                       generator=[generator]).images[0]
    ours = final(job(models, hires={"scale": 1.5, "strength": 0.5, "steps": 6, "upscaler": upscaler}))
    assert decode(ours["images"][0]).size == (384, 384)
    assert np.abs(pixels(ours).astype(int) - np.asarray(reference).astype(int)).max() == 0


def test_previews_and_progress_run_through_both_passes_with_the_refiner(models):
    outputs = job(models, refine="base_image_refiner", refiner_inference_steps=4, strength=0.5, preview_steps=1,
                  hires={"scale": 2, "strength": 0.5, "steps": 4})
    previews = [(output["stage"], output["step"], output["total_steps"]) for output in outputs[:-1]]
    # 4 base steps, 2 refiner steps (0.5 of 4), 2 hires steps (0.5 of 4), counted as one run of 8.
    assert previews == [("base", 1, 8), ("base", 2, 8), ("base", 3, 8), ("base", 4, 8), ("refiner", 5, 8),
                        ("refiner", 6, 8), ("hires", 7, 8), ("hires", 8, 8)]
    result = final(outputs)
    assert decode(result["images"][0]).size == (512, 512) and result["timings"]["hires"] > 0


@pytest.mark.timeout(300)  # a 2048x2048 pass on two CPU cores: about 20 s with the reference, more beside other tests
def test_a_1024_first_pass_with_scale_2_comes_back_2048_as_diffusers_makes_it(models):
    """The issue's done-when: 1024x1024 to 2048x2048, previews through both passes, the diffusers reference's
    pixels; above a megapixel the pass's VAE works in tiles, which the reference turns on through diffusers'
    public API too."""
    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model

    # The PNG of a random-weight 2048x2048 image is about 28 MB: over the default inline limit it would
    # come back as a JPEG (with a warning), which no pixel comparison survives.
    outputs = job(models, {"INLINE_LIMIT_MB": "100"}, width=1024, height=1024, num_inference_steps=2,
                  preview_steps=1, hires={"scale": 2, "steps": 3})
    previews = [(output["stage"], output["step"], output["total_steps"]) for output in outputs[:-1]]
    assert previews == [("base", 1, 3), ("base", 2, 3), ("hires", 3, 3)]  # 0.35 of 3 hires steps: 1
    result = final(outputs)
    assert decode(result["images"][0]).size == (2048, 2048)

    base = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model() / "base", add_watermarker=False)
    redraw = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    for pipe in (base, redraw):
        pipe.scheduler = DDIMScheduler.from_config(base.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(4)
    first = base(JOB["prompt"], width=1024, height=1024, num_inference_steps=2, guidance_scale=7.5,
                 generator=[generator]).images[0]
    redraw.vae.enable_tiling()
    reference = redraw(JOB["prompt"], image=[first.resize((2048, 2048), Image.Resampling.LANCZOS)], strength=0.35,
                       num_inference_steps=3, guidance_scale=7.5, generator=[generator]).images[0]
    assert np.abs(pixels(result).astype(int) - np.asarray(reference).astype(int)).max() == 0


def test_hires_refusals_name_the_field_before_anything_runs(models):
    calls = []
    hook = models.base.unet.register_forward_hook(lambda *_: calls.append(1))

    def error(settings=None, **inputs) -> str:
        outputs = job(models, settings, **inputs)
        assert len(outputs) == 1 and calls == [], outputs
        return outputs[0]["error"]

    try:
        assert error(width=1536, height=1024, hires={"scale": 1.5}) == (
            "'hires.scale' 1.5 makes 2304x1536 of 1536x1024, over 2048 pixels a side; lower 'hires.scale' to at "
            "most 1.33, or lower 'width'/'height'.")
        # 1544 x 1.33 is 2053.5, 2056 at a multiple of 8: the largest scale that fits is 1.32 (2040).
        assert "lower 'hires.scale' to at most 1.32," in error(width=1544, height=256, hires={"scale": 1.5})
        assert error(width=1648, height=256, hires={"scale": 1.25}).endswith(
            "no 'hires.scale' fits: lower 'width'/'height' to at most 1632 a side.")
        assert error(image="data:image/png;base64,AAAA", mask="data:image/png;base64,AAAA",
                     hires={"upscaler": "latent"}).startswith("'hires.upscaler' latent cannot keep an inpaint's mask")
        assert error(hires={"strength": 0}).startswith("'hires.strength' must be greater than 0")
        assert error(hires={"scale": 3}).startswith("'hires.scale' must be at least 1.25 and at most 2")
        assert error(image_url="data:image/png;base64,AAAA", hires={}).startswith(
            "'hires' redraws what the base made, and a refiner-only job ('task' refine, or 'image_url')")
        over = error({"MAX_JOB_WORK": "100"}, width=1024, height=1024, hires={"scale": 2, "steps": 100, "strength": 1})
        assert "then 100 hires steps at 2048x2048" in over and over.endswith("'hires.scale' or 'hires.steps'.")
        assert error(hires={"upscaler": "model"}) == (
            "'hires.upscaler' model needs an upscaling model, and this worker has none; set UPSCALER_MODEL "
            "(docs/modes.md), or use lanczos or latent.")
        assert error(hires={"steps": 2}) == ("'hires.strength' 0.35 x 'hires.steps' 2 leaves the second pass no "
                                             "step to run; raise either.")
    finally:
        hook.remove()


def test_an_inpaint_s_second_pass_keeps_what_the_mask_keeps(models):
    """The second pass of an inpaint is an inpaint too: across seeds, the kept area stays (as the first
    pass keeps it, through the VAE) while the repainted area changes."""
    from tests.helpers import photo, png_data_url

    mask = Image.new("L", (320, 256), 0)
    mask.paste(255, (100, 80, 220, 180))
    inputs = {"image": png_data_url(photo(320, 256)), "mask": png_data_url(mask), "width": 320, "height": 256,
              "num_inference_steps": 8, "hires": {"scale": 1.5, "steps": 8}}
    one, two = (pixels(final(job(models, seed=seed, **inputs))).astype(int) for seed in (1, 2))
    assert one.shape[:2] == (384, 480)
    kept = np.ones((384, 480), bool)
    kept[110:280, 140:340] = False  # the repainted rectangle, upscaled 1.5x, with a margin
    repainted = np.zeros((384, 480), bool)
    repainted[135:255, 165:315] = True
    assert np.abs(one - two)[kept].mean() < 12  # 6.9 for an inpaint without hires, the VAE's round trip
    assert np.abs(one - two)[repainted].mean() > 2 * np.abs(one - two)[kept].mean()


# --- the model upscaler: UPSCALER_MODEL, an ESRGAN-family model read by spandrel ---


@pytest.fixture(scope="module")
def upscaling(tmp_path_factory):
    """The tiny base with a tiny Real-ESRGAN x2 (a .pth under params_ema, as its releases) as UPSCALER_MODEL,
    loaded as the worker loads it; and the file."""
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
    from tests.helpers.upscaling import import_spandrel

    import_spandrel()
    file = write_tiny_esrgan(tmp_path_factory.mktemp("upscaler") / "RealESRGAN_x2.pth", "real-esrgan", scale=2)
    return load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", upscaler=str(file))), file


@pytest.mark.parametrize("layout", ["real-esrgan x2 .pth", "esrgan x4 .safetensors"])
def test_a_model_upscaled_hires_job_equals_diffusers_and_spandrel_calls(upscaling, tmp_path, layout):
    """The first pass, the upscaling model (2x, or 4x then Lanczos down to 1.5x), the img2img pass:
    the same pixels as diffusers' pipelines and spandrel's model called by hand."""
    from dataclasses import replace

    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.engine.upscaler import load_upscaler
    from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
    from tests.helpers.upscaling import reference_upscale

    models, file = upscaling
    if layout.startswith("esrgan"):  # the original ESRGAN layout of the model sites' 4x files
        file = write_tiny_esrgan(tmp_path / "4x-model.safetensors", "esrgan", scale=4)
        models = replace(models, upscaler=load_upscaler(str(file), "", "cpu", torch.float32, None))
    base = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_model() / "base", add_watermarker=False)
    redraw = StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    for pipe in (base, redraw):
        pipe.scheduler = DDIMScheduler.from_config(base.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    ours = final(job(models, num_images=2, hires={"scale": 1.5, "strength": 0.5, "steps": 6, "upscaler": "model"}))
    assert ours["seeds"] == [4, 5]
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in (4, 5)]  # one stream per image, both calls
    first = base(JOB["prompt"], width=256, height=256, num_inference_steps=4, guidance_scale=7.5,
                 num_images_per_prompt=2, generator=generators).images
    upscaled = [reference_upscale(file, image).resize((384, 384), Image.Resampling.LANCZOS) for image in first]
    reference = redraw(JOB["prompt"], image=upscaled, strength=0.5, num_inference_steps=6, guidance_scale=7.5,
                       num_images_per_prompt=2, generator=generators).images
    for index in (0, 1):  # each image upscaled from its own first pass
        assert decode(ours["images"][index]).size == (384, 384)
        assert np.abs(pixels(ours, index).astype(int) - np.asarray(reference[index]).astype(int)).max() == 0
    # The upscale is the model's: a Lanczos upscale redrawn the same way is another image.
    lanczos = final(job(models, num_images=2, hires={"scale": 1.5, "strength": 0.5, "steps": 6, "upscaler": "lanczos"}))
    assert np.abs(pixels(lanczos).astype(int) - pixels(ours).astype(int)).mean() > 1


def test_an_inpaint_s_second_pass_can_take_the_model_upscale(upscaling):
    from tests.helpers import photo, png_data_url

    models, _ = upscaling
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    result = final(job(models, image=png_data_url(photo(256, 256)), mask=png_data_url(mask),
                       hires={"scale": 1.5, "steps": 4, "strength": 0.5, "upscaler": "model"}))
    assert decode(result["images"][0]).size == (384, 384)


def test_the_upscaling_model_counts_in_the_budget(upscaling, monkeypatch):
    """The model's work decides, for every image: the job fits the budget with Lanczos and is refused with the model."""
    models, _ = upscaling
    # As if it were the real ESRGAN x4: 37.6 T operations on a 1024x1024 image, 35.85 M a pixel (the tiny
    # one counts 0.12 M). The job: 2 images of 512x512, one base step (0.25 units each), a 1024x1024 hires
    # step (1 unit each), no guidance: 2.5; the model on each 512x512 image (one tile):
    # 512^2 x 35.85e6 / 6.76e12 = 1.39 units, 2.78 for both. Budget 4.
    monkeypatch.setattr(models.upscaler, "flops_per_pixel", 35.85e6)
    inputs = dict(width=512, height=512, num_images=2, num_inference_steps=1, guidance_scale=1)
    assert "images" in final(job(models, {"MAX_JOB_WORK": "4"}, **inputs, hires={"steps": 1, "strength": 1}))
    over = job(models, {"MAX_JOB_WORK": "4"}, **inputs, hires={"steps": 1, "strength": 1, "upscaler": "model"})
    assert len(over) == 1 and over[0]["error"] == (
        "This job is 5.3 units of work, 1.3x the worker's budget of 4 (MAX_JOB_WORK; a unit is one model call on one "
        "1024x1024 image: 2 image(s) of 512x512, 1 base steps, then 1 hires steps at 1024x1024, 2.8 for the upscaling "
        "model); lower 'num_images', 'num_inference_steps', 'hires.scale', 'hires.steps' or 'hires.upscaler' "
        "(lanczos costs nothing).")
