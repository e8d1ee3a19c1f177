"""Same seed, same image: the worker's pixels against plain diffusers', on the tiny model, on CPU.

The reference is diffusers' own SDXL pipelines, loaded with ``from_pretrained`` from the folders
the worker saved the tiny model to, called as cog-sdxl and worker-sdxl call them: prompt and
negative prompt as text, one CPU ``torch.Generator(seed + i)`` per image, passed to the base and
then (the same objects, their streams continuing) to the refiner. Every case must match to the
pixel: max difference 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_worker.testing.tiny_loras import kohya_lora, tiny_lora
from tests.helpers import decode, png_data_url

SIZE = 256
STEPS = 5


@pytest.fixture(scope="module")
def reference():
    """Plain diffusers pipelines on the tiny model's saved folders (their own copies of the weights)."""
    from diffusers import (
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
    )

    from sdxl_worker.engine.tiny import ensure_tiny_model

    folder = ensure_tiny_model()
    base = StableDiffusionXLPipeline.from_pretrained(folder / "base", add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder / "refiner", add_watermarker=False)
    img2img = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder / "base", add_watermarker=False)
    inpaint = StableDiffusionXLInpaintPipeline.from_pretrained(folder / "base", add_watermarker=False)
    for pipe in (base, refiner, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    return {"base": base, "refiner": refiner, "img2img": img2img, "inpaint": inpaint}


def _scheduler(pipe, name: str):
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
    )

    cls = {"DDIM": DDIMScheduler, "K_EULER": EulerDiscreteScheduler,
           "K_EULER_ANCESTRAL": EulerAncestralDiscreteScheduler, "DPMSolverMultistep": DPMSolverMultistepScheduler}[name]
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def _generators(seed: int, count: int = 1) -> list:
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(count)]


def _photo(size=(SIZE, SIZE)) -> Image.Image:
    """A smooth, non-trivial input image (gradients and a disc), the same on every run."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    disc = ((x - size[0] / 2) ** 2 + (y - size[1] / 2) ** 2) < (min(size) / 4) ** 2
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], np.where(disc, 230, 40)], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


def _mask(size=(SIZE, SIZE)) -> Image.Image:
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[: size[1] // 2, :] = 255  # repaint the top half
    return Image.fromarray(mask)


def _worker_images(run, job: dict) -> list[np.ndarray]:
    outputs = run(job)
    final = outputs[-1]
    assert "images" in final, final
    return [np.asarray(decode(image).convert("RGB")) for image in final["images"]]


def _max_diff(ours: list[np.ndarray], theirs: list[Image.Image]) -> int:
    assert len(ours) == len(theirs)
    return max(int(np.abs(a.astype(int) - np.asarray(b.convert("RGB")).astype(int)).max()) for a, b in zip(ours, theirs))


def _txt2img(ref, scheduler="DDIM", **kwargs):
    base = ref["base"]
    _scheduler(base, scheduler)
    return base(width=SIZE, height=SIZE, num_inference_steps=STEPS, guidance_scale=7.5, **kwargs).images


def _ensemble(ref, scheduler, prompt, negative_prompt, seed, frac, steps):
    base, refiner = ref["base"], ref["refiner"]
    _scheduler(base, scheduler)
    _scheduler(refiner, scheduler)
    generator = _generators(seed)
    common = dict(prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=steps, guidance_scale=7.5,
                  generator=generator)
    latents = base(**common, width=SIZE, height=SIZE, denoising_end=frac, output_type="latent").images
    return refiner(**common, image=latents, denoising_start=frac).images


def _base_then_refiner(ref, prompt, seed, strength, refiner_steps):
    base, refiner = ref["base"], ref["refiner"]
    _scheduler(base, "DDIM")
    _scheduler(refiner, "DDIM")
    generator = _generators(seed)
    latents = base(prompt=prompt, width=SIZE, height=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                   generator=generator, output_type="latent").images
    return refiner(prompt=prompt, image=latents, strength=strength, num_inference_steps=refiner_steps,
                   guidance_scale=7.5, generator=generator).images


JOB = {"prompt": "a red fox in the snow", "width": SIZE, "height": SIZE, "num_inference_steps": STEPS,
       "guidance_scale": 7.5, "seed": 11, "refine": "no_refiner", "scheduler": "DDIM"}


def test_txt2img_with_a_negative_prompt(run, reference):
    ours = _worker_images(run, dict(JOB, negative_prompt="blurry, low quality"))
    theirs = _txt2img(reference, prompt=JOB["prompt"], negative_prompt="blurry, low quality", generator=_generators(11))
    assert _max_diff(ours, theirs) == 0


def test_txt2img_with_an_empty_negative_prompt_encodes_the_empty_text(run, reference):
    ours = _worker_images(run, dict(JOB, negative_prompt=""))
    theirs = _txt2img(reference, prompt=JOB["prompt"], negative_prompt="", generator=_generators(11))
    assert _max_diff(ours, theirs) == 0
    zeroed = _txt2img(reference, prompt=JOB["prompt"], negative_prompt=None, generator=_generators(11))
    assert _max_diff(ours, zeroed) > 0  # "" and no negative prompt are two different images


def test_txt2img_without_a_negative_prompt_zeroes_it(run, reference):
    ours = _worker_images(run, JOB)
    theirs = _txt2img(reference, prompt=JOB["prompt"], generator=_generators(11))
    assert _max_diff(ours, theirs) == 0


@pytest.mark.parametrize("scheduler", ["K_EULER", "K_EULER_ANCESTRAL"])
def test_expert_ensemble_at_0_8(run, reference, scheduler):
    # 10 steps: the refiner takes 2, so an ancestral sampler draws noise in the refiner.
    job = dict(JOB, refine="expert_ensemble_refiner", high_noise_frac=0.8, scheduler=scheduler, negative_prompt="dark",
               num_inference_steps=10)
    ours = _worker_images(run, job)
    theirs = _ensemble(reference, scheduler, JOB["prompt"], "dark", 11, 0.8, steps=10)
    assert _max_diff(ours, theirs) == 0


def test_base_image_refiner_at_strength_0_3(run, reference):
    job = dict(JOB, refine="base_image_refiner", strength=0.3, refiner_inference_steps=10)
    ours = _worker_images(run, job)
    theirs = _base_then_refiner(reference, JOB["prompt"], 11, 0.3, 10)
    assert _max_diff(ours, theirs) == 0


def test_img2img(run, reference):
    image = _photo()
    job = dict(JOB, image=png_data_url(image), prompt_strength=0.6)
    del job["width"], job["height"]
    ours = _worker_images(run, job)
    pipe = reference["img2img"]
    _scheduler(pipe, "DDIM")
    theirs = pipe(prompt=JOB["prompt"], image=image, strength=0.6, num_inference_steps=STEPS, guidance_scale=7.5,
                  generator=_generators(11)).images
    assert _max_diff(ours, theirs) == 0


def test_inpaint(run, reference):
    image, mask = _photo(), _mask()
    job = dict(JOB, image=png_data_url(image), mask=png_data_url(mask), prompt_strength=0.9)
    del job["width"], job["height"]
    ours = _worker_images(run, job)
    pipe = reference["inpaint"]
    _scheduler(pipe, "DDIM")
    theirs = pipe(prompt=JOB["prompt"], image=image, mask_image=mask, width=SIZE, height=SIZE, strength=0.9,
                  num_inference_steps=STEPS, guidance_scale=7.5, generator=_generators(11)).images
    assert _max_diff(ours, theirs) == 0


def test_two_images_with_seeds_5_and_6(run, reference):
    ours = _worker_images(run, dict(JOB, seed=5, num_images=2))
    theirs = _txt2img(reference, prompt=JOB["prompt"], num_images_per_prompt=2, generator=_generators(5, 2))
    assert _max_diff(ours, theirs) == 0
    assert _max_diff(ours[:1], theirs[1:]) > 0  # two different images, not one twice


def test_dpm_plus_plus_2m(run, reference):
    ours = _worker_images(run, dict(JOB, scheduler="DPMSolverMultistep"))
    theirs = _txt2img(reference, "DPMSolverMultistep", prompt=JOB["prompt"], generator=_generators(11))
    assert _max_diff(ours, theirs) == 0


def test_a_lora_job(run, reference, tmp_path, worker_env):
    folder = tmp_path / "fox-style"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(
        tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=4))
    worker_env["LORA_DIR"] = str(tmp_path)
    ours = _worker_images(run, dict(JOB, loras=[{"path": "fox-style", "scale": 0.7}]))
    assert _max_diff(ours, _with_lora(reference, folder, "pytorch_lora_weights.safetensors", 0.7)) == 0
    assert _max_diff(ours, _txt2img(reference, prompt=JOB["prompt"], generator=_generators(11))) > 0


def _with_lora(reference, folder, weight_name: str, scale: float) -> list:
    """JOB's images from diffusers itself, the LoRA loaded with load_lora_weights at ``scale``."""
    base = reference["base"]
    base.load_lora_weights(str(folder), weight_name=weight_name, adapter_name="under_test")
    try:
        base.set_adapters(["under_test"], [scale])
        return _txt2img(reference, prompt=JOB["prompt"], generator=_generators(11))
    finally:
        base.unload_lora_weights()


@pytest.mark.parametrize("full, alphas", [(False, True), (True, False)], ids=["attention-with-alpha", "full-no-alpha"])
def test_a_kohya_named_lora_job(run, reference, tmp_path, worker_env, full, alphas):
    """The naming model sites mostly serve (kohya/sd-scripts: lora_unet_input_blocks_..., lora_te1_,
    lora_te2_), UNet and both text encoders: the pixels of diffusers' own load_lora_weights."""
    (tmp_path / "kohya.safetensors").write_bytes(kohya_lora(seed=6, full=full, alphas=alphas))
    worker_env["LORA_DIR"] = str(tmp_path)
    ours = _worker_images(run, dict(JOB, loras=[{"path": "kohya.safetensors", "scale": 0.8}]))
    assert _max_diff(ours, _with_lora(reference, tmp_path, "kohya.safetensors", 0.8)) == 0
    assert _max_diff(ours, _txt2img(reference, prompt=JOB["prompt"], generator=_generators(11))) > 0


@pytest.mark.parametrize("refine", ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"])
def test_previews_on_and_off_give_the_same_image(run, refine):
    job = dict(JOB, refine=refine, scheduler="K_EULER_ANCESTRAL", refiner_inference_steps=6, strength=0.5)
    off = _worker_images(run, dict(job, preview_steps=0))
    on = run(dict(job, preview_steps=1))
    assert sum("preview" in chunk for chunk in on) >= STEPS
    assert _max_diff(off, [decode(image) for image in on[-1]["images"]]) == 0


@pytest.mark.parametrize("prompt", ['a (red fox) in the snow', 'a sign saying "hello"', "[dark] room, high-quality"])
def test_brackets_and_quotes_without_weights_are_encoded_as_written(run, reference, prompt):
    ours = _worker_images(run, dict(JOB, prompt=prompt))
    theirs = _txt2img(reference, prompt=prompt, generator=_generators(11))
    assert _max_diff(ours, theirs) == 0


def test_guidance_1_runs_without_classifier_free_guidance(run, reference):
    ours = _worker_images(run, dict(JOB, guidance_scale=1.0, negative_prompt="dark"))
    base = reference["base"]
    _scheduler(base, "DDIM")
    theirs = base(prompt=JOB["prompt"], negative_prompt="dark", width=SIZE, height=SIZE, num_inference_steps=STEPS,
                  guidance_scale=1.0, generator=_generators(11)).images
    assert _max_diff(ours, theirs) == 0


def test_two_images_through_the_expert_ensemble(run, reference):
    job = dict(JOB, seed=5, num_images=2, refine="expert_ensemble_refiner", high_noise_frac=0.8,
               scheduler="K_EULER_ANCESTRAL", num_inference_steps=10)
    ours = _worker_images(run, job)
    base, refiner = reference["base"], reference["refiner"]
    _scheduler(base, "K_EULER_ANCESTRAL")
    _scheduler(refiner, "K_EULER_ANCESTRAL")
    generator = _generators(5, 2)
    common = dict(prompt=JOB["prompt"], num_inference_steps=10, guidance_scale=7.5, generator=generator,
                  num_images_per_prompt=2)
    latents = base(**common, width=SIZE, height=SIZE, denoising_end=0.8, output_type="latent").images
    theirs = refiner(**common, image=latents, denoising_start=0.8).images
    assert _max_diff(ours, theirs) == 0


def test_img2img_then_the_base_image_refiner(run, reference):
    image = _photo()
    job = dict(JOB, image=png_data_url(image), prompt_strength=0.6, refine="base_image_refiner", strength=0.3,
               refiner_inference_steps=10)
    del job["width"], job["height"]
    ours = _worker_images(run, job)
    img2img, refiner = reference["img2img"], reference["refiner"]
    _scheduler(img2img, "DDIM")
    _scheduler(refiner, "DDIM")
    generator = _generators(11)
    latents = img2img(prompt=JOB["prompt"], image=image, strength=0.6, num_inference_steps=STEPS, guidance_scale=7.5,
                      generator=generator, output_type="latent").images
    theirs = refiner(prompt=JOB["prompt"], image=latents, strength=0.3, num_inference_steps=10, guidance_scale=7.5,
                     generator=generator).images
    assert _max_diff(ours, theirs) == 0


def test_the_refiner_alone_on_an_image_url(run, reference):
    image = _photo()
    job = {"prompt": JOB["prompt"], "image_url": png_data_url(image), "strength": 0.3, "refiner_inference_steps": 10,
           "seed": 11, "scheduler": "DDIM"}
    ours = _worker_images(run, job)
    refiner = reference["refiner"]
    _scheduler(refiner, "DDIM")
    theirs = refiner(prompt=JOB["prompt"], image=image, strength=0.3, num_inference_steps=10, guidance_scale=7.5,
                     generator=_generators(11)).images
    assert _max_diff(ours, theirs) == 0
