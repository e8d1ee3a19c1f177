"""The start-up self-check: every documented input can run on this install, or the worker stops.

A library that a code path needs but the install lacks (SciPy for the LMS samplers, say) would
otherwise fail each job that reaches it with an internal error. Checked once at start-up, it
stops the worker with one sentence naming the package instead. Cheap: imports and scheduler
config objects, no model call.
"""

from __future__ import annotations

import importlib
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


def check_schedulers(scheduler_configs: dict[str, dict]) -> None:
    """Build every scheduler of the table for every stage from the model's own config."""
    from sdxl_worker.engine.schedulers import build_scheduler
    from sdxl_worker.request.samplers import SCHEDULERS

    for stage, config in scheduler_configs.items():
        for name in SCHEDULERS:
            try:
                build_scheduler(name, config)
            except Exception as error:
                raise SelfCheckFailed(
                    f"The scheduler {name!r} cannot be built for the {stage} model "
                    f"({_first_line(error)}), so jobs asking for it would fail."
                ) from None


def _first_line(error: BaseException) -> str:
    """The first non-empty line of an error (diffusers' import errors start with a newline)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__).rstrip(".")
