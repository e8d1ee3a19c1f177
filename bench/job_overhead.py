"""What the worker adds on top of a plain diffusers call, per job, on the tiny model.

    OMP_NUM_THREADS=2 python bench/job_overhead.py [rounds]

The same job both ways, interleaved round by round in one process (the machine is shared and
noisy, so each round compares neighbours): plain diffusers, as worker-sdxl and cog-sdxl call it
(a pipeline call with the prompt, then the PNG a worker must send), and this worker's run_job
(validation, plan, prompts, the denoise thread, delivery). Prints median milliseconds, the
worker's extra milliseconds and the ratio, and checks that both gave the same pixels. The goal
(issue 29): at most 5 ms extra per job.
"""

from __future__ import annotations

import base64
import io
import statistics
import sys
import time

import numpy as np
import torch

STEPS, SIZE, SEED, PROMPT = 4, 256, 7, "a lighthouse at dusk, oil painting"


def main(rounds: int) -> int:
    from diffusers import DDIMScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from PIL import Image

    from sdxl_worker import config
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.runtime.job import run_job
    from sdxl_worker.runtime.worker import Worker

    folder = ensure_tiny_model()
    models = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))
    this_worker = Worker.build(models, config.load())
    base = StableDiffusionXLPipeline.from_pretrained(folder / "base", add_watermarker=False)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder / "refiner", add_watermarker=False)
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)

    def png(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def plain(refine: bool) -> str:
        base.scheduler = DDIMScheduler.from_config(base.scheduler.config)
        generator = torch.Generator("cpu").manual_seed(SEED)
        args = dict(prompt=PROMPT, width=SIZE, height=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                    generator=generator)
        if not refine:
            return png(base(**args).images[0])
        latents = base(**args, output_type="latent").images
        refiner.scheduler = DDIMScheduler.from_config(refiner.scheduler.config)
        return png(refiner(prompt=PROMPT, image=latents, strength=0.3, num_inference_steps=STEPS * 2,
                           guidance_scale=7.5, generator=generator).images[0])

    def worker(refine: bool) -> str:
        job = {"prompt": PROMPT, "width": SIZE, "height": SIZE, "num_inference_steps": STEPS, "seed": SEED,
               "scheduler": "DDIM", "refine": "base_image_refiner" if refine else "no_refiner",
               "refiner_inference_steps": STEPS * 2, "strength": 0.3}
        return list(run_job(this_worker, {"id": "bench", "input": job}))[-1]["images"][0]

    def pixels(url: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))))

    rows = []
    for refine, label in ((False, "base only"), (True, "base + refiner (0.3 of 8 steps)")):
        same = np.array_equal(pixels(plain(refine)), pixels(worker(refine)))  # and a warm-up for both
        times = {"diffusers": [], "worker": []}
        for _ in range(rounds):
            for name, run in (("diffusers", plain), ("worker", worker)):
                started = time.perf_counter()
                run(refine)
                times[name].append((time.perf_counter() - started) * 1000)
        ours, theirs = statistics.median(times["worker"]), statistics.median(times["diffusers"])
        extra = statistics.median(w - d for w, d in zip(times["worker"], times["diffusers"]))
        rows.append((label, theirs, ours, extra, ours / theirs, same))
    print(f"tiny model, CPU, {SIZE}x{SIZE}, {STEPS} DDIM steps, guidance 7.5, {rounds} interleaved rounds "
          f"(torch threads {torch.get_num_threads()})")
    print("| job | plain diffusers ms | this worker ms | extra ms (median of pairs) | ratio | same pixels |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, theirs, ours, extra, ratio, same in rows:
        print(f"| {label} | {theirs:.1f} | {ours:.1f} | {extra:+.1f} | {ratio:.3f}x | {'yes' if same else 'NO'} |")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30))
