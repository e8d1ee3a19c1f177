"""Inpainting in every refine mode, batches and the watermark, on the tiny model."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from sdxl_worker.engine import generate
from sdxl_worker.engine.plan import make_plan, with_image_size
from sdxl_worker.request.types import Request
from tests.helpers import FAST, decode, final, photo, pixels, png_data_url

SIZE = 256
INPAINT = {**FAST, "image": png_data_url(photo(SIZE, SIZE)), "prompt_strength": 0.9, "width": None, "height": None}
REFINE_MODES = ["no_refiner", "base_image_refiner", "expert_ensemble_refiner"]


def mask_image(kind: str, size=(SIZE, SIZE)) -> Image.Image:
    """all-black (keep everything), all-white (repaint everything) or right half white."""
    mask = Image.new("L", size, 255 if kind == "white" else 0)
    if kind == "right":
        mask.paste(255, (size[0] // 2, 0, size[0], size[1]))
    return mask


def final_latents(models, inputs: dict, mask: str) -> dict:
    """The latents after the last step of each stage, as the on_step callback sees them."""
    seen = {}
    request = Request.from_input(inputs)
    image = decode(inputs["image"]).convert("RGB")
    plan = with_image_size(make_plan(request, has_refiner=True), image.size)

    def on_step(stage, step, kwargs):
        seen[stage] = kwargs["latents"].clone()

    generate.run(models, plan, image, on_step=on_step, mask=mask_image(mask))
    return seen


# --- inpainting ---

def test_image_and_mask_make_an_inpaint_job_of_the_images_size(run):
    mask = png_data_url(mask_image("right", (64, 64)))  # another size than the image: stretched to it
    output = final(run({**INPAINT, "mask": mask, "image": png_data_url(photo(300, 203)), "refine": "no_refiner"}))
    # 203 is under the 256 minimum: scaled up 256/203 keeping the aspect ratio, 378.3 rounded down to 376.
    assert decode(output["images"][0]).size == (376, 256)
    output = final(run({**INPAINT, "mask": mask, "image": png_data_url(photo(300, 267)), "refine": "no_refiner"}))
    assert decode(output["images"][0]).size == (296, 264)  # in range: both sides rounded down to a multiple of 8
    sized = final(run({**INPAINT, "mask": mask, "width": 256, "height": 320}))
    assert decode(sized["images"][0]).size == (256, 320)


@pytest.mark.parametrize("refine", ["no_refiner"])  # the refine modes: in the latent test below
def test_the_mask_reaches_the_pipelines(run, refine):
    black = pixels(final(run({**INPAINT, "refine": refine, "mask": png_data_url(mask_image("black"))})))
    white = pixels(final(run({**INPAINT, "refine": refine, "mask": png_data_url(mask_image("white"))})))
    assert np.abs(black.astype(int) - white).mean() > 5


@pytest.mark.parametrize("refine", REFINE_MODES)
def test_every_stage_keeps_the_black_half_and_repaints_the_white_half(models, refine):
    inputs = {**INPAINT, "refine": refine, "mask": png_data_url(mask_image("right")), "num_inference_steps": 5}
    half = final_latents(models, inputs, "right")
    keep_all = final_latents(models, inputs, "black")
    stage = "refiner" if refine != "no_refiner" else "base"
    kept, repainted = slice(0, SIZE // 16), slice(SIZE // 16, None)  # latent columns, 8 pixels each
    # The kept half is exactly the input image's latents, whatever the other half does...
    assert torch_close(half[stage][..., kept], keep_all[stage][..., kept])
    # ...and the white half is repainted.
    assert not torch_close(half[stage][..., repainted], keep_all[stage][..., repainted])
    if stage == "refiner":
        # The refiner ends on the clean input there, not on noise left from a hand-off.
        assert torch_close(half[stage][..., kept], clean_latents(models, INPAINT["image"])[..., kept])


def clean_latents(models, data_url: str):
    """The input image's own latents: what "keep" means in latent space."""
    import torch

    vae = models.inpaint.vae
    pixels = models.inpaint.image_processor.preprocess(decode(data_url).convert("RGB"), height=SIZE, width=SIZE)
    with torch.inference_mode():
        return vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor


def torch_close(a, b) -> bool:
    return bool((a - b).abs().max() < 1e-4)


@pytest.mark.parametrize(
    "inputs, steps",
    [
        ({"num_inference_steps": 10, "high_noise_frac": 0.8, "scheduler": "K_EULER"}, {"base": 8, "refiner": 2}),
        ({"num_inference_steps": 6, "refiner_inference_steps": 10, "strength": 0.3, "refine": "base_image_refiner"},
         {"base": 6, "refiner": 3}),
    ],
)
def test_inpaint_refine_modes_run_the_promised_steps(models, inputs, steps):
    seen = {"base": 0, "refiner": 0}
    request = Request.from_input({**INPAINT, **inputs, "prompt_strength": 1.0, "mask": png_data_url(mask_image("right"))})
    image = decode(INPAINT["image"]).convert("RGB")
    plan = with_image_size(make_plan(request, has_refiner=True), image.size)
    generate.run(models, plan, image, mask=mask_image("right"),
                 on_step=lambda stage, step, kwargs: seen.__setitem__(stage, step))
    assert seen == steps


def test_a_mask_without_an_image_is_refused(run):
    outputs = run({"prompt": "a", "mask": png_data_url(mask_image("white"))})
    assert "'mask'" in outputs[-1]["error"]


def test_a_mask_that_is_not_an_image_is_named(run):
    outputs = run({**INPAINT, "mask": "bm90IGFuIGltYWdl"})
    assert "'mask'" in outputs[-1]["error"]


# --- img2img input handling, end to end ---

def test_img2img_honours_exif_orientation(run):
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    photo(320, 256).save(buffer, format="JPEG", exif=exif)
    data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    output = final(run({**FAST, "image": data_url, "width": None, "height": None, "refine": "no_refiner",
                        "prompt_strength": 0.5}))
    assert decode(output["images"][0]).size == (256, 320)


# --- batches ---

def test_a_batch_is_one_pass_over_all_images(models):
    batch_sizes, steps = set(), []
    request = Request.from_input({**FAST, "num_images": 4, "refine": "base_image_refiner"})
    plan = make_plan(request, has_refiner=True)

    def on_step(stage, step, kwargs):
        batch_sizes.add(kwargs["latents"].shape[0])
        steps.append(stage)

    result = generate.run(models, plan, on_step=on_step)
    assert batch_sizes == {4} and len(result.images) == 4
    assert steps.count("base") == 4 and steps.count("refiner") == 2  # steps once, not once per image


@pytest.mark.parametrize("refine", ["base_image_refiner"])  # both stages get the per-image generators
def test_each_image_of_a_batch_is_distinct_and_made_again_alone_from_its_seed(run, refine):
    batch = final(run({**FAST, "refine": refine, "num_images": 4, "seed": 100}))
    images = [pixels(batch, i).astype(int) for i in range(4)]
    assert batch["seeds"] == [100, 101, 102, 103]
    for i in range(4):
        for j in range(i):
            assert np.abs(images[i] - images[j]).mean() > 5
    for i, seed in enumerate(batch["seeds"]):
        alone = pixels(final(run({**FAST, "refine": refine, "seed": seed}))).astype(int)
        # Batched CPU maths may round differently from a batch of one: a level or two, no more.
        assert np.abs(alone - images[i]).max() <= 2, f"image {i}"






