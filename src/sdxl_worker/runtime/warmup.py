"""The warm-up: short jobs through the real path at start-up, so no user job pays first-call
costs (compiling above all). Asked for by WARMUP (on by default with COMPILE)."""

from __future__ import annotations

import logging
import time

from sdxl_worker.errors import StartupError
from sdxl_worker.runtime.job import run_job

log = logging.getLogger(__name__)


class WarmUpFailed(StartupError):
    """A warm-up job failed: every job would; the message is one sentence for the log."""


def warm_up_if_asked(models, speedups=None) -> None:
    """Warm up when the speed-ups applied at loading ask for it; the time goes to the start-up log's figures."""
    speedups = speedups or models.speedups
    if speedups is None or not speedups.warmup:
        return
    started = time.perf_counter()
    warm_up(models, speedups.warmup_sizes)
    models.load_seconds["warm-up"] = time.perf_counter() - started


def warm_up(models, sizes) -> None:
    """Run short jobs through the real path, so the first user job pays no first-call costs."""
    for width, height, images in sizes:
        inputs = {"prompt": "warm-up", "negative_prompt": "warm-up", "width": width, "height": height,
                  "num_images": images, "num_inference_steps": 2, "seed": 0}
        if models.has_refiner:
            inputs.update(refine="expert_ensemble_refiner", high_noise_frac=0.5)
        started = time.perf_counter()
        result = list(run_job(models, {"id": f"warm-up-{width}x{height}x{images}", "input": inputs}))[-1]
        if "error" in result:
            # Stop at start-up rather than fail every job; COMPILE=0 is the way out if compiling broke it.
            raise WarmUpFailed(f"Warm-up job {width}x{height} failed ({result['error']}); the cause is logged "
                               "above. Try COMPILE=0 (or WARMUP=0) if it is the compiler.")
        log.info("Warm-up %dx%d x%d: %.1f s", width, height, images, time.perf_counter() - started)
