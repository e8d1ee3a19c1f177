"""ControlNet and IP-Adapter on tiny weights built in code: every path, scale 0 = no control to the
pixel, several ControlNets at once, the refiner after them, IP-Adapter on and off, the refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.models import load_models
from sdxl_worker.runtime.job import run_job
from sdxl_worker.testing.tiny_guides import write_tiny_controlnet, write_tiny_ip_adapter
from tests.helpers import final, photo, pixels, png_data_url, worker_with

SIZE = 256
JOB = {"prompt": "a lighthouse at dusk", "width": SIZE, "height": SIZE, "seed": 4, "num_inference_steps": 5,
       "refine": "no_refiner"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    where = tmp_path_factory.mktemp("guides")
    return {"canny": write_tiny_controlnet(where / "canny", seed=1), "depth": write_tiny_controlnet(where / "depth", 2),
            "ip": write_tiny_ip_adapter(where / "ip-adapter")}


@pytest.fixture(scope="module")
def guided(folders):
    """The tiny model with two ControlNets and an IP-Adapter, as CONTROLNET_MODELS and IP_ADAPTER_MODEL load them."""
    return load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu",
                                controlnets=(("canny", str(folders["canny"])), ("depth", str(folders["depth"]))),
                                ip_adapter=str(folders["ip"])))


def drawn_shape(size=(SIZE, SIZE)) -> Image.Image:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).ellipse((50, 60, 200, 190), fill="white")
    return image


def job(models, settings: dict | None = None, **inputs) -> list:
    """Every output of a job on ``models``, on a worker with these ``settings`` (environment variables)."""
    return list(run_job(worker_with(models, **(settings or {})), {"id": "guided", "input": {**JOB, **inputs}}))


def image_of(models, **inputs) -> np.ndarray:
    return pixels(final(job(models, **inputs)))


CANNY = {"model": "canny", "image": png_data_url(drawn_shape()), "preprocess": "canny"}


@pytest.mark.parametrize("task", ["txt2img", "img2img", "inpaint"])
def test_each_path_returns_the_requested_size_and_control_changes_the_image(guided, task):
    inputs = {}
    if task != "txt2img":
        inputs["image"] = png_data_url(photo(320, 256))
        inputs.update(width=320, height=256)  # the control image is resized to this output size
    if task == "inpaint":
        inputs["mask"] = png_data_url(drawn_shape((320, 256)))
    plain = image_of(guided, **inputs)
    controlled = image_of(guided, controlnets=[CANNY], **inputs)
    assert controlled.shape[:2] == (256, 320 if task != "txt2img" else SIZE)
    assert np.abs(controlled.astype(int) - plain).mean() > 0.5
    # Scale 0: the ControlNet pipeline with no control is the plain pipeline, pixel for pixel.
    assert image_of(guided, controlnets=[{**CANNY, "scale": 0}], **inputs).tolist() == plain.tolist()


def test_a_controlnet_job_gives_diffusers_controlnet_pipeline_pixels(guided, folders):
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionXLControlNetPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.inputs.control_images import canny

    controlnet = ControlNetModel.from_pretrained(folders["canny"])
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(ensure_tiny_model() / "base", controlnet=controlnet,
                                                               add_watermarker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(JOB["prompt"], image=canny(drawn_shape(), 100, 200), width=SIZE, height=SIZE,
                     num_inference_steps=5, guidance_scale=7.5, controlnet_conditioning_scale=0.8,
                     control_guidance_start=0.1, control_guidance_end=0.9,
                     generator=[torch.Generator("cpu").manual_seed(4)]).images[0]
    ours = image_of(guided, controlnets=[{**CANNY, "scale": 0.8, "start": 0.1, "end": 0.9}])
    assert np.abs(ours.astype(int) - np.asarray(reference).astype(int)).max() == 0


def test_several_controlnets_at_once_with_a_lora_and_previews(guided, tmp_path):
    from sdxl_worker.testing.tiny_loras import tiny_lora

    (tmp_path / "fox.safetensors").write_bytes(tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1))
    depth = {"model": "depth", "image": png_data_url(photo(SIZE, SIZE)), "scale": 0.6, "start": 0.2, "end": 0.8}
    one = image_of(guided, controlnets=[CANNY])
    outputs = job(guided, {"LORA_DIR": str(tmp_path)}, controlnets=[CANNY, depth], loras=[{"path": "fox.safetensors"}],
                  preview_steps=1)
    assert len(outputs) == 6 and "step" in outputs[0]  # five previews, then the image
    assert np.abs(pixels(final(outputs)).astype(int) - one).mean() > 0.5
    both = image_of(guided, controlnets=[CANNY, depth])
    assert both.tolist() != one.tolist()


@pytest.mark.parametrize("refine", ["base_image_refiner", "expert_ensemble_refiner"])
@pytest.mark.parametrize("task", ["txt2img", "img2img"])
def test_the_refiner_follows_a_controlled_base_in_every_mode(guided, refine, task):
    inputs = {"image": png_data_url(photo(SIZE, SIZE))} if task == "img2img" else {}
    out = final(job(guided, controlnets=[CANNY], refine=refine, refiner_inference_steps=4, strength=0.5, **inputs))
    assert "refiner" in out["timings"] and pixels(out).shape[:2] == (SIZE, SIZE)
    # With the ControlNet at scale 0, the same job as without: the base stops at the same step.
    assert image_of(guided, controlnets=[{**CANNY, "scale": 0}], refine=refine, refiner_inference_steps=4,
                    strength=0.5, **inputs).tolist() == pixels(final(
                        job(guided, refine=refine, refiner_inference_steps=4, strength=0.5, **inputs))).tolist()


def test_ip_adapter_steers_the_image_and_a_job_after_it_equals_the_job_before(guided):
    before = image_of(guided)
    reference = png_data_url(photo(200, 200))
    steered = image_of(guided, ip_adapter={"image": reference, "scale": 1.0})
    assert np.abs(steered.astype(int) - before).mean() > 0.5
    several = image_of(guided, ip_adapter={"image": [reference, png_data_url(drawn_shape())]})
    assert several.tolist() != steered.tolist()
    with_refiner = final(job(guided, ip_adapter={"image": reference}, controlnets=[CANNY], refine="base_image_refiner",
                             refiner_inference_steps=4, strength=0.5))
    assert "refiner" in with_refiner["timings"]
    assert image_of(guided).tolist() == before.tolist()  # the UNet is back as it was
    assert guided.base.unet.encoder_hid_proj is None


def test_ip_adapter_scale_sets_how_strongly_the_reference_steers(guided):
    """A user turning 'scale' sees the effect grow; at 0 the job is the job without an adapter."""
    before = image_of(guided)
    reference = png_data_url(photo(200, 200))
    faint = image_of(guided, ip_adapter={"image": reference, "scale": 0.3})
    strong = image_of(guided, ip_adapter={"image": reference, "scale": 1.0})
    assert faint.tolist() != strong.tolist()
    assert np.abs(strong.astype(int) - before).mean() > np.abs(faint.astype(int) - before).mean()
    assert image_of(guided, ip_adapter={"image": reference, "scale": 0}).tolist() == before.tolist()


def test_canny_thresholds_set_the_edges_that_guide_a_job(guided):
    """Non-default thresholds change a canny job's image; the defaults are 100 and 200 (docs/control.md)."""
    shaded = Image.linear_gradient("L").resize((SIZE, SIZE)).convert("RGB")  # edges at every strength
    canny = {"model": "canny", "image": png_data_url(shaded), "preprocess": "canny"}
    default = image_of(guided, controlnets=[canny])
    assert image_of(guided, controlnets=[{**canny, "low_threshold": 100, "high_threshold": 200}]).tolist() == \
        default.tolist()
    assert image_of(guided, controlnets=[{**canny, "low_threshold": 1, "high_threshold": 2}]).tolist() != \
        default.tolist()


def test_an_ip_adapter_plus_with_the_vit_h_encoder_loads_steers_and_comes_off(tmp_path):
    """ip-adapter-plus_sdxl_vit-h, the layout docs/control.md names: a resampler projection with
    attention layers of its own, its encoder in models/image_encoder. It crashed the start before."""
    from sdxl_worker.testing.tiny_guides import PLUS_ENCODER, PLUS_WEIGHT

    plus = load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu",
                                ip_adapter=str(write_tiny_ip_adapter(tmp_path / "plus", plus=True)),
                                ip_adapter_weight=PLUS_WEIGHT, ip_adapter_encoder=PLUS_ENCODER))
    processors = len(plus.base.unet.attn_processors)
    before = image_of(plus)
    reference = png_data_url(photo(200, 200))
    weak, strong = (image_of(plus, ip_adapter={"image": reference, "scale": scale}) for scale in (0.3, 1.0))
    assert np.abs(strong.astype(int) - before).mean() > 0.5 and weak.tolist() != strong.tolist()
    assert image_of(plus, ip_adapter={"image": reference, "scale": 0}).tolist() == before.tolist()
    assert image_of(plus).tolist() == before.tolist()  # taken off: the UNet as it was
    assert plus.base.unet.encoder_hid_proj is None and len(plus.base.unet.attn_processors) == processors


def test_refusals_name_the_field_before_anything_runs(guided, models):
    calls = []
    hooks = [network.register_forward_hook(lambda *_: calls.append(1))
             for network in (guided.base.unet, models.base.unet, *guided.controlnets.values())]

    def error(on, **inputs):
        outputs = job(on, **inputs)
        assert len(outputs) == 1, outputs
        assert calls == [], "a network ran before the refusal"
        return outputs[0]["error"]

    assert error(guided, controlnets=[{**CANNY, "model": "openpose"}]).startswith(
        "'controlnets[0].model' is 'openpose', which is not a ControlNet of this worker; use one of canny, depth.")
    assert "this worker has none: set CONTROLNET_MODELS" in error(models, controlnets=[CANNY])
    assert error(guided, controlnets=[{**CANNY, "image": "data:image/png;base64,bm90IGFuIGltYWdl"}]).startswith(
        "'controlnets[0].image'")
    assert "'controlnets[1].start' (0.7) must be less than 'controlnets[1].end' (0.5)" in error(
        guided, controlnets=[CANNY, {**CANNY, "start": 0.7, "end": 0.5}])
    assert error(guided, controlnets=[CANNY] * 4) == "'controlnets' must have at most 3 items."
    assert error(models, ip_adapter={"image": CANNY["image"]}).startswith(
        "'ip_adapter' needs an IP-Adapter, and this worker has none; set IP_ADAPTER_MODEL")
    assert "'ip_adapter' guides the base, and a refiner-only job" in error(
        guided, image_url=CANNY["image"], ip_adapter={"image": CANNY["image"]})
    offloaded = replace(guided, settings=replace(guided.settings, cpu_offload=True))
    for field, value in (("controlnets", [CANNY]), ("ip_adapter", {"image": CANNY["image"]})):
        message = error(offloaded, **{field: value})
        assert message.startswith(f"'{field}' cannot run on this worker: CPU_OFFLOAD=1") and message.count(". ") == 0
    for hook in hooks:
        hook.remove()


def test_a_reference_image_far_from_square_is_cut_to_4_to_1_around_its_centre(guided):
    from sdxl_worker.inputs.control_images import ip_adapter_image

    strip = Image.new("RGB", (4000, 10), "red")
    strip.paste(Image.new("RGB", (40, 10), "blue"), (1980, 0))
    cut = ip_adapter_image(strip)
    assert cut.size == (40, 10) and cut.getpixel((0, 5)) == cut.getpixel((39, 5)) == (0, 0, 255)
    assert ip_adapter_image(strip.rotate(90, expand=True)).size == (10, 40)
    assert ip_adapter_image(photo(300, 200)).size == (300, 200)  # left as it is
    assert final(job(guided, ip_adapter={"image": png_data_url(Image.new("RGB", (100000, 1), "gray"))}))




def test_a_stopped_ip_adapter_job_leaves_the_unet_as_it_was(guided):
    from sdxl_worker.runtime.stopping import CANCELLED, Stop

    before = image_of(guided)
    stop = Stop()
    outputs = []
    stopped = {"id": "stopped", "input": {**JOB, "ip_adapter": {"image": CANNY["image"]}, "controlnets": [CANNY],
                                          "preview_steps": 1}}
    for output in run_job(worker_with(guided), stopped, stop=stop):
        outputs.append(output)
        stop.stop(CANCELLED)
    assert "error" in outputs[-1]
    assert guided.base.unet.encoder_hid_proj is None and guided.base.image_encoder is None
    assert image_of(guided).tolist() == before.tolist()


def test_the_start_up_total_and_the_prefetch_count_the_controlnets_and_the_ip_adapter(guided, models, folders):
    from sdxl_worker.engine.models import loaded_bytes, model_bytes, weight_files

    extra = sum(model_bytes(controlnet) for controlnet in guided.controlnets.values())
    extra += model_bytes(guided.ip_adapter.image_encoder) + model_bytes(guided.ip_adapter.projection)
    assert loaded_bytes(guided) >= loaded_bytes(models) + extra
    files = [str(path) for path in weight_files(guided.settings)]
    for where in (folders["canny"], folders["depth"]):
        assert any(path.startswith(str(where)) for path in files)
    assert any(path.endswith("ip-adapter_sdxl.safetensors") for path in files)
    assert any("image_encoder" in path for path in files)
