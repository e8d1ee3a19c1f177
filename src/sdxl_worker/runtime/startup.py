"""Start-up, once per process: logs, the prefetch helper, storage, the self-check, the models.

``start()`` does everything slow once and returns a ``Worker`` ready for jobs; anything wrong
with the configuration or the install stops the process with one sentence in the log instead
of failing every job later. Importing this module is light (no torch): handler.py imports it
first, so the prefetch helper starts before the heavy imports begin.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from sdxl_worker.errors import StartupError
from sdxl_worker.runtime import prefetch

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """What jobs run on: the loaded models and the worker's own storage (None: images inline)."""

    models: object  # sdxl_worker.engine.models.Models
    storage: object | None  # sdxl_worker.delivery.storage.Storage


def start() -> Worker:
    """Everything slow, once; exits the process with one logged sentence when the worker cannot serve."""
    # Cold start: a helper process reads the files the imports open, then the weights, into
    # memory while Python imports torch and diffusers below.
    prefetching = prefetch.start()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # import-time chatter is noise in a worker's log
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    from sdxl_worker.runtime.logs import install as protect_logs

    protect_logs()
    log.info("Prefetch: %s", prefetching.summary)
    # runpod logs every streamed output at DEBUG by default: whole base64 images.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    try:
        # Settings and libraries first: a misconfigured worker or a broken install stops in
        # seconds, before anything imports what is missing and before torch loads the weights.
        from sdxl_worker.runtime import selfcheck

        selfcheck.check_settings()
        selfcheck.check_libraries()
        from sdxl_worker.delivery.storage import storage_from_env

        storage = storage_from_env()
        from sdxl_worker.engine.models import load_models
        from sdxl_worker.runtime.warmup import warm_up_if_asked

        models = load_models()
        selfcheck.check_schedulers(models.scheduler_configs)
        warm_up_if_asked(models)
    except StartupError as error:
        _stop(error)
    return Worker(models, storage)


def _stop(error: Exception) -> None:
    log.error("%s", error)
    sys.exit(1)
