"""Streaming a run: the pipelines denoise in the long-lived denoise thread, the job's thread yields previews.

The denoising loop only hands each step over a queue (and, on a preview step, a copy of the
first image's clean estimate); projecting, encoding and RunPod progress updates happen in the
job's own thread, so the loop never waits for them. Each step first checks the job's ``Stop``
(src/sdxl_worker/runtime/stopping.py): a stopped job ends within one step. Previews that would
pass the job's output guard (src/sdxl_worker/delivery/size_guard.py) are dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextlib import closing
from typing import Generator

from sdxl_worker.delivery.previews import preview_data_url
from sdxl_worker.delivery.size_guard import OutputGuard
from sdxl_worker.engine import generate, latent_previews
from sdxl_worker.engine.models import Models
from sdxl_worker.engine.plan import Plan
from sdxl_worker.runtime.context import JobContext, JobInputs, ProgressCallback
from sdxl_worker.runtime.logs import protect
from sdxl_worker.runtime.threads import DENOISE

log = protect(logging.getLogger(__name__))


def run_streamed(models: Models, plan: Plan, inputs: JobInputs, context: JobContext,
                 guard: OutputGuard | None = None) -> Generator[dict, None, object]:
    """Run the plan in the denoise thread; yield a preview dict after each preview step; return the result.

    Args:
        models: the loaded pipelines, the job's checkpoint, preset and LoRAs in place.
        plan: the job's plan, sized, with its step counts and preview settings.
        inputs: its decoded images (input image, mask, control and reference images).
        context: its id, progress callback and ``Stop``, checked before every step.
        guard: the job's output guard; previews it does not admit are dropped.
    """
    steps, total, stop = plan.step_counts, plan.total_steps, context.stop
    # Steps count across the job: base, then refiner, then the high-resolution pass.
    first_step = {"base": 0, "refiner": steps.get("base", 0), "hires": steps.get("base", 0) + steps.get("refiner", 0)}
    every = plan.preview_steps
    progress = Progress(context.job, total, context.on_progress)

    def wants_preview(stage: str, step: int) -> bool:
        number = first_step[stage] + step
        return every > 0 and (number % every == 0 or number == total)

    def on_step(stage, step, kwargs):
        # In the denoising loop: end a stopped job; keep the first image's x0 on a preview step, nothing more.
        stop.check(f"at step {first_step[stage] + step} of {total}")
        x0 = kwargs.get("x0")
        return x0[0].detach().clone() if x0 is not None and wants_preview(stage, step) else None

    def denoise(callback):
        stop.check(f"before its first step (of {total})")
        return generate.run(models, plan, inputs.image, callback, mask=inputs.mask,
                            control_images=inputs.control_images, ip_adapter_images=inputs.ip_adapter_images,
                            wants_x0=wants_preview if every > 0 else None,
                            between=lambda: stop.check(f"while upscaling, before step {first_step['hires'] + 1} "
                                                       f"of {total}"))

    events = _steps_in_thread(denoise, on_step)
    with closing(events):
        while True:
            try:
                stage, step, x0 = next(events)
            except StopIteration as finished:
                return finished.value
            number = first_step[stage] + step
            progress.update(stage, number)
            if x0 is not None:
                try:
                    url = render_preview(x0, plan.preview_size, plan.preview_format,
                                          plan.preview_quality, models.preview_decoder)
                except Exception:  # a preview is a courtesy: losing one must not lose the image
                    log.exception("job %s: preview after step %d failed", context.id, number)
                    continue
                chunk = {"preview": url, "step": number, "total_steps": total, "stage": stage}
                if guard is None or guard.admit(chunk):
                    yield chunk


def render_preview(latent, size: int, image_format: str = "jpeg", quality: int = 75, decoder=None) -> str:
    """One in-loop latent (4, h, w) -> a preview data URL, ``size`` pixels on its longer side."""
    return preview_data_url(latent_previews.preview_image(latent, size, decoder), image_format, quality)


class _Stopped(Exception):
    """Raised inside the denoising loop when the job's consumer went away, to end the thread early."""


def _steps_in_thread(run, on_step) -> Generator[tuple, None, object]:
    """Call ``run(callback)`` in the denoise thread; yield (stage, step, on_step's value) per step; return its result.

    The run is always over before this generator finishes, even when it is closed early (the
    loop is then stopped at its next step), so no job's work outlives it.
    """
    events: queue.Queue = queue.Queue()
    closed = threading.Event()

    def callback(stage, step, kwargs):
        if closed.is_set():
            raise _Stopped()
        events.put(("step", (stage, step, on_step(stage, step, kwargs))))

    def work():
        try:
            if closed.is_set():  # given up while it waited for another job's run
                raise _Stopped()
            events.put(("done", run(callback)))
        except BaseException as error:  # handed to the consumer, which raises it in the job's own thread
            events.put(("failed", error))

    finished = DENOISE.submit(work)
    try:
        while True:
            kind, value = events.get()
            if kind == "step":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        closed.set()
        finished.result()  # work() never raises: this only waits for the run to be over


class Progress:
    """Progress reports for the platform (handler.py sends them to RunPod): at most one a second,
    plus the last step. No callback (local runs, tests): nothing is sent."""

    def __init__(self, job: dict, total: int, send: ProgressCallback | None, clock=time.monotonic):
        self.job, self.total, self.send, self.clock = job, total, send, clock
        self.last_sent: float | None = None

    def update(self, stage: str, step: int) -> None:
        if self.send is None:
            return
        now = self.clock()
        if step != self.total and self.last_sent is not None and now - self.last_sent < 1.0:
            return
        self.last_sent = now
        self.send(self.job, {"step": step, "total_steps": self.total, "stage": stage})
