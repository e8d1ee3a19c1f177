"""The union ControlNet (one model, a control mode per image) on tiny weights built in code: a job
equals diffusers' own union pipeline, every task runs, the refusals, and the control images a job
returns when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.models import load_models
from sdxl_worker.runtime.job import run_job
from sdxl_worker.testing.tiny_guides import write_tiny_controlnet, write_tiny_union_controlnet
from tests.helpers import decode, final, photo, pixels, png_data_url, worker_with

SIZE = 256
JOB = {"prompt": "a lighthouse at dusk", "width": SIZE, "height": SIZE, "seed": 4, "num_inference_steps": 5,
       "refine": "no_refiner"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    where = tmp_path_factory.mktemp("union")
    return {"union": write_tiny_union_controlnet(where / "union", seed=5),
            "union6": write_tiny_union_controlnet(where / "union6", seed=6, control_types=6),
            "canny": write_tiny_controlnet(where / "canny", seed=1)}


@pytest.fixture(scope="module")
def guided(folders):
    """CONTROLNET_MODELS=union=...,union6=...,canny=...: two union models (promax's 8 modes, the first
    release's 6) and a single-kind one."""
    return load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu",
                                     controlnets=tuple((name, str(folder)) for name, folder in folders.items())))


def shape(size=(SIZE, SIZE)) -> Image.Image:
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).ellipse((50, 60, 200, 190), fill="white")
    return image


def depth_like(size=(SIZE, SIZE)) -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size[0], dtype=np.uint8), (size[1], 1))
    return Image.fromarray(np.stack([ramp] * 3, axis=2))


def job(models, **inputs) -> list:
    return list(run_job(worker_with(models), {"id": "union", "input": {**JOB, **inputs}}))


def diffusers_union(controlnet, images: list, modes: list[int], **extra) -> np.ndarray:
    """diffusers' own StableDiffusionXLControlNetUnionPipeline on the tiny base with this union model,
    DDIM as the worker's default, the module's job: the reference pixels."""
    from diffusers import DDIMScheduler, StableDiffusionXLControlNetUnionPipeline

    from sdxl_worker.engine.tiny import ensure_tiny_model

    pipe = StableDiffusionXLControlNetUnionPipeline.from_pretrained(ensure_tiny_model() / "base", controlnet=controlnet,
                                                                    add_watermarker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return np.asarray(pipe(JOB["prompt"], control_image=images, control_mode=modes, width=SIZE, height=SIZE,
                           num_inference_steps=5, guidance_scale=7.5, generator=[torch.Generator("cpu").manual_seed(4)],
                           **extra).images[0]).astype(int)


def loaded_union(models):
    """A fresh copy of the worker's union model, as diffusers loads one (the worker's stays untouched)."""
    from diffusers import ControlNetUnionModel

    union = models.controlnets["union"]
    copy = ControlNetUnionModel.from_config(union.config)
    copy.load_state_dict(union.state_dict())
    return copy


EDGES = {"model": "union", "image": png_data_url(shape()), "preprocess": "canny", "mode": "canny"}
DEPTH = {"model": "union", "image": png_data_url(depth_like()), "mode": "depth"}


def test_a_union_job_gives_diffusers_union_pipeline_pixels(guided, folders):
    from diffusers import ControlNetUnionModel

    from sdxl_worker.inputs.control_images import canny

    union = ControlNetUnionModel.from_pretrained(folders["union"])
    # xinsir's numbering: canny 3, depth 1, written out here. Two images; then one, with a window.
    reference = diffusers_union(union, [canny(shape(), 100, 200), depth_like()], [3, 1],
                                controlnet_conditioning_scale=0.8)
    ours = pixels(final(job(guided, controlnets=[{**EDGES, "scale": 0.8}, {**DEPTH, "scale": 0.8}])))
    assert np.abs(ours.astype(int) - reference).max() == 0
    window = {"scale": 0.8, "start": 0.1, "end": 0.9}
    one = diffusers_union(union, [depth_like()], [1], controlnet_conditioning_scale=0.8, control_guidance_start=0.1,
                          control_guidance_end=0.9)
    assert np.abs(pixels(final(job(guided, controlnets=[{**DEPTH, **window}]))).astype(int) - one).max() == 0
    strength = {"scale": 0.8}
    # The mode matters: the same images read as other kinds steer another way.
    swapped = pixels(final(job(guided, controlnets=[{**EDGES, **strength, "mode": "openpose"},
                                                    {**DEPTH, **strength, "mode": "normal"}])))
    assert np.abs(swapped.astype(int) - ours).mean() > 0.25  # 0.5 here: the tiny model steers gently


@pytest.mark.parametrize("task", ["img2img", "inpaint"])
@pytest.mark.parametrize("refine", ["no_refiner", "base_image_refiner"])
def test_a_union_model_guides_img2img_and_inpaint_with_or_without_the_refiner(guided, task, refine):
    inputs = {"image": png_data_url(photo(320, 256)), "width": 320, "height": 256, "refine": refine,
              "refiner_inference_steps": 4, "strength": 0.5}
    if task == "inpaint":
        inputs["mask"] = png_data_url(shape((320, 256)))
    plain = pixels(final(job(guided, **inputs)))
    guided_image = pixels(final(job(guided, controlnets=[EDGES, {**DEPTH, "image": png_data_url(depth_like((320, 256)))}],
                                    **inputs)))
    assert guided_image.shape[:2] == (256, 320)
    assert np.abs(guided_image.astype(int) - plain).mean() > 0.5


def test_union_refusals_name_the_field_before_anything_runs(guided):
    calls = []
    hooks = [network.register_forward_hook(lambda *_: calls.append(1))
             for network in (guided.base.unet, *guided.controlnets.values())]

    def error(**inputs) -> str:
        outputs = job(guided, **inputs)
        assert len(outputs) == 1 and calls == [], outputs
        return outputs[0]["error"]

    canny_model = {"model": "canny", "image": EDGES["image"], "preprocess": "canny"}
    assert error(controlnets=[{**EDGES, "mode": None}]).startswith(
        "'controlnets[0].mode' is needed: 'union' is a union ControlNet")
    assert error(controlnets=[{**canny_model, "mode": "canny"}]) == (
        "'controlnets[0].mode' applies to a union ControlNet, and 'canny' is a single-kind one; leave 'mode' out.")
    assert error(controlnets=[{**EDGES, "model": "union6", "mode": "tile"}]) == (
        "'controlnets[0].mode' tile needs a union ControlNet with 7 control modes (the promax variant); "
        "'union6' has 6.")
    assert error(controlnets=[EDGES, canny_model]).startswith("'controlnets' mixes a union ControlNet with other")
    assert error(controlnets=[EDGES, {**DEPTH, "scale": 0.5}]).startswith(
        "'controlnets' entries of one union ControlNet must share 'scale', 'start' and 'end'")
    assert error(controlnets=[{**EDGES, "mode": "sketchy"}]).startswith("'controlnets[0].mode' must be one of openpose,")
    assert error(controlnets=[{**EDGES, "start": 0.2}, {**DEPTH, "start": 0.2}]).startswith(
        "'controlnets' give one union ControlNet several images and a 'start' or 'end'")
    for hook in hooks:
        hook.remove()


def test_the_control_images_a_job_used_come_back_when_asked(guided):
    from sdxl_worker.inputs.control_images import canny

    result = final(job(guided, controlnets=[EDGES, DEPTH], return_control_images=True))
    edges, depth = (np.asarray(decode(url).convert("RGB")) for url in result["control_images"])
    assert np.array_equal(edges, np.asarray(canny(shape(), 100, 200)))  # the edge map, not the photo sent
    assert np.array_equal(depth, np.asarray(depth_like()))
    assert "control_images" not in final(job(guided, controlnets=[EDGES]))


def test_a_union_model_counts_once_in_the_work_budget_however_many_images(guided):
    from sdxl_worker import config
    from sdxl_worker.runtime.worker import Worker

    # 256x256 is 0.0625 of a unit; 5 steps, each a UNet call and half a call per ControlNet
    # (engine/work.py), x2 for guidance: one ControlNet 0.9375 units, two 1.25. Two union images
    # cost what one costs.
    worker = Worker.build(guided, config.load({"MAX_JOB_WORK": "1.0"}))
    one = list(run_job(worker, {"id": "w", "input": {**JOB, "controlnets": [EDGES]}}))
    two = list(run_job(worker, {"id": "w", "input": {**JOB, "controlnets": [EDGES, DEPTH]}}))
    assert "error" not in one[-1] and "error" not in two[-1], (one[-1], two[-1])
    twice_canny = {"model": "canny", "image": EDGES["image"], "preprocess": "canny"}
    refused = list(run_job(worker, {"id": "w", "input": {**JOB, "controlnets": [twice_canny, twice_canny]}}))
    assert "2 ControlNet(s)" in refused[-1]["error"]


# --- preprocess: depth (DEPTH_MODEL), on a tiny Depth Anything V2 built in code ---


@pytest.fixture(scope="module")
def with_depth(folders, tmp_path_factory):
    from sdxl_worker.testing.tiny_guides import write_tiny_depth_model

    depth_folder = write_tiny_depth_model(tmp_path_factory.mktemp("depth") / "depth")
    models = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu", depth=str(depth_folder),
                                       controlnets=(("canny", str(folders["canny"])), ("union", str(folders["union"])))))
    return models, depth_folder


def reference_depth(folder, image: Image.Image) -> Image.Image:
    """The depth map made the way docs/control.md says, step by step with transformers: the model's
    relative inverse depth, resized bicubically to the image, scaled to 0-255 (near bright)."""
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    model, processor = AutoModelForDepthEstimation.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        predicted = model(**processor(images=image, return_tensors="pt")).predicted_depth
    depth = torch.nn.functional.interpolate(predicted[:, None], size=image.size[::-1], mode="bicubic",
                                            align_corners=False)[0, 0]
    grey = ((depth - depth.min()) / (depth.max() - depth.min()) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.stack([grey] * 3, axis=2))


def test_a_photo_in_a_depth_guided_image_out_equal_to_the_depth_model_then_diffusers(with_depth):


    models, depth_folder = with_depth
    picture = photo(SIZE, SIZE)
    result = final(list(run_job(worker_with(models), {"id": "depth", "input": {
        **JOB, "return_control_images": True,
        "controlnets": [{"model": "union", "mode": "depth", "image": png_data_url(picture), "preprocess": "depth"}]}})))
    expected_map = reference_depth(depth_folder, picture)
    used = np.asarray(decode(result["control_images"][0]).convert("RGB"))
    assert np.abs(used.astype(int) - np.asarray(expected_map)).max() <= 1  # the same map, to a rounding
    reference = diffusers_union(loaded_union(models), [decode(result["control_images"][0]).convert("RGB")], [1])
    assert np.abs(pixels(result).astype(int) - reference).max() == 0


def test_depth_without_a_depth_model_is_refused_naming_the_field(guided):
    outputs = job(guided, controlnets=[{"model": "canny", "image": EDGES["image"], "preprocess": "depth"}])
    assert outputs[-1]["error"].startswith("'controlnets[0].preprocess' depth needs a depth model, and this worker "
                                           "has none; set DEPTH_MODEL")


def test_a_depth_map_counts_in_the_work_budget(with_depth):
    from sdxl_worker import config
    from sdxl_worker.runtime.worker import Worker

    models, _ = with_depth
    worker = Worker.build(models, config.load({"MAX_JOB_WORK": "0.001"}))
    refused = list(run_job(worker, {"id": "w", "input": {**JOB, "controlnets": [
        {"model": "canny", "image": EDGES["image"], "preprocess": "depth"}]}}))
    assert "1 depth map(s) at 0.02 each" in refused[-1]["error"]


# --- preprocess: pose (POSE_MODEL + POSE_DETECTOR), on a tiny ViTPose and RT-DETR built in code ---


@pytest.fixture(scope="module")
def with_pose(folders, tmp_path_factory):
    from sdxl_worker.testing.tiny_guides import write_tiny_pose_models

    where = tmp_path_factory.mktemp("pose")
    pose, detector = write_tiny_pose_models(where / "finds")
    blind_pose, blind_detector = write_tiny_pose_models(where / "blind", finds_people=False)

    def loaded(pose_folder, detector_folder):
        return load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu", pose=str(pose_folder),
                                         pose_detector=str(detector_folder),
                                         controlnets=(("union", str(folders["union"])),)))

    return loaded(pose, detector), (pose, detector), loaded(blind_pose, blind_detector)


def reference_people(pose_folder, detector_folder, image: Image.Image) -> list:
    """The people found the way docs/control.md says, step by step with transformers: RT-DETR's
    persons (label 0, score 0.3 or more, at most 10), ViTPose's 17 keypoints in each box."""
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, VitPoseForPoseEstimation

    from sdxl_worker.engine.pose import openpose_points

    detector, detector_processor = (AutoModelForObjectDetection.from_pretrained(detector_folder),
                                    AutoImageProcessor.from_pretrained(detector_folder))
    model, processor = VitPoseForPoseEstimation.from_pretrained(pose_folder), AutoImageProcessor.from_pretrained(pose_folder)
    with torch.no_grad():
        found = detector_processor.post_process_object_detection(
            detector(**detector_processor(images=image, return_tensors="pt")), threshold=0.3,
            target_sizes=[image.size[::-1]])[0]
        people = found["labels"] == 0
        boxes = found["boxes"][people][found["scores"][people].argsort(descending=True)[:10]].numpy()
        boxes[:, 2:] -= boxes[:, :2]
        poses = processor.post_process_pose_estimation(model(**processor(image, boxes=[boxes], return_tensors="pt")),
                                                       boxes=[boxes])[0]
    return [openpose_points(person["keypoints"].numpy(), person["scores"].numpy()) for person in poses]


def test_a_photo_in_a_pose_guided_image_out_equal_to_the_pose_models_then_diffusers(with_pose):

    from sdxl_worker.engine.pose import render

    models, (pose_folder, detector_folder), _ = with_pose
    picture = photo(SIZE, SIZE)
    result = final(list(run_job(worker_with(models), {"id": "pose", "input": {
        **JOB, "return_control_images": True,
        "controlnets": [{"model": "union", "mode": "openpose", "image": png_data_url(picture), "preprocess": "pose"}]}})))
    people = reference_people(pose_folder, detector_folder, picture)
    assert people  # the tiny detector takes every query for a person
    used = decode(result["control_images"][0]).convert("RGB")
    assert np.array_equal(np.asarray(used), np.asarray(render(people, (SIZE, SIZE))))
    assert np.abs(pixels(result).astype(int) - diffusers_union(loaded_union(models), [used], [0])).max() == 0


def test_a_photo_with_nobody_in_it_is_refused_naming_the_image_before_denoising(with_pose):
    _, _, blind = with_pose
    calls = []
    hook = blind.base.unet.register_forward_hook(lambda *_: calls.append(1))
    outputs = list(run_job(worker_with(blind), {"id": "nobody", "input": {**JOB, "controlnets": [
        {"model": "union", "mode": "openpose", "image": png_data_url(photo(SIZE, SIZE)), "preprocess": "pose"}]}}))
    hook.remove()
    assert outputs == [{"error": "'controlnets[0].image' shows no person the pose detector could find; send a photo "
                                 "with a person in it, or a pose skeleton with preprocess none."}]
    assert calls == []


def test_pose_without_pose_models_is_refused_and_they_are_set_together(guided):
    from sdxl_worker import config

    outputs = job(guided, controlnets=[{**EDGES, "preprocess": "pose", "mode": "openpose"}])
    assert outputs[-1]["error"].startswith("'controlnets[0].preprocess' pose needs a pose model, and this worker has "
                                           "none; set POSE_MODEL and POSE_DETECTOR")
    with pytest.raises(config.ConfigError, match="POSE_MODEL and POSE_DETECTOR go together"):
        config.models({"POSE_MODEL": "usyd-community/vitpose-base-simple"})


@pytest.mark.parametrize("mode", ["openpose", "depth", "softedge", "canny", "normal", "segment", "tile", "inpaint"])
def test_each_union_mode_guides_img2img_and_inpaint_at_the_asked_size(guided, mode):
    """The eight numbers of the promax model, one name each, on the two tasks with an input image."""
    task = "inpaint" if mode in ("depth", "canny", "segment", "inpaint") else "img2img"
    inputs = {"image": png_data_url(photo(320, 256)), "width": 320, "height": 256, "num_inference_steps": 3,
              "controlnets": [{"model": "union", "mode": mode, "image": png_data_url(shape((320, 256)))}]}
    if task == "inpaint":
        inputs["mask"] = png_data_url(shape((320, 256)))
    assert decode(final(job(guided, **inputs))["images"][0]).size == (320, 256)


def test_a_union_model_whose_config_names_another_class_still_loads_as_one(folders, tmp_path):
    """xinsir's repository predates diffusers' ControlNetUnionModel: its config names another class.
    The control modes in it are what make it a union model, for loading and for the checks alike."""
    import json
    import shutil

    copy = tmp_path / "xinsir-like"
    shutil.copytree(folders["union"], copy)
    settings = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**settings, "_class_name": "ControlNetModel"}))
    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu",
                                       controlnets=(("union", str(copy)),)))
    assert type(models.controlnets["union"]).__name__ == "ControlNetUnionModel"
    assert "images" in final(job(models, controlnets=[EDGES, DEPTH]))


def test_control_images_that_would_fill_the_output_are_refused_before_the_first_step(guided):
    from sdxl_worker import config
    from sdxl_worker.runtime.worker import Worker

    calls = []
    hook = guided.base.unet.register_forward_hook(lambda *_: calls.append(1))
    worker = Worker.build(guided, config.load({"INLINE_LIMIT_MB": "0.3"}))  # 300,000 bytes
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    outputs = list(run_job(worker, {"id": "big", "input": {**JOB, "return_control_images": True, "controlnets": [
        {"model": "union", "mode": "depth", "image": png_data_url(noise)}]}}))  # about 260,000 bytes as a PNG
    hook.remove()
    assert outputs[-1]["error"].startswith("The 1 control image(s) come to ")
    assert "leave 'return_control_images' out" in outputs[-1]["error"] and calls == []


def test_a_preprocessor_s_model_that_cannot_be_loaded_stops_the_start_naming_its_setting(tmp_path):
    from sdxl_worker.errors import StartupError
    from sdxl_worker.testing.tiny_guides import write_tiny_depth_model, write_tiny_pose_models

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StartupError, match=r"^Could not load DEPTH_MODEL='.*empty' \(the folder\): "):
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", depth=str(empty)))
    depth = write_tiny_depth_model(tmp_path / "depth")
    _, detector = write_tiny_pose_models(tmp_path / "pose")
    with pytest.raises(StartupError, match=r"^POSE_MODEL='.*depth' is a depth_anything model, not a ViTPose"):
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", pose=str(depth),
                                  pose_detector=str(detector)))
    with pytest.raises(StartupError, match=r"^Could not load POSE_DETECTOR='.*depth' \(the folder\): "):
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", pose=str(detector.parent / "pose"),
                                  pose_detector=str(depth)))


def test_an_over_budget_union_job_does_not_suggest_fewer_controlnets(guided):
    from sdxl_worker import config
    from sdxl_worker.runtime.worker import Worker

    worker = Worker.build(guided, config.load({"MAX_JOB_WORK": "0.5"}))
    refused = list(run_job(worker, {"id": "w", "input": {**JOB, "controlnets": [EDGES, DEPTH]}}))[-1]["error"]
    assert "lower 'num_inference_steps'." in refused and "'controlnets'" not in refused
