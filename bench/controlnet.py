"""What ControlNets, the union ControlNet, the preprocessors and the IP-Adapter cost a job, on the tiny model.

    python bench/controlnet.py [--rounds 5] [--size 512] [--steps 20] [--preprocess-rounds 5]

One worker with two tiny ControlNets, a tiny union ControlNet, a tiny Depth Anything V2 and a tiny
IP-Adapter (built in code, loaded as CONTROLNET_MODELS, DEPTH_MODEL and IP_ADAPTER_MODEL load
them) runs the same base-only job without guidance, with one ControlNet (canny preprocessing in
the worker), with two (canny and a ready-made control image), with the union model taking one
image and two (one call a step either way), with a depth map made in the worker, and with the
IP-Adapter. The rounds interleave the variants, so a slow moment of this
shared machine falls on all of them; the table gives each one's median and its ratio to the job
without. The network calls per step (UNet and ControlNet forward passes, counted with hooks) are
the figure that carries to a GPU, where each SDXL ControlNet is about half a UNet's work.

A second table times the preprocessors alone on a 1024x1024 photo-like image, on the CPU: canny,
the depth preprocessor with Depth Anything V2 Small's real architecture and input size, and the
pose preprocessor with RT-DETR-R50 and ViTPose-B's (their published configs, random weights: the
same work as the trained models).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BASE_MODEL", "tiny")

from PIL import Image, ImageDraw  # noqa: E402

from sdxl_worker import config  # noqa: E402
from sdxl_worker.config import ModelSettings  # noqa: E402
from sdxl_worker.delivery.deliver import data_url  # noqa: E402
from sdxl_worker.engine.models import load_models  # noqa: E402
from sdxl_worker.runtime.job import run_job  # noqa: E402
from sdxl_worker.runtime.worker import Worker  # noqa: E402
from sdxl_worker.testing.tiny_guides import (  # noqa: E402
    write_tiny_controlnet,
    write_tiny_depth_model,
    write_tiny_ip_adapter,
    write_tiny_union_controlnet,
)


def guide_image(size: int) -> str:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).ellipse((size // 5, size // 4, size * 4 // 5, size * 3 // 4), fill="white")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return data_url(buffer.getvalue())


def variants(size: int) -> dict[str, dict]:
    picture = guide_image(size)
    canny = {"model": "canny", "image": picture, "preprocess": "canny"}
    depth = {"model": "depth", "image": picture}
    union_edges = {"model": "union", "image": picture, "preprocess": "canny", "mode": "canny"}
    union_depth = {"model": "union", "image": picture, "mode": "depth"}
    return {"no guidance (before)": {},
            "1 ControlNet (canny, preprocessed)": {"controlnets": [canny]},
            "2 ControlNets (canny + depth)": {"controlnets": [canny, depth]},
            "union, 1 image (canny mode)": {"controlnets": [union_edges]},
            "union, 2 images (canny + depth)": {"controlnets": [union_edges, union_depth]},
            "1 ControlNet, depth map made here": {"controlnets": [{**depth, "preprocess": "depth"}]},
            "IP-Adapter (1 reference image)": {"ip_adapter": {"image": picture}}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preprocess-rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as where:
        where = Path(where)
        models = load_models(ModelSettings(
            base="tiny", refiner=None, vae=None, device="cpu",
            controlnets=(("canny", str(write_tiny_controlnet(where / "canny", seed=1))),
                         ("depth", str(write_tiny_controlnet(where / "depth", seed=2))),
                         ("union", str(write_tiny_union_controlnet(where / "union", seed=3)))),
            depth=str(write_tiny_depth_model(where / "depth-model")),
            ip_adapter=str(write_tiny_ip_adapter(where / "ip"))))
        worker = Worker.build(models, config.load())
        calls = []
        for network in (models.base.unet, *models.controlnets.values()):
            network.register_forward_hook(lambda module, inputs, output: calls.append(module))
        base = {"prompt": "a glass house in a forest", "width": args.size, "height": args.size, "seed": 7,
                "num_inference_steps": args.steps, "refine": "no_refiner"}
        jobs = variants(args.size)
        seconds = {label: [] for label in jobs}
        passes = {}
        for round_ in range(args.rounds + 1):  # round 0 warms every path up and is not counted
            for label, extra in jobs.items():
                calls.clear()
                started = time.perf_counter()
                out = list(run_job(worker, {"id": "bench", "input": {**base, **extra}}))[-1]
                elapsed = time.perf_counter() - started
                assert "images" in out, out
                if round_:
                    seconds[label].append(elapsed)
                passes[label] = len(calls) / args.steps
    before = statistics.median(seconds["no guidance (before)"])
    print(f"\nControlNet and IP-Adapter cost, tiny model, {args.size}x{args.size}, {args.steps} steps, base only, "
          f"median of {args.rounds} interleaved rounds\n")
    print(f"| {'job':36} | {'network calls / step':>20} | {'s':>6} | {'vs no guidance':>14} |")
    print(f"| {'-' * 36} | {'-' * 20} | {'-' * 6} | {'-' * 14} |")
    for label, times in seconds.items():
        median = statistics.median(times)
        print(f"| {label:36} | {passes[label]:20.0f} | {median:6.2f} | {median / before:13.2f}x |")
    preprocessors(args.preprocess_rounds)
    return 0


def depth_anything_v2_small():
    """Depth Anything V2 Small's architecture as its published config gives it (a DINOv2-S backbone,
    12 layers of 384, and the DPT head), random weights, with the processor it ships."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    from sdxl_worker.engine.depth import DepthEstimator

    backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                            image_size=518, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
    model = DepthAnythingForDepthEstimation(DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=384, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64, head_hidden_size=32,
        depth_estimation_type="relative")).eval()
    processor = DPTImageProcessor(do_resize=True, size={"height": 518, "width": 518}, keep_aspect_ratio=True,
                                  ensure_multiple_of=14, resample=3, do_rescale=True, do_normalize=True,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_pad=False)
    print(f"\nDepth Anything V2 Small: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"torch threads {torch.get_num_threads()}")
    return DepthEstimator(model, processor, "cpu")


def vitpose_b_and_rt_detr_r50():
    """ViTPose-B (usyd-community/vitpose-base-simple's architecture: ViT-B, the simple head, 17
    keypoints) and RT-DETR-R50 (PekingU/rtdetr_r50vd_coco_o365's: transformers' default RT-DETR
    config), random weights; the detector's class biases set so that every query is a person, so
    ViTPose runs for the most people the preprocessor reads (10): the dearest case."""
    from transformers import (
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrImageProcessor,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    from sdxl_worker.engine.pose import PoseEstimator
    from sdxl_worker.testing.tiny_guides import sees_people

    detector = RTDetrForObjectDetection(RTDetrConfig(num_labels=80)).eval()
    sees_people(detector)
    model = VitPoseForPoseEstimation(VitPoseConfig(num_labels=17)).eval()
    print(f"RT-DETR-R50: {sum(p.numel() for p in detector.parameters()) / 1e6:.1f} M parameters, "
          f"ViTPose-B: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M")
    return PoseEstimator(detector, RTDetrImageProcessor(), model, VitPoseImageProcessor(), "cpu")


def preprocessors(rounds: int) -> None:
    """Each preprocessor alone on one 1024x1024 image: the median of ``rounds`` after a warm-up."""
    import numpy as np

    from sdxl_worker.inputs.control_images import canny

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 1024)[None, :, None] * np.ones((1024, 1, 3))
    photo = Image.fromarray(np.clip(ramp + rng.normal(0, 20, (1024, 1024, 3)), 0, 255).astype("uint8"))
    depth = depth_anything_v2_small()
    pose = vitpose_b_and_rt_detr_r50()
    ways = {"canny (OpenCV)": lambda: canny(photo, 100, 200), "depth (Depth Anything V2 Small, 518 px)": lambda: depth(photo),
            "pose (RT-DETR-R50 + ViTPose-B, 10 people)": lambda: pose(photo, "image")}
    print(f"\nPreprocessors alone, 1024x1024, CPU, median of {rounds}\n")
    print(f"| {'preprocessor':40} | {'ms':>8} |")
    print(f"| {'-' * 40} | {'-' * 8} |")
    for label, run in ways.items():
        run()
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            run()
            times.append((time.perf_counter() - started) * 1000)
        print(f"| {label:40} | {statistics.median(times):8.1f} |")


if __name__ == "__main__":
    sys.exit(main())
