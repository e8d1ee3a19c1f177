"""The high-resolution pass on the tiny model: one ``hires`` job against the way a user had to do it
before (a job, its image downloaded, then an img2img job at the larger size), and what each upscaler costs.

    OMP_NUM_THREADS=2 python bench/hires.py [rounds]

One process, the tiny model on the CPU, ``run_job`` as the queue worker calls it. Each round runs,
interleaved (the machine is shared and noisy, so each round compares neighbours):

- ``two jobs``: a 512x512 txt2img job (8 steps), its PNG decoded from the answer, sent back as
  ``image`` of an img2img job at 1024x1024 (strength 0.35 of 20 steps: 7 steps), as a client
  of a worker without ``hires`` does (the transfer itself, on loopback or a network, not counted);
- ``hires lanczos`` / ``latent`` / ``model``: the same work as one job with ``hires``
  (``scale`` 2, ``strength`` 0.35, ``steps`` 20); ``model`` with a tiny Real-ESRGAN x2
  (src/sdxl_worker/testing/tiny_upscaler.py: 8 features, one block, not the real 64 and 23).

The time is from the call to the final answer. Ratios are against ``two jobs``, per round, then the median.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "num_inference_steps": 8, "seed": 7,
         "refine": "no_refiner"}
HIRES = {"scale": 2, "strength": 0.35, "steps": 20}


def main(rounds: int) -> int:
    sys.path.insert(0, str(ROOT))
    from sdxl_worker import config
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.runtime.job import run_job
    from sdxl_worker.runtime.worker import Worker
    from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
    from tests.helpers.upscaling import import_spandrel

    import_spandrel()  # where torchvision cannot be installed (tests.helpers.upscaling.py)
    folder = Path(tempfile.mkdtemp())
    upscaler = write_tiny_esrgan(folder / "RealESRGAN_x2.pth", "real-esrgan", scale=2)
    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", upscaler=str(upscaler)))
    worker = Worker.build(models, config.load())

    def answer(job: dict) -> dict:
        *_, output = run_job(worker, {"id": "bench", "input": job})
        assert "images" in output, output
        return output

    def two_jobs() -> None:
        image = answer(FIRST)["images"][0]
        answer({**FIRST, "image": image, "width": 1024, "height": 1024, "strength": 0.35, "num_inference_steps": 20})

    ways = {"two jobs": two_jobs}
    for upscaler_name in ("lanczos", "latent", "model"):
        ways[f"hires {upscaler_name}"] = (
            lambda name=upscaler_name: answer({**FIRST, "hires": {**HIRES, "upscaler": name}}))
    for way in ways.values():  # warm-up: first calls pay one-off costs
        way()
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, way in ways.items():
            started = time.perf_counter()
            way()
            times[name].append((time.perf_counter() - started) * 1000)

    print(f"tiny model, CPU, {rounds} rounds: 512x512 (8 steps) to 1024x1024 (7 of 20 steps at strength 0.35)")
    print()
    print("| way | median ms | ratio to two jobs |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        ratio = statistics.median(value / before for value, before in zip(values, times["two jobs"]))
        print(f"| {name} | {statistics.median(values):,.0f} | {ratio:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5))
