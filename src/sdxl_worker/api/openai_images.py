"""OpenAI's Images API in this worker's words: its fields mapped to a job's input, the result in its shape.

docs/http.md tables the mapping. In short: ``prompt`` as it is, ``n`` -> ``num_images``, ``size``
"WxH" -> ``width``/``height``, ``response_format`` ``b64_json`` (the default) -> inline images,
``url`` -> the worker's storage (presigned URLs), ``model`` -> a BASE_MODELS name or a preset
(OpenAI's own model names mean the default checkpoint), ``quality`` low/high -> 15/50 steps when
the request sets none, ``output_format`` and ``output_compression`` -> ``output_format`` and
``output_quality``, ``stream`` with ``partial_images`` -> previews as OpenAI's partial images, then
each image as its own event. ``style``, ``user``, ``moderation`` and ``background: auto|opaque``
are accepted and change nothing. Every other field is one of the worker's own inputs (``seed``,
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
OPENAI_FIELDS = ("prompt", "n", "size", "response_format", "model", "quality", "style", "output_format",
                 "output_compression", "user", "background", "moderation", "stream", "partial_images")
MAX_PARTIAL_IMAGES = 3  # as OpenAI's API
NO_TOKENS = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0}, "output_tokens": 0,
             "total_tokens": 0}  # OpenAI's clients expect a usage; SDXL counts no tokens
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")


@dataclass(frozen=True)
class Asked:
    """What the answer's shape depends on."""

    response_format: str = "b64_json"
    output_format: str = "png"
    stream: bool = False  # OpenAI's streaming: partial images, then each image, as Server-Sent Events
    partial_images: int = 0
    size: str = "auto"
    quality: str = "auto"
    background: str = "auto"
    renamed: tuple[tuple[str, str], ...] = ()  # (worker input, the OpenAI field that set it): errors' param


def to_input(body: dict, checkpoints: tuple[str, ...], presets: tuple[str, ...] = ()) -> tuple[dict, Asked]:
    """The job's input for an Images API request ``body`` (its fields already typed), and how to answer.
    ``checkpoints``: the worker's BASE_MODELS names; ``presets``: the presets whose weights it has."""
    extra = {name: value for name, value in body.items() if name not in OPENAI_FIELDS}
    given = {name: value for name, value in body.items() if name in OPENAI_FIELDS and value is not None}
    job, renamed = dict(extra), {}

    def put(ours: str, theirs: str, value) -> None:
        if ours in extra:
            raise Refusal(400, f"'{theirs}' and '{ours}' set the same input; give only one.", theirs)
        job[ours] = value
        renamed[ours] = theirs

    if not isinstance(given.get("prompt"), str) or not given["prompt"].strip():
        raise Refusal(400, "'prompt' is required: the text of the picture to draw, or of the change to make.",
                      "prompt")
    job["prompt"] = given["prompt"]
    if "n" in given:
        put("num_images", "n", given["n"])
    if given.get("size", "auto") != "auto":
        width, height = _size(given["size"])
        put("width", "size", width)
        put("height", "size", height)
    response_format = _one_of(given, "response_format", RESPONSE_FORMATS, "b64_json")
    put("upload", "response_format", response_format == "url")
    _model(given.get("model"), checkpoints, presets, put)
    quality = _one_of(given, "quality", QUALITIES, "auto")
    if quality in QUALITY_STEPS and "num_inference_steps" not in job and "preset" not in job:
        job["num_inference_steps"] = QUALITY_STEPS[quality]
    _one_of(given, "style", STYLES, "vivid")
    _one_of(given, "moderation", MODERATIONS, "auto")
    if _one_of(given, "background", (*BACKGROUNDS, "transparent"), "auto") == "transparent":
        raise Refusal(400, "'background' transparent cannot be made: SDXL draws opaque images; use auto or opaque.",
                      "background")
    stream, partial_images = _streaming(given, extra, response_format)
    if partial_images:
        job["preview_steps"] = 1  # every step's preview reaches the server; stream_events picks the partials
    if "output_format" in given:
        job["output_format"] = given["output_format"]
    if "output_compression" in given:
        put("output_quality", "output_compression", given["output_compression"])
    background = given.get("background", "auto")
    return job, Asked(response_format, job.get("output_format", "png"), stream, partial_images,
                      given.get("size", "auto"), quality, background, tuple(renamed.items()))


def answer(result: dict, asked: Asked) -> dict:
    """The job's payload in OpenAI's shape, with the seeds, timings and warnings under ``sdxl``."""
    if asked.response_format == "b64_json":
        data = [{"b64_json": image.partition(",")[2] if image.startswith("data:") else image}
                for image in result["images"]]
    else:
        data = [{"url": image} for image in result["images"]]
    extra = {key: result[key] for key in ("seed", "seeds", "timings", "warnings") if key in result}
    return {"created": int(time.time()), "data": data, "sdxl": extra,
            "output_format": delivered_format(result["images"][0], asked.output_format)}


async def stream_events(events, asked: Asked, prefix: str):
    """A job's events as OpenAI's image stream: ``{prefix}.partial_image`` for ``partial_images``
    previews spread over the job's steps (base and refiner counted as one run), then ``{prefix}.completed`` for each image (its
    seed under ``sdxl``), or one ``error`` event in OpenAI's error shape. ``prefix``:
    ``image_generation`` or ``image_edit``."""
    from sdxl_worker.api.replies import failed, openai_error

    sent, common = 0, {"size": asked.size, "quality": asked.quality, "background": asked.background}
    async for kind, data in events:
        if kind == "preview" and sent < asked.partial_images \
                and data["step"] * (asked.partial_images + 1) >= (sent + 1) * data["total_steps"]:
            yield f"{prefix}.partial_image", {
                "type": f"{prefix}.partial_image", "b64_json": data["preview"].partition(",")[2],
                "created_at": int(time.time()), "output_format": "jpeg", "partial_image_index": sent, **common}
            sent += 1
        elif kind == "result":
            for index, image in enumerate(data["images"]):
                common["size"] = _size_of(image) or asked.size  # a second pass ('hires') makes it larger
                extra = {"seed": data["seeds"][index], "timings": data["timings"]}
                if data.get("warnings"):
                    extra["warnings"] = data["warnings"]
                yield f"{prefix}.completed", {
                    "type": f"{prefix}.completed", "b64_json": image.partition(",")[2], "created_at": int(time.time()),
                    "output_format": delivered_format(image, asked.output_format), **common, "usage": NO_TOKENS,
                    "sdxl": extra}
        elif kind == "error":
            yield "error", openai_error(failed(data), dict(asked.renamed))
        elif kind == "":
            yield kind, data  # keep-alive


def _size_of(image: str) -> str | None:
    """A delivered data URL's size as "WxH", read from its header; None for a URL."""
    from sdxl_worker.inputs.images import image_size

    size = image_size(base64.b64decode(image.partition(",")[2])) if image.startswith("data:") else None
    return f"{size[0]}x{size[1]}" if size else None


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _streaming(given: dict, extra: dict, response_format: str) -> tuple[bool, int]:
    """OpenAI's ``stream`` and ``partial_images`` (0-3), checked."""
    stream, partial_images = given.get("stream", False), given.get("partial_images", 0)
    if not isinstance(stream, bool):
        raise Refusal(400, f"'stream' must be true or false; got {_shown(stream)}.", "stream")
    if partial_images not in range(MAX_PARTIAL_IMAGES + 1) or isinstance(partial_images, bool):
        raise Refusal(400, f"'partial_images' must be a whole number from 0 to {MAX_PARTIAL_IMAGES}; got "
                           f"{_shown(partial_images)}.", "partial_images")
    if stream and response_format == "url":
        raise Refusal(400, "'response_format' url cannot stream: a streamed image comes as b64_json.", "response_format")
    if "preview_steps" in extra:
        raise Refusal(400, "'preview_steps' has no place in the Images API: ask for 'partial_images' with 'stream', "
                           "or POST the input to /v1/jobs with Accept: text/event-stream.", "preview_steps")
    return stream, partial_images if stream else 0


def _shown(value) -> str:
    """A value as a sentence shows what was sent: a number bare, anything else as errors.quoted does."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    if not isinstance(value, str):
        return {list: "a list", dict: "an object", bool: "true or false"}.get(type(value), "null")
    return quoted(value)


def delivered_format(image: str, asked: str) -> str:
    """The format an image was delivered in: a data URL says (an inline PNG over the payload limit
    comes as JPEG or WebP, with a warning); an uploaded one is in the format asked."""
    if image.startswith("data:image/"):
        return {"jpeg": "jpeg", "png": "png", "webp": "webp"}.get(image[len("data:image/"):].split(";")[0], asked)
    return asked


def _size(size) -> tuple[int, int]:
    match = _SIZE.fullmatch(size) if isinstance(size, str) else None
    if match is None:
        raise Refusal(400, f"'size' must be WIDTHxHEIGHT, like 1024x1024, or auto; got {_shown(size)}.", "size")
    return int(match[1]), int(match[2])


def _one_of(given: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = given.get(name, default)
    if value not in choices:
        raise Refusal(400, f"'{name}' must be one of {', '.join(choices)}; got {_shown(value)}.", name)
    return value


def _model(model, checkpoints: tuple[str, ...], presets: tuple[str, ...], put) -> None:
    if model is not None and not isinstance(model, str):
        raise Refusal(400, f"'model' must be a model's name, a string; got {_shown(model)}.", "model")
    if model is None or model in OPENAI_MODELS:
        return
    if model in checkpoints:
        put("model", "model", model)
    elif model in presets:
        put("preset", "model", model)
    else:
        also = " (a preset whose weights are not in this worker's image)" if model in PRESETS else ""
        raise Refusal(400, f"'model' is {quoted(model)}{also}, which this worker does not serve; use one of "
                           f"{', '.join((*checkpoints, *presets))} (GET /v1/models lists them).", "model",
                      "model_not_found")


def model_list(checkpoints: tuple[str, ...], presets: tuple[str, ...]) -> dict:
    """``GET /v1/models`` in OpenAI's shape: the checkpoints, then the presets whose weights are here."""
    entries = [{"id": name, "object": "model", "created": 0, "owned_by": "sdxl-worker", "kind": "checkpoint"}
               for name in checkpoints]
    entries += [{"id": name, "object": "model", "created": 0, "owned_by": "sdxl-worker", "kind": "preset"}
                for name in presets]
    return {"object": "list", "data": entries}
