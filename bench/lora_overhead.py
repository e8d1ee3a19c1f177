"""What a per-job LoRA costs: a job without one, with one (first download, then cached), and
the alternative design that keeps the LoRA loaded between jobs (no exact-unload guarantee).

    OMP_NUM_THREADS=1 python bench/lora_overhead.py [repeats]

Runs on the tiny model on CPU (real SDXL figures need a GPU and real weights); prints a table
of median milliseconds and ratios to the job without a LoRA.
"""

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sdxl_worker import config
from sdxl_worker.config import ModelSettings
from sdxl_worker.engine import lora_layers
from sdxl_worker.engine.models import load_models
from sdxl_worker.runtime.job import local_loras, run_job
from sdxl_worker.runtime.worker import Worker
from sdxl_worker.testing.servers import Server, body
from sdxl_worker.testing.tiny_loras import tiny_lora

JOB = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 4, "seed": 1,
       "refine": "no_refiner"}


def main(repeats: int) -> None:
    models = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))
    lora_file = tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1)

    def job(inputs) -> float:
        started = time.perf_counter()
        result = list(run_job(worker, {"id": "bench", "input": inputs}))[-1]
        assert "error" not in result, result
        return (time.perf_counter() - started) * 1000

    rows = {}
    with Server({"/fox.safetensors": body(lora_file)}) as files, tempfile.TemporaryDirectory() as cache:
        lora = dict(JOB, loras=[{"path": files.url("/fox.safetensors"), "scale": 0.8}])
        # The LoRA server is on this machine (ALLOW_PRIVATE_URLS=1); downloads cached in a folder of the bench's own.
        worker = Worker.build(models, config.load(dict(os.environ, ALLOW_PRIVATE_URLS="1", LORA_CACHE_DIR=cache)))
        job(JOB)  # warm-up
        rows["no LoRA"] = statistics.median(job(JOB) for _ in range(repeats))
        first = []
        for _ in range(repeats):
            for file in Path(cache).glob("*"):
                file.unlink()
            first.append(job(lora))
        rows["LoRA, first use (download)"] = statistics.median(first)
        rows["LoRA, cached (load + unload per job)"] = statistics.median(job(lora) for _ in range(repeats))
        # The alternative: load once and keep it between jobs (then the next job without it differs).
        with lora_layers.applied(models, local_loras(worker.lora_files, lora["loras"])):
            rows["LoRA kept loaded across jobs"] = statistics.median(job(JOB) for _ in range(repeats))

    print(f"tiny SDXL, CPU, {JOB['width']}x{JOB['height']}, {JOB['num_inference_steps']} steps, "
          f"LoRA {len(lora_file) / 1024:.0f} KB, median of {repeats}")
    print("| job | ms | vs no LoRA |\n| --- | --- | --- |")
    for name, ms in rows.items():
        print(f"| {name} | {ms:.0f} | {ms / rows['no LoRA']:.2f}x |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
