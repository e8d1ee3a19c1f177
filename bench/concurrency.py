"""Jobs per minute through the async handler: one job at a time against two (runpod's concurrency_modifier).

With two jobs in flight, one job's preview rendering, encoding and delivery can overlap the
next job's denoising (the pipelines still run one at a time, in the one denoise thread). The
predecessor's way is measured in the same run: the synchronous handler, which started a fresh
denoising thread for every job.

    python bench/concurrency.py [--jobs 8] [--size 768] [--steps 12] [--images 2] [--rounds 2]

The same jobs go through each way, round-robin over ``--rounds``; the table gives the median
jobs per minute and the ratio to one job at a time. On the tiny model, CPU only: the denoising
and the encoding share the same two cores here, where on a GPU host they would not.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("BASE_MODEL", "tiny")

from sdxl_worker import config  # noqa: E402
from sdxl_worker.config import ModelSettings  # noqa: E402
from sdxl_worker.engine.models import load_models  # noqa: E402
from sdxl_worker.runtime import stream, threads  # noqa: E402
from sdxl_worker.runtime.job import run_job  # noqa: E402
from sdxl_worker.runtime.serve import Runner  # noqa: E402
from sdxl_worker.runtime.worker import Worker  # noqa: E402


def jobs(count: int, size: int, steps: int, images: int) -> list[dict]:
    return [{"id": f"bench-{index}", "input": {"prompt": "a lighthouse at dusk", "width": size, "height": size,
                                               "num_inference_steps": steps, "num_images": images,
                                               "refine": "no_refiner", "preview_steps": 4, "seed": index}}
            for index in range(count)]


async def through_runner(runner: Runner, batch: list[dict], in_flight: int) -> float:
    """Seconds for the batch, ``in_flight`` jobs at a time, as runpod's job loop would run them."""
    gate = asyncio.Semaphore(in_flight)

    async def one(job):
        async with gate:
            outputs = [output async for output in runner.run(job)]
            assert "images" in outputs[-1], outputs[-1]

    started = time.perf_counter()
    await asyncio.gather(*(one(job) for job in batch))
    return time.perf_counter() - started


def thread_per_job(worker, batch: list[dict]) -> float:
    """The predecessor: each job's denoising in a thread started for it, one job at a time."""
    started = time.perf_counter()
    for job in batch:
        fresh = threads.LongLivedThreads("denoise-fresh")
        stream.DENOISE, saved = fresh, stream.DENOISE
        try:
            done: list = []
            thread = threading.Thread(target=lambda done=done, job=job: done.append(list(run_job(worker, job))))
            thread.start()
            thread.join()
            assert "images" in done[0][-1]
        finally:
            stream.DENOISE = saved
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu"))
    worker = Worker.build(models, config.load())
    batch = jobs(args.jobs, args.size, args.steps, args.images)
    ways = {
        "before: sync handler, a new denoising thread per job": lambda: thread_per_job(worker, batch),
        "async handler, 1 job at a time (default)": lambda: asyncio.run(through_runner(Runner(worker), batch, 1)),
        "async handler, 2 jobs at a time": lambda: asyncio.run(
            through_runner(Runner(worker, concurrency=2), batch, 2)),
    }
    asyncio.run(through_runner(Runner(worker), batch[:1], 1))  # warm: first calls pay one-off costs
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            seconds[name].append(way())

    print(f"{args.jobs} jobs of {args.images} image(s) {args.size}x{args.size}, {args.steps} steps, previews every 4, "
          f"inline PNG; tiny model on {os.cpu_count()} CPU cores; median of {args.rounds} rounds")
    print()
    print("| way | jobs per minute | ratio to 1 at a time |")
    print("| --- | --- | --- |")
    reference = statistics.median(seconds["async handler, 1 job at a time (default)"])
    for name, runs in seconds.items():
        median = statistics.median(runs)
        print(f"| {name} | {60 * args.jobs / median:.1f} | {reference / median:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
