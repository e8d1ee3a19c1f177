"""One job, start to finish, in nine stages: decode, validate, plan, check, fetch, check decoded,
prepare, run, deliver (``_run`` numbers them; docs/ARCHITECTURE.md draws them).

``run_job`` is a generator: it yields the previews asked for (src/sdxl_worker/runtime/stream.py runs the pipelines
in the denoise thread), then the final payload, or one ``{"error": ...}``. It never raises, so the
worker keeps serving the next job whatever this one did. Failures follow the taxonomy in
src/sdxl_worker/errors.py; after out-of-memory the memory is freed before the next job, and a
poisoned CUDA context adds ``"refresh_worker": True`` (handler.py hands that to RunPod). A job
whose ``Stop`` is set (cancel, JOB_TIMEOUT_S, SIGTERM) ends within one step with an error saying
why, and its memory is freed the same way. A job's ``s3Config`` sends its images to that bucket.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict
from typing import Iterator

from sdxl_worker import errors
from sdxl_worker.delivery.deliver import data_url, deliver, encode_png
from sdxl_worker.delivery.size_guard import OutputGuard
from sdxl_worker.delivery.storage import job_storage
from sdxl_worker.engine import lora_layers, preset_weights, switch
from sdxl_worker.engine.generate import ms_since
from sdxl_worker.engine.models import Models, free_memory
from sdxl_worker.engine.plan import Plan, counted, make_plan
from sdxl_worker.errors import InputError
from sdxl_worker.inputs.control_images import control_image, ip_adapter_image
from sdxl_worker.inputs.lora_files import LoraFiles, label_of
from sdxl_worker.request import dialects
from sdxl_worker.request.types import Lora, Request
from sdxl_worker.runtime.checks import check, check_decoded
from sdxl_worker.runtime.context import JobContext, JobInputs, ProgressCallback, job_id_of
from sdxl_worker.runtime.logs import hidden, protect, redact, truncate
from sdxl_worker.runtime.stopping import JobStopped, Stop
from sdxl_worker.runtime.stream import run_streamed
from sdxl_worker.runtime.worker import Worker

log = protect(logging.getLogger(__name__))  # no payloads or secrets in the log

# With CONCURRENCY above 1 two jobs run at once, but one at a time holds the models: its LoRA
# layers on, its run in the denoise thread. The other's downloads and delivery overlap that.
_models_in_use = threading.Lock()


def run_job(worker: Worker, job: dict, on_progress: ProgressCallback | None = None,
            stop: Stop | None = None) -> Iterator[dict]:
    """Run one job; yield its previews, then its result or one ``{"error": ...}``. Never raises.

    Args:
        worker: what jobs run on (runtime/worker.py): models, settings, storage, file readers.
        job: the job as RunPod gives it: ``{"id", "input", "s3Config"?}``.
        on_progress: ``on_progress(job, {"step", "total_steps", "stage"})`` at most once a second
            and after the last step (handler.py sends it to RunPod); None: no progress.
        stop: the job's ``Stop``; set by a cancel, JOB_TIMEOUT_S or SIGTERM, the job ends within a step.
    """
    job = job if isinstance(job, dict) else {}
    s3_config = job.get("s3Config")
    secrets = [s3_config.get(name) for name in ("accessId", "accessSecret")] if isinstance(s3_config, dict) else []
    with hidden(*secrets):  # the job's own credentials never reach the log, its failures' included
        yield from _answer(worker, job, on_progress, stop or Stop())


def _answer(worker: Worker, job: dict, on_progress: ProgressCallback | None, stop: Stop) -> Iterator[dict]:
    """The job's outputs, or one error: never an exception."""
    job_id = job_id_of(job)
    names = dialects.AS_SENT  # puts errors back in the words of the API the request was written for
    try:
        names = dialects.translate(job.get("input"))
        # The work runs in its own frame, so what it holds dies with it when it fails.
        yield from _run(worker, job, names.input, on_progress, stop)
    except JobStopped as error:
        log.info("job %s stopped (%s): %s", job_id, error.reason, error)
        failure, collect = errors.Failure(str(error), error.reason), True
        traceback.clear_frames(error.__traceback__)
    except InputError as error:
        log.info("job %s refused: %s", job_id, error)
        failure, collect = errors.Failure(names.explain(str(error)), errors.INPUT), False  # refcounting frees what it held
    except Exception as error:
        kind = errors.kind_of(error)
        if kind == errors.OUT_OF_MEMORY:
            log.warning("job %s ran out of GPU memory: %s", job_id, str(error)[:300])
        else:
            log.exception("job %s failed (%s)", job_id, kind)
        failure, collect = errors.Failure(errors.message(kind, job_id), kind), True
        if kind == errors.POISONED:
            failure["refresh_worker"] = True
        # Whoever still holds the exception must not keep the failed job's tensors alive.
        traceback.clear_frames(error.__traceback__)
    else:
        return
    # Here the exception and its frames (and the tensors they held) are gone: memory can be freed.
    if collect:
        free_memory()
    yield failure


def _run(worker: Worker, job: dict, raw_input, on_progress: ProgressCallback | None, stop: Stop) -> Iterator[dict]:
    """One job's stages, in order; docs/ARCHITECTURE.md numbers them the same way."""
    started = time.perf_counter()
    context = JobContext(job, on_progress, stop)
    stop.check("before it started")  # taken after SIGTERM: not started at all
    # 1. decode: the input in this worker's names (_answer did it, and words the errors back)
    # 2. validate: the schema on every field, then a frozen Request
    request = Request.from_input(raw_input)
    storage, storage_warning = job_storage(job.get("s3Config"), worker.storage,
                                           endpoint_addresses=worker.fetcher.endpoint_addresses)
    abilities = worker.abilities(request, has_storage=storage is not None)
    # 3. plan: every derived value, once (task, refine mode, seeds, step counts, size when given)
    plan = make_plan(request, abilities.has_refiner, abilities.scheduler_configs)
    # 4. check: everything refusable before any download or model work
    check(request, plan, abilities)
    log.info("job %s: %s, %s, %d image(s), prompt %r", context.id, plan.task, plan.refine, len(plan.seeds),
             truncate(request.prompt))
    # 5. fetch: the input image, bounded and decoded (the one that can size the job)
    inputs = _fetch_input_image(worker, request)
    # 6. check what needs the decoded image (its aspect ratio, the work of a job it sizes); size the plan
    plan = check_decoded(plan, inputs.image.size if inputs.image is not None else None, inputs.image_field,
                         abilities)
    # 7. prepare: the mask, control images at the output size, reference images, LoRA files on disk
    _prepare(worker, inputs, request, plan, stop)
    # 8. run: the models held, the job's checkpoint, preset and LoRAs in place, previews streamed
    guard = OutputGuard(worker.inline_limit_bytes)  # previews and the final payload together
    # The control images as they will guide it (return_control_images): inline, whatever the delivery,
    # so their bytes are counted now, before any step (refused if they alone take half the limit).
    controls = [data_url(encode_png(image)) for image in inputs.control_images] if request.return_control_images else []
    guard.reserve(sum(len(url) + 4 for url in controls), f"The {len(controls)} control image(s)")
    result, loading = yield from _generate(worker.models, plan, inputs, context, guard)
    # 9. deliver: inline within what the previews left, or uploaded
    stop.check("after its last step, before delivery")
    delivery = deliver(result.images, plan, storage, context.id, room_bytes=guard.final_room())
    payload = {
        "images": delivery.images,
        "image_url": delivery.images[0],
        "seed": plan.seeds[0],
        "seeds": list(plan.seeds),
        "timings": dict({name: ms for name, ms in loading.items() if ms is not None}, **result.timings,
                        **delivery.timings, total=ms_since(started)),
    }
    if request.return_control_images:
        payload["control_images"] = controls
    warnings = [*plan.warnings, storage_warning, guard.warning(), *delivery.warnings]
    if any(warnings):  # redacted: an S3 error must not carry the job's own credentials back
        payload["warnings"] = [redact(warning, limit=None) for warning in warnings if warning]
    yield payload


def _fetch_input_image(worker: Worker, request: Request) -> JobInputs:
    """Stage 5: the job's input image (img2img, inpaint, refine), decoded; none for txt2img."""
    inputs = JobInputs()
    if request.image is not None or request.image_url is not None:
        inputs.image_field = "image" if request.image is not None else "image_url"
        inputs.image = worker.images.image(getattr(request, inputs.image_field), inputs.image_field)
    return inputs


def _prepare(worker: Worker, inputs: JobInputs, request: Request, plan: Plan, stop: Stop) -> None:
    """Stage 7: the mask, the control images at the output size (edge maps where the job asks for
    canny), the reference images, then the LoRA files on disk."""
    if request.mask is not None:
        inputs.mask = worker.images.mask(request.mask, "mask", inputs.image.size)
    inputs.control_images = [
        control_image(worker.images.image(entry.image, f"controlnets[{index}].image"), (plan.width, plan.height),
                      entry.preprocess, entry.low_threshold, entry.high_threshold, depth=worker.models.depth,
                      pose=worker.models.pose, field=f"controlnets[{index}].image")
        for index, entry in enumerate(request.controlnets)]
    references = request.ip_adapter.images if request.ip_adapter is not None else ()
    inputs.ip_adapter_images = [
        ip_adapter_image(worker.images.image(
            image, "ip_adapter.image" if len(references) == 1 else f"ip_adapter.image[{index}]"))
        for index, image in enumerate(references)]
    stop.check("while its inputs were read")  # a cancel during the downloads ends the job here
    inputs.loras = local_loras(worker.lora_files, plan.loras)
    stop.check("while its inputs were read")


def _generate(models: Models, plan: Plan, inputs: JobInputs, context: JobContext, guard: OutputGuard):
    """Stage 8: the images, previews yielded as they come; returns (result, loading timings)."""
    with _holding_the_models(context.stop):
        loading = {"model_switch": switch.use_model(models, plan.model)}
        if plan.step_counts is not None and plan.counted_with != models.scheduler_configs:
            # The checkpoint in place (loaded just now, or switched by another job since the plan
            # was made) brings its own scheduler config: its step counts.
            plan = counted(plan, models.scheduler_configs)
        with preset_weights.applied(models, plan.preset) as loading["preset_load"], \
                lora_layers.applied(models, inputs.loras):
            context.stop.check("before its first step")
            result = yield from run_streamed(models, plan, inputs, context, guard)
    return result, loading


@contextmanager
def _holding_the_models(stop: Stop):
    """The models for this job; while another job holds them, a stop still ends this one at once."""
    while not _models_in_use.acquire(timeout=0.1):
        stop.check("while another job held the models")
    try:
        yield
    finally:
        _models_in_use.release()


def local_loras(lora_files: LoraFiles, loras) -> list[lora_layers.LoraFile]:
    """The job's LoRAs (Lora entries, or the dicts users send) as local files, found or downloaded
    into the cache, in order."""
    entries = [asdict(lora) if isinstance(lora, Lora) else dict(lora) for lora in loras or ()]
    return [lora_layers.LoraFile(lora_files.resolve(lora, index), lora.get("scale", 1.0), label_of(lora),
                                 index) for index, lora in enumerate(entries)]
