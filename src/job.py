"""One job, start to finish: validate -> plan -> fetch images -> run -> deliver.

``run_job`` is a generator: it yields the previews asked for, then the final payload, or one
``{"error": ...}``. It never raises, so the worker keeps serving the next job whatever this one
did. The pipelines run in a worker thread and hand each step over a queue, so the denoising
loop never waits for a preview to be encoded or a progress update to be sent.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from contextlib import closing
from typing import Generator, Iterator

from src import generate, previews
from src.deliver import deliver
from src.errors import InputError
from src.images import load_image
from src.models import Models
from src.plan import make_plan
from src.schema import validate

log = logging.getLogger(__name__)


def run_job(models: Models, job: dict) -> Iterator[dict]:
    job_id = str(job.get("id", "local"))
    started = time.perf_counter()
    try:
        request = validate(job.get("input"))
        plan = make_plan(request, models.has_refiner)
        log.info("job %s: %s, %s, %d image(s), prompt %r", job_id, plan.task, plan.refine, len(plan.seeds),
                 _truncate(request["prompt"]))
        init_image = None
        if request["image"] is not None or request["image_url"] is not None:
            field = "image" if request["image"] is not None else "image_url"
            init_image = load_image(request[field], field)
        result = yield from _run_with_previews(models, job, request, plan, init_image)
        encode_started = time.perf_counter()
        images = deliver(result.images)
        timings = dict(result.timings, encode=_ms(encode_started), total=_ms(started))
        yield {
            "images": images,
            "image_url": images[0],
            "seed": plan.seeds[0],
            "seeds": list(plan.seeds),
            "timings": timings,
        }
    except InputError as error:
        log.info("job %s refused: %s", job_id, error)
        yield {"error": str(error)}
    except Exception:
        log.exception("job %s failed", job_id)
        yield {"error": f"The worker hit an internal error on job {job_id}; the details are in the worker's log."}


def _run_with_previews(models: Models, job: dict, request: dict, plan, init_image) -> Generator[dict, None, object]:
    """Run the plan in a worker thread; yield a preview dict after each preview step; return the result."""
    steps = generate.count_steps(models, request, plan)
    total = sum(steps.values())
    first_step = {"base": 0, "refiner": steps.get("base", 0)}  # steps count across the job, base then refiner
    every = request["preview_steps"]
    progress = Progress(job, total)

    def wants_preview(stage: str, step: int) -> bool:
        number = first_step[stage] + step
        return every > 0 and (number % every == 0 or number == total)

    def on_step(stage, step, kwargs):
        # In the denoising loop: keep the first image's x0 on a preview step, nothing more.
        x0 = kwargs.get("x0")
        return x0[0].detach().clone() if x0 is not None and wants_preview(stage, step) else None

    events = _steps_in_thread(lambda callback: generate.run(models, request, plan, init_image, callback), on_step)
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
                    url = previews.render(x0, request["preview_size"], request["preview_format"],
                                          request["preview_quality"], models.preview_decoder)
                except Exception:  # a preview is a courtesy: losing one must not lose the image
                    log.exception("job %s: preview after step %d failed", job.get("id"), number)
                    continue
                yield {"preview": url, "step": number, "total_steps": total, "stage": stage}


class _Stopped(Exception):
    """Raised inside the denoising loop when the job's consumer went away, to end the thread early."""


def _steps_in_thread(run, on_step) -> Generator[tuple, None, object]:
    """Call ``run(callback)`` in a worker thread; yield (stage, step, on_step's value) per step; return its result.

    The thread is always joined before this generator finishes, even when it is closed early
    (the loop is then stopped at its next step), so no job leaves a thread behind.
    """
    events: queue.Queue = queue.Queue()
    stop = threading.Event()

    def callback(stage, step, kwargs):
        if stop.is_set():
            raise _Stopped()
        events.put(("step", (stage, step, on_step(stage, step, kwargs))))

    def work():
        try:
            events.put(("done", run(callback)))
        except BaseException as error:  # handed to the consumer, which raises it in the job's own thread
            events.put(("failed", error))

    thread = threading.Thread(target=work, name="denoise", daemon=True)
    thread.start()
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
        stop.set()
        thread.join()


class Progress:
    """RunPod progress updates (``progress_update``): at most one a second, plus the last step.

    Only on RunPod: elsewhere runpod would post to a placeholder URL, so local runs and tests send nothing.
    """

    def __init__(self, job: dict, total: int, clock=time.monotonic, on_runpod: bool | None = None):
        self.job, self.total, self.clock = job, total, clock
        self.enabled = _on_runpod() if on_runpod is None else on_runpod
        self.last_sent: float | None = None

    def update(self, stage: str, step: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if step != self.total and self.last_sent is not None and now - self.last_sent < 1.0:
            return
        self.last_sent = now
        import runpod.serverless

        runpod.serverless.progress_update(self.job, {"step": step, "total_steps": self.total, "stage": stage})


def _on_runpod() -> bool:
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB") or os.environ.get("RUNPOD_POD_ID"))


def _truncate(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "..."


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
