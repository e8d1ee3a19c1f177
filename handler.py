"""RunPod entry point: load the models once, then serve jobs through src.job.run_job.

    python handler.py                   run test_input.json locally, save images under output/
    python handler.py --test_input '{"input": {...}}'
    python handler.py --rp_serve_api    runpod's local HTTP API (/run, /runsync, /stream, /status)
    on RunPod                           the serverless worker
"""

import logging
import os
import sys

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # import-time chatter is noise in a worker's log

from src.storage import StorageConfigError, storage_from_env


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    try:
        storage = storage_from_env()
    except StorageConfigError as error:
        logging.getLogger("handler").error("%s", error)
        sys.exit(1)

    # Imported after the storage check: a misconfigured worker stops in a second, before torch loads.
    from src.job import run_job
    from src.models import ModelUnavailable, load_models

    try:
        models = load_models()
    except ModelUnavailable as error:
        logging.getLogger("handler").error("%s", error)
        sys.exit(1)

    def handler(job):
        yield from run_job(models, job, storage)

    if _serving():
        import runpod

        runpod.serverless.start({"handler": handler, "return_aggregate_stream": True})
    else:
        from src.local import run_local

        sys.exit(run_local(handler, sys.argv[1:]))


def _serving() -> bool:
    """On RunPod, or asked for runpod's local API; otherwise a local test run."""
    return "--rp_serve_api" in sys.argv or bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


if __name__ == "__main__":
    main()
