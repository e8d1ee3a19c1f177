"""The start-up self-check: every documented input can run on this install, or the worker stops.

A library that a code path needs but the install lacks (SciPy for the LMS samplers, say) would
otherwise fail each job that reaches it with an internal error. Checked once at start-up, it
stops the worker with one sentence naming the package instead. Cheap: imports, no model call.

Building every sampler from the models' own scheduler configs takes about a second (KDPM2's
constructors alone work through 1,000 timesteps), so it runs beside the worker's start, in a
background thread, and never delays it: a sampler that cannot be built is logged at ERROR and
jobs asking for it get that sentence (``Models.broken_samplers``).
"""

from __future__ import annotations

import atexit
import importlib
import logging
import threading
from typing import Callable

from sdxl_worker.errors import StartupError

# (module to import, the package that provides it, the inputs that need it)
LIBRARIES = (
    ("scipy", "scipy", "the LMS samplers (scheduler KLMS, KLMS_KARRAS, K_LMS)"),
    ("compel", "compel", "'prompt' and 'negative_prompt' (weights and long prompts)"),
    ("peft", "peft", "'loras'"),
    ("cv2", "opencv-python-headless", "'apply_watermark'"),
    ("imwatermark", "invisible-watermark", "'apply_watermark'"),
    ("boto3", "boto3", "S3 delivery ('upload', the BUCKET_* variables)"),
)


log = logging.getLogger(__name__)


class SelfCheckFailed(StartupError):
    """Something a documented input needs is missing; the message is one sentence for the log."""


def check_libraries(importer: Callable = importlib.import_module) -> None:
    """Import each library an input needs; SelfCheckFailed naming the first one that fails."""
    for module, package, needed_by in LIBRARIES:
        try:
            importer(module)
        except Exception as error:  # ImportError, or a broken install raising something else
            raise SelfCheckFailed(
                f"The Python package {package!r} does not import ({_first_line(error)}), and {needed_by} "
                f"need it: install it (pip install -r requirements.txt) and start the worker again."
            ) from None


def check_scheduler_classes() -> None:
    """Every sampler's diffusers class imports (the packages it needs with it): milliseconds once
    diffusers is loaded. SelfCheckFailed naming the first that does not."""
    from sdxl_worker.engine.schedulers import scheduler_class
    from sdxl_worker.request.samplers import SCHEDULERS

    for name in SCHEDULERS:
        try:
            scheduler_class(name)
        except Exception as error:
            raise SelfCheckFailed(f"The scheduler {name!r} does not import ({_first_line(error)}), so jobs asking "
                                  f"for it would fail.") from None


def scheduler_problems(scheduler_configs: dict[str, dict]) -> dict[str, str]:
    """Each sampler of the table that cannot be built from a stage's config: name -> one sentence.
    A config shared by both stages (SDXL's base and refiner ship the same) is tried once."""
    from sdxl_worker.engine.schedulers import build_scheduler
    from sdxl_worker.request.samplers import SCHEDULERS

    problems: dict[str, str] = {}
    tried: list[dict] = []
    for stage, config in scheduler_configs.items():
        if config in tried:
            continue
        tried.append(config)
        for name in SCHEDULERS:
            if name in problems:
                continue
            try:
                build_scheduler(name, config)
            except Exception as error:
                problems[name] = (f"The scheduler {name!r} cannot be built for the {stage} model "
                                  f"({_first_line(error)}), so jobs asking for it would fail.")
    return problems


def check_schedulers(scheduler_configs: dict[str, dict]) -> None:
    """Build every scheduler of the table for every stage; SelfCheckFailed for the first that cannot."""
    problems = scheduler_problems(scheduler_configs)
    if problems:
        raise SelfCheckFailed(next(iter(problems.values())))


def check_schedulers_in_background(models) -> threading.Thread:
    """``scheduler_problems`` in a daemon thread; each problem logged and put in models.broken_samplers."""

    def check() -> None:
        for name, sentence in scheduler_problems(dict(models.scheduler_configs)).items():
            models.broken_samplers[name] = sentence
            log.error("%s", sentence)

    thread = threading.Thread(target=check, name="scheduler-check", daemon=True)
    thread.start()
    # A process that ends first (a one-job local run) waits for it: torch code still running in a
    # thread while the interpreter tears down aborts the process ("terminate called without an
    # active exception"). The worker's own exit (os._exit after SIGTERM) skips this.
    atexit.register(thread.join, 30)
    return thread


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error (diffusers' import errors start with a newline)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(".")
