"""One job, start to finish: validate -> plan -> fetch images -> run -> deliver.

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
from sdxl_worker.delivery.deliver import deliver
from sdxl_worker.delivery.size_guard import OutputBudget
from sdxl_worker.delivery.storage import job_storage
from sdxl_worker.engine import budget, lora_layers, preset_weights, prompts, switch
from sdxl_worker.engine.generate import count_steps, ms_since
from sdxl_worker.engine.models import Models, free_memory
from sdxl_worker.engine.plan import make_plan
from sdxl_worker.errors import InputError
from sdxl_worker.inputs.control_images import control_image, reference_image
from sdxl_worker.inputs.lora_files import LoraFiles, label_of
from sdxl_worker.request import dialects
from sdxl_worker.request.check import check
from sdxl_worker.request.types import Lora, Request
from sdxl_worker.runtime.logs import hidden, protect, redact, truncate
from sdxl_worker.runtime.stopping import JobStopped, Stop
from sdxl_worker.runtime.stream import ProgressCallback, run_streamed
from sdxl_worker.runtime.worker import Worker

log = protect(logging.getLogger(__name__))  # no payloads or secrets in the log

# With CONCURRENCY above 1 two jobs run at once, but one at a time holds the models: its LoRA
# layers on, its run in the denoise thread. The other's downloads and delivery overlap that.
_models_in_use = threading.Lock()


def run_job(worker: Worker, job: dict, on_progress: ProgressCallback | None = None,
            stop: Stop | None = None) -> Iterator[dict]:
    job = job if isinstance(job, dict) else {}
    s3_config = job.get("s3Config")
    secrets = [s3_config.get(name) for name in ("accessId", "accessSecret")] if isinstance(s3_config, dict) else []
    with hidden(*secrets):  # the job's own credentials never reach the log, its failures' included
        yield from _answer(worker, job, on_progress, stop or Stop())


def _answer(worker: Worker, job: dict, on_progress: ProgressCallback | None, stop: Stop) -> Iterator[dict]:
    """The job's outputs, or one error: never an exception."""
    job_id = str(job.get("id", "local"))[:100]
    names = dialects.AS_SENT  # puts errors back in the words of the API the request was written for
    try:
        names = dialects.translate(job.get("input"))
        # The work runs in its own frame, so what it holds dies with it when it fails.
        yield from _run(worker, job, names.input, on_progress, stop)
    except JobStopped as error:
        log.info("job %s stopped (%s): %s", job_id, error.reason, error)
        failure, collect = {"error": str(error)}, True
        traceback.clear_frames(error.__traceback__)
    except InputError as error:
        log.info("job %s refused: %s", job_id, error)
        failure, collect = {"error": names.explain(str(error))}, False  # refcounting frees what it held
    except Exception as error:
        kind = errors.kind_of(error)
        if kind == errors.OUT_OF_MEMORY:
            log.warning("job %s ran out of GPU memory: %s", job_id, str(error)[:300])
        else:
            log.exception("job %s failed (%s)", job_id, kind)
        failure, collect = {"error": errors.message(kind, job_id)}, True
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
    models: Models = worker.models
    job_id = str(job.get("id", "local"))[:100]
    started = time.perf_counter()
    stop.check("before it started")  # taken after SIGTERM: not started at all
    request = Request.from_input(raw_input)
    storage, storage_warning = job_storage(job.get("s3Config"), worker.storage,
                                           endpoint_addresses=worker.fetcher.endpoint_addresses)
    check(request, has_refiner=models.has_refiner, has_storage=storage is not None,
          model_names=switch.model_names(models), presets=preset_weights.available(models.settings) if request.preset else (),
          controlnets=tuple(models.controlnets), has_ip_adapter=models.ip_adapter is not None)
    if models.settings is not None and models.settings.cpu_offload:
        _refuse_what_offload_cannot_run(request)
    switch.refuse_broken(models, request.model)
    plan = make_plan(request, models.has_refiner)
    if plan.scheduler in models.broken_samplers:  # found by the start-up self-check
        raise InputError(f"'scheduler' '{plan.scheduler}' cannot run on this worker (its start-up check failed; "
                         f"the log says why); choose another.")
    log.info("job %s: %s, %s, %d image(s), prompt %r", job_id, plan.task, plan.refine, len(plan.seeds),
             truncate(request.prompt))
    steps = count_steps(models, plan)
    switching = switch.switch_work(models, request.model)
    size_known = bool(plan.width and plan.height)
    if size_known:  # refused before any download
        budget.check(plan, steps, plan.width, plan.height, plan.guidance_scale, worker.max_job_work, switch=switching)
    # What the prompts' encoders and the LoRA entries would refuse, refused before any download.
    prompts.check_prompts(models.base, request.prompt, request.negative_prompt)
    for index, lora in enumerate(request.loras):
        worker.lora_files.check_entry(asdict(lora), index)
    init_image = None
    if request.image is not None or request.image_url is not None:
        field = "image" if request.image is not None else "image_url"
        init_image = worker.images.image(getattr(request, field), field)
        if not size_known:  # the size comes from the image: bounded, then budgeted, before any model runs
            width, height = plan.size_for(init_image.size, field)
            budget.check(plan, steps, width, height, plan.guidance_scale, worker.max_job_work, switch=switching)
    mask = worker.images.mask(request.mask, "mask", init_image.size) if request.mask is not None else None
    output_size = plan.size_for(init_image.size if init_image is not None else None) if request.controlnets else None
    control_images = [control_image(worker.images.image(guide.image, f"controlnets[{index}].image"), output_size,
                                    guide.preprocess, guide.low_threshold, guide.high_threshold)
                      for index, guide in enumerate(request.controlnets)]
    references = request.ip_adapter.images if request.ip_adapter is not None else ()
    reference_images = [reference_image(worker.images.image(
                            image, "ip_adapter.image" if len(references) == 1 else f"ip_adapter.image[{index}]"))
                        for index, image in enumerate(references)]
    output_budget = OutputBudget(worker.inline_limit_bytes)  # previews and the final payload together
    stop.check("while its inputs were read")  # a cancel during the downloads ends the job here
    loras = local_loras(worker.lora_files, request.loras)
    stop.check("while its inputs were read")
    with _holding_the_models(stop):
        loading = {"model_switch": switch.use_model(models, request.model)}
        with preset_weights.applied(models, request.preset) as loading["preset_load"], \
                lora_layers.applied(models, loras):
            stop.check("before its first step")
            result = yield from run_streamed(models, job, request, plan, init_image, mask, on_progress, stop,
                                             output_budget, control_images, reference_images)
    stop.check("after its last step, before delivery")
    delivery = deliver(result.images, request, storage, job_id, room_bytes=output_budget.final_room())
    payload = {
        "images": delivery.images,
        "image_url": delivery.images[0],
        "seed": plan.seeds[0],
        "seeds": list(plan.seeds),
        "timings": dict({name: ms for name, ms in loading.items() if ms is not None}, **result.timings,
                        **delivery.timings, total=ms_since(started)),
    }
    warnings = [*plan.warnings, storage_warning, output_budget.warning(), *delivery.warnings]
    if any(warnings):  # redacted: an S3 error must not carry the job's own credentials back
        payload["warnings"] = [redact(warning, limit=None) for warning in warnings if warning]
    yield payload


def _refuse_what_offload_cannot_run(request) -> None:
    """CPU_OFFLOAD=1 moves the pipelines' own models on and off the GPU; a preset's UNet, the
    ControlNets and the IP-Adapter's image encoder are not among them."""
    for field, given, what in (("preset", request.preset, "a preset's own UNet"),
                               ("controlnets", request.controlnets, "the ControlNets"),
                               ("ip_adapter", request.ip_adapter, "the IP-Adapter's image encoder")):
        if given:
            raise InputError(f"'{field}' cannot run on this worker: CPU_OFFLOAD=1 moves only the pipelines' own "
                             f"models to the GPU and back, and {what} is not one of them; leave '{field}' out, "
                             f"or run without CPU_OFFLOAD.")


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
