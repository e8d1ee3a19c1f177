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

from src import prefetch  # noqa: E402  (light: torch is imported later)

# Cold start: a helper process reads the files the imports open, then the weights, into memory
# while Python imports torch and diffusers.
prefetching = prefetch.start()

from src.logs import install as protect_logs  # noqa: E402
from src.storage import StorageConfigError, storage_from_env  # noqa: E402


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    protect_logs()
    logging.getLogger("handler").info("Prefetch: %s", prefetching.summary)
    # runpod logs every streamed output at DEBUG by default: whole base64 images.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    try:
        storage = storage_from_env()
    except StorageConfigError as error:
        logging.getLogger("handler").error("%s", error)
        sys.exit(1)

    # Imported after the storage check: a misconfigured worker stops in a second, before torch loads.
    from src import selfcheck
    from src.models import ModelUnavailable, load_models

    try:
        selfcheck.check_settings()
        selfcheck.check_libraries()  # before the weights: a broken install stops in seconds
        models = load_models()
        selfcheck.check_schedulers(models.scheduler_configs)
    except (ModelUnavailable, selfcheck.SelfCheckFailed) as error:
        logging.getLogger("handler").error("%s", error)
        sys.exit(1)

    config = runpod_config(models, storage)
    if _serving():
        import runpod

        runpod.serverless.start(config)
    else:
        from src.local import run_local

        sys.exit(run_local(config["handler"], sys.argv[1:]))


def runpod_config(models, storage=None) -> dict:
    """The config for runpod.serverless.start: the handler, and where it asks to be replaced.

    runpod 1.12 ignores a ``refresh_worker`` key in what a generator handler yields; it reads
    ``config["refresh_worker"]`` after each job (rp_job.handle_job then stops the pod, and
    rp_scale kills the worker). So the handler sets it there, only when run_job reports a
    poisoned CUDA context, before yielding the job's error.
    """
    from src.job import run_job

    config = {"return_aggregate_stream": True}

    def handler(job):
        for output in run_job(models, job, storage):
            if output.pop("refresh_worker", False):
                config["refresh_worker"] = True
            yield output

    config["handler"] = handler
    return config


def _serving() -> bool:
    """On RunPod, or asked for runpod's local API; otherwise a local test run."""
    return "--rp_serve_api" in sys.argv or bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB"))


if __name__ == "__main__":
    main()
