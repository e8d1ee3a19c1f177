"""One job, start to finish: validate -> plan -> fetch images -> run -> deliver.

``run_job`` is a generator: it yields the final payload, or one ``{"error": ...}``. It never
raises, so the worker keeps serving the next job whatever this one did.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

from src import dialects, generate, loras
from src.deliver import check_request, deliver
from src.errors import InputError
from src.images import load_image, load_mask
from src.models import Models
from src.plan import make_plan
from src.schema import validate
from src.storage import Storage

log = logging.getLogger(__name__)


def run_job(models: Models, job: dict, storage: Storage | None = None) -> Iterator[dict]:
    job_id = str(job.get("id", "local"))
    started = time.perf_counter()
    names = dialects.AS_SENT  # puts errors back in the words of the API the request was written for
    try:
        names = dialects.translate(job.get("input"))
        request = validate(names.input)
        check_request(request, storage)
        plan = make_plan(request, models.has_refiner)
        log.info("job %s: %s, %s, %d image(s), prompt %r", job_id, plan.task, plan.refine, len(plan.seeds),
                 _truncate(request["prompt"]))
        init_image = None
        if request["image"] is not None or request["image_url"] is not None:
            field = "image" if request["image"] is not None else "image_url"
            init_image = load_image(request[field], field)
        mask = load_mask(request["mask"], "mask", init_image.size) if request["mask"] is not None else None
        with loras.applied(models, request["loras"]):
            result = generate.run(models, request, plan, init_image, mask=mask)
        delivery = deliver(result.images, request, storage, job_id)
        payload = {
            "images": delivery.images,
            "image_url": delivery.images[0],
            "seed": plan.seeds[0],
            "seeds": list(plan.seeds),
            "timings": dict(result.timings, **delivery.timings, total=_ms(started)),
        }
        if delivery.warnings:
            payload["warnings"] = delivery.warnings
        yield payload
    except InputError as error:
        log.info("job %s refused: %s", job_id, error)
        yield {"error": names.explain(str(error))}
    except Exception:
        log.exception("job %s failed", job_id)
        yield {"error": f"The worker hit an internal error on job {job_id}; the details are in the worker's log."}


def _truncate(text: str | None, limit: int = 80) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + "..."


def _ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)
