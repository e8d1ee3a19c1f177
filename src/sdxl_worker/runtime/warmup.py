"""The warm-up: short jobs through the real path at start-up, so no user job pays first-call
costs (compiling above all). Asked for by WARMUP (on by default with COMPILE)."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from sdxl_worker.errors import StartupError
from sdxl_worker.runtime.job import run_job

log = logging.getLogger(__name__)


class WarmUpFailed(StartupError):
    """A warm-up job failed: every job would; the message is one sentence for the log."""


def warm_up_if_asked(worker, speedups=None) -> None:
    """Warm up when the speed-ups applied at loading ask for it; the time goes to the start-up log's
    figures. A compile that fails here (a compiler bug, a GPU it does not know) is undone, with a
    warning: the worker serves uncompiled rather than stopping, which on RunPod would restart it
    into the same failure forever."""
    models = worker.models
    speedups = speedups or models.speedups
    if speedups is None or not speedups.warmup:
        return
    started = time.perf_counter()
    try:
        warm_up(worker, speedups.warmup_sizes)
    except WarmUpFailed as failure:
        if not speedups.compile:
            raise
        from sdxl_worker.engine.speed import uncompile

        log.warning("Compiling failed during the warm-up (%s); the worker runs uncompiled. COMPILE=0 skips the "
                    "attempt.", failure)
        uncompile(pipe.unet for pipe in (models.base, models.refiner) if pipe is not None)
        models.speedups = replace(speedups, compile=False)
        warm_up(worker, speedups.warmup_sizes)
    models.load_seconds["warm-up"] = time.perf_counter() - started


# Over 77 tokens: the prompt embeddings of a second length make the compiler treat their length
# as dynamic, so a user's long prompt (up to 750 tokens) compiles nothing more.
LONG_PROMPT = " ".join(["warm-up"] * 60)


def warm_up(worker, sizes) -> None:
    """Run short jobs through the real path, so the first user job pays no first-call costs: each
    size of WARMUP_SIZES, then the first again with a prompt over 77 tokens."""
    for number, (width, height, images) in enumerate([*sizes, *sizes[:1]]):
        prompt = LONG_PROMPT if number == len(sizes) else "warm-up"
        inputs = {"prompt": prompt, "negative_prompt": "warm-up", "width": width, "height": height,
                  "num_images": images, "num_inference_steps": 2, "seed": 0}
        if worker.models.has_refiner:
            inputs.update(refine="expert_ensemble_refiner", high_noise_frac=0.5)
        started = time.perf_counter()
        result = list(run_job(worker, {"id": f"warm-up-{width}x{height}x{images}", "input": inputs}))[-1]
        if "error" in result:
            # Stop at start-up rather than fail every job; COMPILE=0 is the way out if compiling broke it.
            raise WarmUpFailed(f"Warm-up job {width}x{height} failed ({result['error']}); the cause is logged "
                               "above. Try COMPILE=0 (or WARMUP=0) if it is the compiler.")
        log.info("Warm-up %dx%d x%d: %.1f s", width, height, images, time.perf_counter() - started)
