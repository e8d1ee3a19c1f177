"""OpenAI's Images API in this worker's words: its fields mapped to a job's input, the result in its shape.

docs/http.md tables the mapping. In short: ``prompt`` as it is, ``n`` -> ``num_images``, ``size``
"WxH" -> ``width``/``height``, ``response_format`` ``b64_json`` (the default) -> inline images,
``url`` -> the worker's storage (presigned URLs), ``model`` -> a BASE_MODELS name or a preset
(OpenAI's own model names mean the default checkpoint), ``quality`` low/high -> 15/50 steps when
the request sets none, ``output_format`` and ``output_compression`` -> ``output_format`` and
``output_quality``. ``style``, ``user``, ``moderation`` and ``background: auto|opaque`` are accepted
and change nothing. Every other field is one of the worker's own inputs (``seed``,
``negative_prompt``, ``loras``, ...), which OpenAI's clients send through ``extra_body``; the
schema checks them as on the queue path.
"""

from __future__ import annotations

import base64
import re
import time
from dataclasses import dataclass

from sdxl_worker.api.replies import Refusal
from sdxl_worker.errors import quoted
from sdxl_worker.request.presets import PRESETS

OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")
QUALITY_STEPS = {"low": 15, "high": 50, "hd": 50}  # "auto", "standard", "medium": the worker's default
QUALITIES = ("auto", "standard", "medium", *QUALITY_STEPS)
STYLES = ("vivid", "natural")
BACKGROUNDS = ("auto", "opaque")
MODERATIONS = ("auto", "low")
RESPONSE_FORMATS = ("b64_json", "url")
# OpenAI's name for each worker input it sets: a worker error naming the input names this field.
RENAMED = {"num_images": "n", "width": "size", "height": "size", "upload": "response_format",
           "output_quality": "output_compression", "preset": "model", "image": "image", "mask": "mask"}
OPENAI_FIELDS = ("prompt", "n", "size", "response_format", "model", "quality", "style", "output_format",
                 "output_compression", "user", "background", "moderation", "stream", "partial_images")
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


@dataclass(frozen=True)
class Asked:
    """What the answer's shape depends on."""

    response_format: str = "b64_json"
    output_format: str = "png"


def to_input(body: dict, checkpoints: tuple[str, ...]) -> tuple[dict, Asked]:
    """The job's input for an Images API request ``body`` (its fields already typed), and how to answer.
    ``checkpoints``: the worker's BASE_MODELS names."""
    extra = {name: value for name, value in body.items() if name not in OPENAI_FIELDS}
    given = {name: value for name, value in body.items() if name in OPENAI_FIELDS and value is not None}
    job = dict(extra)

    def put(ours: str, theirs: str, value) -> None:
        if ours in extra:
            raise Refusal(400, f"'{theirs}' and '{ours}' set the same input; give only one.", theirs)
        job[ours] = value

    if "prompt" in given:
        job["prompt"] = given["prompt"]
    if "n" in given:
        put("num_images", "n", given["n"])
    if given.get("size", "auto") != "auto":
        width, height = _size(given["size"])
        put("width", "size", width)
        put("height", "size", height)
    response_format = _one_of(given, "response_format", RESPONSE_FORMATS, "b64_json")
    put("upload", "response_format", response_format == "url")
    _model(given.get("model"), checkpoints, job, put)
    quality = _one_of(given, "quality", QUALITIES, "auto")
    if quality in QUALITY_STEPS and "num_inference_steps" not in job and "preset" not in job:
        job["num_inference_steps"] = QUALITY_STEPS[quality]
    _one_of(given, "style", STYLES, "vivid")
    _one_of(given, "moderation", MODERATIONS, "auto")
    if _one_of(given, "background", (*BACKGROUNDS, "transparent"), "auto") == "transparent":
        raise Refusal(400, "'background' transparent cannot be made: SDXL draws opaque images; use auto or opaque.",
                      "background")
    if given.get("stream"):
        raise Refusal(400, "'stream' is not offered on this route: for previews as the image is drawn, POST the "
                           "input to /v1/jobs with Accept: text/event-stream (docs/http.md).", "stream")
    if "output_format" in given:
        job["output_format"] = given["output_format"]
    if "output_compression" in given:
        put("output_quality", "output_compression", given["output_compression"])
    return job, Asked(response_format, job.get("output_format", "png"))


def answer(result: dict, asked: Asked) -> dict:
    """The job's payload in OpenAI's shape, with the seeds, timings and warnings under ``sdxl``."""
    if asked.response_format == "b64_json":
        data = [{"b64_json": image.partition(",")[2] if image.startswith("data:") else image}
                for image in result["images"]]
    else:
        data = [{"url": image} for image in result["images"]]
    extra = {key: result[key] for key in ("seed", "seeds", "timings", "warnings") if key in result}
    return {"created": int(time.time()), "data": data, "output_format": asked.output_format, "sdxl": extra}


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _size(size) -> tuple[int, int]:
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise Refusal(400, f"'size' must be WIDTHxHEIGHT, like 1024x1024, or auto; got {quoted(size)}.", "size")
    return int(match[1]), int(match[2])


def _one_of(given: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = given.get(name, default)
    if value not in choices:
        raise Refusal(400, f"'{name}' must be one of {', '.join(choices)}; got {quoted(value)}.", name)
    return value


def _model(model, checkpoints: tuple[str, ...], job: dict, put) -> None:
    if model is None or model in OPENAI_MODELS:
        return
    if model in checkpoints:
        put("model", "model", model)
    elif model in PRESETS:
        put("preset", "model", model)
    else:
        raise Refusal(400, f"'model' is {quoted(model)}, which this worker does not serve; use one of "
                           f"{', '.join((*checkpoints, *PRESETS))} (GET /v1/models lists them).", "model",
                      "model_not_found")


def model_list(checkpoints: tuple[str, ...], presets: tuple[str, ...]) -> dict:
    """``GET /v1/models`` in OpenAI's shape: the checkpoints, then the presets whose weights are here."""
    entries = [{"id": name, "object": "model", "created": 0, "owned_by": "sdxl-worker", "kind": "checkpoint"}
               for name in checkpoints]
    entries += [{"id": name, "object": "model", "created": 0, "owned_by": "sdxl-worker", "kind": "preset"}
                for name in presets]
    return {"object": "list", "data": entries}
