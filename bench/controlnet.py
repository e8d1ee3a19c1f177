"""What ControlNets and the IP-Adapter cost a job, on the tiny model.

    python bench/controlnet.py [--rounds 5] [--size 512] [--steps 20]

One worker with two tiny ControlNets and a tiny IP-Adapter (built in code, loaded as
CONTROLNET_MODELS and IP_ADAPTER_MODEL load them) runs the same base-only job without guidance,
with one ControlNet (canny preprocessing in the worker), with two (canny and a ready-made control
image) and with the IP-Adapter. The rounds interleave the variants, so a slow moment of this
shared machine falls on all of them; the table gives each one's median and its ratio to the job
without. The network calls per step (UNet and ControlNet forward passes, counted with hooks) are
the figure that carries to a GPU, where each SDXL ControlNet is about half a UNet's work.
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
from sdxl_worker.testing.tiny_guides import write_tiny_controlnet, write_tiny_ip_adapter  # noqa: E402


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
    return {"no guidance (before)": {},
            "1 ControlNet (canny, preprocessed)": {"controlnets": [canny]},
            "2 ControlNets (canny + depth)": {"controlnets": [canny, depth]},
            "IP-Adapter (1 reference image)": {"ip_adapter": {"image": picture}}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as where:
        where = Path(where)
        models = load_models(ModelSettings(
            base="tiny", refiner=None, vae=None, device="cpu",
            controlnets=(("canny", str(write_tiny_controlnet(where / "canny", seed=1))),
                         ("depth", str(write_tiny_controlnet(where / "depth", seed=2)))),
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
