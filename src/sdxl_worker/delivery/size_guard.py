"""The size guard: a job's whole output, previews and final payload together, fits RunPod's limits.

With ``return_aggregate_stream`` every preview a job yields is also part of the result that
``/runsync`` and ``/status`` return, so the previews and the final payload share one limit
(INLINE_LIMIT_MB, default RunPod's 10 MB). Previews may fill at most half of it; once the next
one would pass that, it and every later one are dropped, and the result says so once. The
final payload gets what the previews left (src/sdxl_worker/delivery/deliver.py fits inline
images into it). Each preview also stays under RunPod's 1 MB stream chunk
(src/sdxl_worker/delivery/previews.py).
"""

from __future__ import annotations

import json

from sdxl_worker.errors import MB, InputError, megabytes

PREVIEW_SHARE = 0.5  # of the job's output limit
STREAM_CHUNK_LIMIT = MB  # RunPod drops a /stream chunk over 1 MB


def chunk_bytes(chunk: dict) -> int:
    """What one yielded chunk weighs in RunPod's JSON."""
    return len(json.dumps(chunk, ensure_ascii=False))


class OutputGuard:
    """Counts the bytes a job has yielded; says which previews still fit and what is left for the final."""

    def __init__(self, limit_bytes: int):
        self.limit = limit_bytes
        self.spent = 0
        self.dropped_from: int | None = None  # the first step whose preview was dropped

    def admit(self, chunk: dict) -> bool:
        """True when this preview chunk fits (and is counted); False drops it and every later one."""
        size = chunk_bytes(chunk)
        if self.dropped_from is None and self.spent + size <= self.limit * PREVIEW_SHARE:
            self.spent += size
            return True
        if self.dropped_from is None:
            self.dropped_from = chunk.get("step", 0)
        return False

    def reserve(self, size: int, what: str) -> None:
        """Count ``size`` bytes the final payload will carry besides the images (the control images of
        ``return_control_images``): InputError when they alone would take more than half the limit."""
        if size > self.limit * PREVIEW_SHARE:
            raise InputError(f"{what} come to {megabytes(size)}, more than half of the {megabytes(self.limit)} a job's "
                             f"output may hold (INLINE_LIMIT_MB); leave 'return_control_images' out, or ask for a "
                             f"smaller width and height.")
        self.spent += size

    def final_room(self) -> int:
        """The bytes left for the final payload."""
        return self.limit - self.spent

    def warning(self) -> str | None:
        if self.dropped_from is None:
            return None
        return (f"Previews from step {self.dropped_from} on were dropped: with them the job's output would pass "
                f"half of the {megabytes(self.limit)} limit (INLINE_LIMIT_MB) that previews may use; "
                f"ask for fewer previews ('preview_steps') or smaller ones ('preview_size').")


def result_notice(final: dict) -> dict | None:
    """For a stream consumer, the chunk that goes before a final payload too large for ``/stream``
    (RunPod would drop it, and the stream would end in silence): the seeds, timings and warnings,
    and where the images are. None when the final payload streams as it is."""
    size = chunk_bytes(final)
    if "images" not in final or size <= STREAM_CHUNK_LIMIT:
        return None
    notice = {key: final[key] for key in ("seed", "seeds", "timings", "warnings") if key in final}
    return {"result": "in the job's output",
            "message": f"The images ({megabytes(size)}) are larger than a /stream chunk may be (1 MB): read "
                       f"them from the job's output (/status, or job.output() in runpod-python), or ask for "
                       f"'output_format' jpeg or webp, or configure storage.",
            **notice}
