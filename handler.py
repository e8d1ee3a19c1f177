"""RunPod entry point: load the models once, then serve jobs through src.job.run_job.

    python handler.py                   run test_input.json locally, save images under output/
    python handler.py --test_input '{"input": {...}}'
    python handler.py --rp_serve_api    runpod's local HTTP API (/run, /runsync, /stream, /status)
    on RunPod                           the serverless worker
"""

import logging
import os
import sys
import time

from src.models import ModelUnavailable, load_models, prefetch_weights

# Cold start: the disk reads the weights while Python imports torch and diffusers below.
prefetch_weights()

from src.job import run_job  # noqa: E402  (after the prefetch starts, on purpose)

# WARMUP=1: one small job before the first request, so that request does not pay for first-call
# set-up (CUDA context and kernels, allocator growth). Full size, few steps, every stage.
WARMUP_JOB = {
    "id": "warm-up",
    "input": {
        "prompt": "warm-up",
        "num_inference_steps": 2,
        "refiner_inference_steps": 4,
        "strength": 0.5,
        "seed": 0,
    },
}


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    try:
        models = load_models()
    except ModelUnavailable as error:
        logging.getLogger("handler").error("%s", error)
        sys.exit(1)
    if os.environ.get("WARMUP", "0") == "1":
        warm_up(models)

    def handler(job):
        yield from run_job(models, job)

    if _serving():
        import runpod

        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
    else:
        from src.local import run_local

        sys.exit(run_local(handler, sys.argv[1:]))


def warm_up(models) -> None:
    """Run WARMUP_JOB through the real job path; a failure is logged, never fatal."""
    log = logging.getLogger("handler")
    started = time.perf_counter()
    result = list(run_job(models, WARMUP_JOB))[-1]
    if "error" in result:
        log.warning("Warm-up job failed: %s", result["error"])
    else:
        log.info("Warm-up job done in %.1f s (%s)", time.perf_counter() - started, result.get("timings"))


def _serving() -> bool:
    """On RunPod, or asked for runpod's local API; otherwise a local test run."""
    return "--rp_serve_api" in sys.argv or bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


if __name__ == "__main__":
    main()
