"""The kinds of failure a job can meet, and how each reaches the user.

- InputError: the user can fix it. One sentence naming the field goes back as
  ``{"error": message}``; the log gets the same sentence, no traceback.
- Out of GPU memory: memory is freed, the job fails with a sentence suggesting a smaller job,
  and the worker keeps serving.
- A poisoned CUDA context (illegal memory access, device-side assert, ...): every later job on
  this process would fail too, so the job fails and the worker asks RunPod to replace it.
- Anything else is internal: the traceback goes to the log, the user gets one sentence with the
  job id, and the worker keeps serving.
"""

from __future__ import annotations

import re

INPUT = "input"
OUT_OF_MEMORY = "out_of_memory"
POISONED = "poisoned"
INTERNAL = "internal"

# Phrases of CUDA errors after which the context is unusable until the process exits.
_POISONED_CUDA = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "cuda error: unknown error",
    "uncorrectable ecc error",
    "cudnn_status_execution_failed",
    "cublas_status_execution_failed",
)


class InputError(ValueError):
    """A problem with the job's input that the user can fix."""


# What an error sentence may quote of what the user sent: a short run of plain characters (a
# misspelt name, a number). Anything longer, with any other character (markup, quotes, control
# characters, a payload), or with a token-like run (it may be a secret, and a cut one no longer
# looks like one) is described by its length instead (docs/security.md, "Errors").
_QUOTABLE = re.compile(r"[A-Za-z0-9 _.,:/+-]{1,64}")
_TOKEN_RUN = re.compile(r"[A-Za-z0-9+/=_-]{32,}")


def quotable(text: str) -> bool:
    tokens = [run for run in _TOKEN_RUN.findall(text)
              if any(c.isupper() for c in run) and any(c.islower() for c in run) and any(c.isdigit() for c in run)]
    return bool(_QUOTABLE.fullmatch(text)) and not tokens


def quoted(text) -> str:
    """``'text'`` when it is short and plain, else ``a text of N characters``: all a sentence echoes."""
    text = str(text)
    return f"'{text}'" if quotable(text) else f"a text of {len(text):,} characters"


MB = 1_000_000  # one megabyte: the unit of every *_MB setting and every size a message gives


def megabytes(size: int) -> str:
    """A size as a sentence gives it: ``12.3 MB`` (MB = 1,000,000 bytes), or bytes below one MB."""
    return f"{size / MB:.1f} MB" if size >= MB else f"{size:,} bytes"


class Failure(dict):
    """A job's one error answer, ``{"error": sentence}``, which also knows its kind: INPUT,
    OUT_OF_MEMORY, POISONED, INTERNAL, or the reason a ``Stop`` gave (runtime/stopping.py). RunPod
    sends it as the plain dict it is; the HTTP server (sdxl_worker.api) picks its status by the kind."""

    def __init__(self, sentence: str, kind: str = INTERNAL):
        super().__init__(error=sentence)
        self.kind = kind


class StartupError(RuntimeError):
    """The worker cannot serve (configuration, install, weights): it stops at start-up with this
    one-sentence message instead of failing every job."""


def kind_of(error: BaseException) -> str:
    """Which of the kinds above ``error`` is."""
    if isinstance(error, InputError):
        return INPUT
    text = str(error).lower()
    if _is_out_of_memory(error, text):
        return OUT_OF_MEMORY
    if _is_cuda_error(error, text) and any(phrase in text for phrase in _POISONED_CUDA):
        return POISONED
    return INTERNAL


def message(kind: str, job_id: str, error: BaseException | None = None) -> str:
    """The one sentence the user gets for a failure of ``kind``."""
    if kind == INPUT:
        return str(error)
    if kind == OUT_OF_MEMORY:
        return (f"The GPU ran out of memory on job {job_id}; try a smaller width and height, "
                "fewer images (num_images) or fewer refiner steps.")
    if kind == POISONED:
        return (f"The GPU failed on job {job_id}; this worker is being replaced, "
                "so please send the job again.")
    return f"The worker hit an internal error on job {job_id}; the details are in the worker's log."


def _is_out_of_memory(error: BaseException, text: str) -> bool:
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a hard dependency of the worker
        pass
    # cuBLAS and cuDNN report running out of memory as plain RuntimeErrors.
    return isinstance(error, RuntimeError) and ("out of memory" in text or "cublas_status_alloc_failed" in text)


def _is_cuda_error(error: BaseException, text: str) -> bool:
    try:
        import torch

        if isinstance(error, getattr(torch, "AcceleratorError", ())):
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(error, RuntimeError) and ("cuda" in text or "cublas" in text or "cudnn" in text)
