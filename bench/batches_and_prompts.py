"""Batches and prompt encoding: this worker's way against the predecessors', in the same run.

    BASE_MODEL=tiny python -m bench.batches_and_prompts [--repeats 3] [--size 256] [--steps 4]

1. num_images=4 as one batched pass (this worker) against four jobs of one image each (a loop,
   what a client does when the worker cannot batch).
2. Prompt encoding with compel (weights, chunks past 77 tokens) against diffusers' own
   encode_prompt (worker-sdxl and cog-sdxl: no weights, cut at 77), for a short, a weighted and a
   long prompt (diffusers reads the weighted one as plain text and cuts the long one).

Prints a table of medians and ratios. On the tiny model the numbers say how the code paths
compare, not what SDXL costs on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdxl_worker import config
from sdxl_worker.engine import generate, prompts
from sdxl_worker.engine.models import load_models
from sdxl_worker.engine.plan import make_plan
from sdxl_worker.request.types import Request

SHORT = "a lighthouse at dusk, oil painting"
WEIGHTED = "a (lighthouse:1.3) at dusk, (oil painting)0.8"
LONG = ", ".join(["a lighthouse at dusk on a rocky shore", "waves breaking", "gulls in a stormy sky",
                  "warm light in the windows", "oil painting", "detailed brushwork", "dramatic clouds"] * 3)


def median_seconds(action, repeats: int) -> float:
    action()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    models = load_models(config.models(), config.speed())
    job = {"prompt": SHORT, "width": args.size, "height": args.size, "num_inference_steps": args.steps,
           "refine": "no_refiner", "seed": 1}

    def images(count: int):
        request = Request.from_input({**job, "num_images": count})
        return generate.run(models, make_plan(request, models.has_refiner))

    rows = []
    batched = median_seconds(lambda: images(4), args.repeats)
    looped = median_seconds(lambda: [images(1) for _ in range(4)], args.repeats)
    rows.append(("4 images", "one batched pass", batched, "4 jobs of 1", looped))

    base = models.base
    with torch.inference_mode():
        for name, text in (("short prompt", SHORT), ("weighted prompt", WEIGHTED), ("long prompt", LONG)):
            ours = median_seconds(lambda text=text: prompts.encode_for_base(base, text, "blurry"), args.repeats)
            theirs = median_seconds(
                lambda text=text: base.encode_prompt(text, device=base.device, negative_prompt="blurry"), args.repeats)
            rows.append((name, "compel", ours, "diffusers encode_prompt", theirs))

    print(f"device={models.device} size={args.size} steps={args.steps} repeats={args.repeats}")
    print("| case | this worker | s | predecessors' way | s | ratio (theirs / ours) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for case, ours_name, ours, theirs_name, theirs in rows:
        print(f"| {case} | {ours_name} | {ours:.3f} | {theirs_name} | {theirs:.3f} | {theirs / ours:.2f} |")


if __name__ == "__main__":
    main()
