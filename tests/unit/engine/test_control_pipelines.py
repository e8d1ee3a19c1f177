"""ControlNet pipelines per job (engine/control_pipelines.py): made from the base's own components,
the job's controls as diffusers' arguments. What a controlled job draws is in tests/scenarios/test_control.py."""

from types import SimpleNamespace

import pytest

from sdxl_worker.engine.control_pipelines import arguments, load_controlnets, pipeline_for
from sdxl_worker.request.types import ControlNetInput
from sdxl_worker.testing.tiny_guides import write_tiny_controlnet


def _control(model="canny", scale=0.8, start=0.0, end=1.0) -> ControlNetInput:
    return ControlNetInput(model, "data:,", "canny", 100, 200, scale, start, end)


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory):
    from diffusers import ControlNetModel

    where = tmp_path_factory.mktemp("controlnets")
    return {name: ControlNetModel.from_pretrained(write_tiny_controlnet(where / name, seed))
            for seed, name in enumerate(["canny", "depth"], start=1)}


def test_one_control_is_given_as_single_values_and_txt2img_calls_its_image_image():
    plan = SimpleNamespace(task="txt2img", controlnets=[_control(scale=0.5, start=0.1, end=0.9)])
    assert arguments(plan, ["edges"]) == {"image": "edges", "controlnet_conditioning_scale": 0.5,
                                          "control_guidance_start": 0.1, "control_guidance_end": 0.9}


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
def test_several_controls_are_given_as_lists_in_order_as_control_image(task):
    plan = SimpleNamespace(task=task, controlnets=[_control(scale=1), _control("depth", 0.25, 0.2, 0.6)])
    assert arguments(plan, ["edges", "depth map"]) == {
        "control_image": ["edges", "depth map"], "controlnet_conditioning_scale": [1.0, 0.25],
        "control_guidance_start": [0.0, 0.2], "control_guidance_end": [1.0, 0.6]}


@pytest.mark.parametrize("task, cls", [("txt2img", "StableDiffusionXLControlNetPipeline"),
                                       ("img2img", "StableDiffusionXLControlNetImg2ImgPipeline"),
                                       ("inpaint", "StableDiffusionXLControlNetInpaintPipeline")])
def test_each_task_gets_its_pipeline_on_the_bases_own_components(models, controlnets, task, cls):
    pipe = pipeline_for(SimpleNamespace(controlnets=controlnets), task, models.base, ["canny"])
    assert type(pipe).__name__ == cls
    assert pipe.unet is models.base.unet and pipe.vae is models.base.vae  # no weights copied
    assert pipe.text_encoder_2 is models.base.text_encoder_2
    assert pipe.controlnet is controlnets["canny"] and pipe.watermark is None


def test_several_controlnets_run_as_one_multi_controlnet_in_the_named_order(models, controlnets):
    pipe = pipeline_for(SimpleNamespace(controlnets=controlnets), "txt2img", models.base, ["depth", "canny"])
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel"
    assert list(pipe.controlnet.nets) == [controlnets["depth"], controlnets["canny"]]


def test_no_controlnets_are_loaded_unless_configured():
    assert load_controlnets(SimpleNamespace(controlnets=()), loader=None, resolve=None) == {}
