"""Start-up, once per process: logs, the prefetch helper, storage, the self-check, the models.

``start()`` does everything slow once and returns a ``Worker`` (sdxl_worker.runtime.worker) ready
for jobs, built from the configuration read here, once; anything wrong
with the configuration or the install stops the process with one sentence in the log instead
of failing every job later. Importing this module is light (no torch): handler.py imports it
first, so the prefetch helper starts before the heavy imports begin.
"""

from __future__ import annotations

import logging
import sys

from sdxl_worker import config
from sdxl_worker.errors import StartupError
from sdxl_worker.runtime import prefetch

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def start():
    """Everything slow, once; exits the process with one logged sentence when the worker cannot serve."""
    try:
        return load()
    except StartupError as error:
        _stop(error)


def load(settings: config.Config | None = None):
    """Everything slow, once: the ``Worker``, or StartupError with the one sentence saying why not
    (the HTTP server keeps that sentence for its health check instead of exiting)."""
    settings = settings or config.load()  # every variable, once; nothing reads the environment after this
    missing = config.missing_model_paths(settings.models)
    if missing:  # before the libraries: a wrong path stops the start in a second
        raise StartupError(missing[0])
    # Cold start: a helper process reads the files the imports open, then the weights, into
    # memory while Python imports torch and diffusers below.
    prefetching = prefetch.start(settings.runtime, settings.models)
    config.quiet_libraries()
    logging.basicConfig(level=settings.runtime.log_level, format=LOG_FORMAT)
    from sdxl_worker.runtime import logs

    logs.install()
    log.info("Prefetch: %s", prefetching.summary)
    try:
        # Libraries first: a broken install stops in seconds, before anything imports what is
        # missing and before torch loads the weights.
        from sdxl_worker.runtime import selfcheck

        selfcheck.check_libraries()
        from sdxl_worker.delivery.storage import storage_for, warn_unused

        warn_unused(settings.unused_bucket_variables)
        storage = storage_for(settings.storage)
        from sdxl_worker.engine.models import load_models

        models = load_models(settings.models, settings.speed)
        selfcheck.check_scheduler_classes()
        selfcheck.check_schedulers_in_background(models)
        from sdxl_worker.runtime.warmup import warm_up_if_asked
        from sdxl_worker.runtime.worker import Worker

        worker = Worker.build(models, settings, storage)
        warm_up_if_asked(worker)
    except StartupError:
        raise
    except Exception as error:  # a library failing where nobody expected: still one sentence
        log.info("What stopped the start:", exc_info=True)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        raise StartupError(f"The worker could not start: {type(error).__name__}: {first}") from None
    return worker


def _stop(error: Exception) -> None:
    logging.basicConfig(level="INFO", format=LOG_FORMAT)  # when the configuration itself was wrong
    log.error("%s", error)
    sys.exit(1)
