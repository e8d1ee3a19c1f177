"""The job input schema: the one source of truth for every input, its default and range.

``validate(raw)`` checks a job's ``input`` against it (jsonschema, Draft 2020-12) and
returns the request with defaults filled in, or raises InputError with one sentence per
problem, each naming the field. The README's input table is generated from INPUT_SCHEMA
(``python -m sdxl_worker.request.schema``) and a test keeps the two in step.
"""

from __future__ import annotations

import difflib
import math

from jsonschema import Draft202012Validator
from jsonschema.validators import extend

from sdxl_worker.errors import InputError, quoted
from sdxl_worker.request import presets, samplers

MAX_SEED = 2**63 - 1
MAX_LORAS = 4  # per job; each one adds its own low-rank matmuls to every step
MAX_CONTROLNETS = 3  # per job; each one is about half a UNet more per step
MAX_REFERENCE_IMAGES = 4  # IP-Adapter reference images per job
MAX_PROMPT_CHARS = 10_000  # keeps a megabyte prompt from tying up the tokenizers and the GPU
MAX_IMAGE_CHARS = 30_000_000  # an image as base64 or a URL: about 22 MB of file
MAX_NAME_CHARS = 64  # names from a list (scheduler, task, ...)
MAX_DEPTH = 8  # how deeply lists and objects may nest anywhere in the input
MAX_VALUES = 10_000  # values in the whole input, counting those inside lists and objects

SCHEDULERS = list(samplers.SCHEDULERS)
TASKS = ["txt2img", "img2img", "inpaint", "refine"]
REFINE_MODES = ["no_refiner", "expert_ensemble_refiner", "base_image_refiner"]

_IMAGE = {
    "type": ["string", "null"],
    "minLength": 1,
    "maxLength": MAX_IMAGE_CHARS,
    "default": None,
}



HIRES_STRENGTH = 0.35  # how much of the upscaled image the second pass redraws: detail, not composition

# A union ControlNet's control modes (xinsir's controlnet-union-sdxl-1.0 numbering; the promax variant
# adds tile's 6 and inpaint's 7): several names of the published model share a number.
UNION_MODES = {"openpose": 0, "depth": 1, "softedge": 2, "scribble": 2, "canny": 3, "lineart": 3, "mlsd": 3,
               "normal": 4, "segment": 5, "tile": 6, "inpaint": 7}


def _one_of(choices: list, default, description, unset_allowed: bool = False) -> dict:  # pragma: no mutate block
    """A name from a list (a scheduler, a task, a format); ``unset_allowed``: null too, the default."""
    return {
        "type": ["string", "null"] if unset_allowed else "string",
        "enum": [*choices, None] if unset_allowed else list(choices),
        "maxLength": MAX_NAME_CHARS,
        "default": default,
        "description": description,
    }


def _output_side(which: str) -> dict:  # pragma: no mutate block
    """'width' or 'height': the same range, step and rule for each."""
    return {
        "type": ["integer", "null"],
        "minimum": 256,
        "maximum": 2048,
        "multipleOf": 8,
        "default": None,
        "description": (
            f"Output {which} in pixels, a multiple of 8. Unset: 1024, or from the input image, scaled "
            "into this range keeping its aspect ratio."
        ),
    }


INPUT_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "SDXL worker job input",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # --- what to draw ---
        "prompt": {
            "type": ["string", "null"],
            "maxLength": MAX_PROMPT_CHARS,
            "default": None,
            "description": "What to draw. Required unless `image` or `image_url` is given.",
        },
        "negative_prompt": {
            "type": ["string", "null"],
            "maxLength": MAX_PROMPT_CHARS,
            "default": None,
            "description": (
                "What to keep out of the image; reaches the base and the refiner. Unset is zeroed on the "
                "base, as in diffusers; `\"\"` is encoded like any text and gives another image."
            ),
        },
        "width": _output_side("width"),
        "height": _output_side("height"),
        "num_images": {
            "type": "integer",
            "minimum": 1,
            "maximum": 4,
            "default": 1,
            "description": "Images per job, generated in one batch; image i uses seed + i.",
        },
        "seed": {
            "type": ["integer", "null"],
            "minimum": 0,
            "maximum": MAX_SEED,
            "default": None,
            "description": "Seed of the first image. Unset: a random one, returned in the output.",
        },
        # --- how to denoise ---
        "scheduler": _one_of(SCHEDULERS, "DDIM",
            "Sampler, built fresh for each job; the refiner uses the same kind."),
        "num_inference_steps": {
            "type": "integer",
            "minimum": 1,
            "maximum": 200,
            "default": 25,
            "description": "Base steps. With `high_noise_frac`, the whole schedule shared by base and refiner.",
        },
        "guidance_scale": {
            "type": "number",
            "minimum": 0,
            "maximum": 50,
            "default": 7.5,
            "description": "Classifier-free guidance; reaches the base and the refiner.",
        },
        # --- the refiner ---
        "refine": _one_of(REFINE_MODES, None, (
            "How the refiner runs after the base. Unset: `base_image_refiner`, or "
            "`expert_ensemble_refiner` when `high_noise_frac` is set; `no_refiner` when the "
            "worker has no refiner."
        ), unset_allowed=True),
        "high_noise_frac": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "exclusiveMaximum": 1,
            "default": None,
            "description": (
                "Expert ensemble hand-off: the base denoises this fraction of the schedule, the "
                "refiner the rest (0.8 when `refine` is `expert_ensemble_refiner` and this is unset). "
                "Ignored, with a warning, in the other refine modes."
            ),
        },
        "refiner_inference_steps": {
            "type": "integer",
            "minimum": 1,
            "maximum": 200,
            "default": 50,
            "description": "Refiner steps for `base_image_refiner` and the `refine` task, before `strength`.",
        },
        "strength": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.3,
            "description": (
                "How much the refiner repaints its input (`base_image_refiner`, `refine` task): "
                "it runs about strength x `refiner_inference_steps` steps."
            ),
        },
        # --- input images ---
        "task": _one_of(TASKS, None, (
            "`txt2img`, `img2img` (`image` through the base), `inpaint` (`image` and `mask`) or "
            "`refine` (refiner only). Unset: decided by which of `image`, `mask` and `image_url` are given."
        ), unset_allowed=True),
        "image": {
            **_IMAGE,
            "description": "Input image for img2img: an http(s) URL, a data URL or bare base64.",
        },
        "image_url": {
            **_IMAGE,
            "description": "Input image for the refiner alone (worker-sdxl's refine path); same forms as `image`.",
        },
        "prompt_strength": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": 0.8,
            "description": "img2img and inpaint: how much of `image` the base repaints (1 = all of it).",
        },
        # --- inpainting, watermark (issue 4) ---
        "mask": {
            **_IMAGE,
            "description": (
                "Inpainting mask for `image`, same forms as `image`: white = repaint, black = keep. "
                "Resized to the image; the refiner keeps to it too."
            ),
        },
        "apply_watermark": {
            "type": "boolean",
            "default": False,
            "description": "Embed SDXL's invisible watermark (invisible-watermark, as diffusers does) in every image.",
        },
        # --- previews (issue 3) ---
        "preview_steps": {
            "type": "integer",
            "minimum": 0,
            "maximum": 400,
            "default": 0,
            "description": (
                "Stream a preview of the image forming every this many steps, counted across base and "
                "refiner, and after the last step; 0 turns previews off."
            ),
        },
        "preview_size": {
            "type": "integer",
            "minimum": 64,
            "maximum": 1024,
            "default": 256,
            "description": "Preview size in pixels on its longer side; the aspect ratio is kept.",
        },
        "preview_format": _one_of(["jpeg", "webp"], "jpeg",
            "Preview image format, sent as a data URL."),
        "preview_quality": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 75,
            "description": "Preview JPEG/WebP quality.",
        },
        # --- LoRA (issue 5) ---
        "loras": {
            "type": ["array", "null"],
            "maxItems": MAX_LORAS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path"],
                "properties": {
                    "path": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "scale": {"type": "number", "minimum": -4, "maximum": 4, "default": 1.0},
                    "weight_name": {"type": ["string", "null"], "minLength": 1, "maxLength": 255, "default": None},
                },
            },
            "default": None,
            "description": (
                "LoRAs for this job only: a list of `{\"path\", \"scale\", \"weight_name\"}`; `path` is an "
                "https URL of a .safetensors file, a hub id or a local path; `scale` in [-4, 4], default 1."
            ),
        },
        # --- guiding the image: structure and reference (docs/control.md) ---
        "controlnets": {
            "type": ["array", "null"],
            "maxItems": MAX_CONTROLNETS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["model", "image"],
                "properties": {
                    "model": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_CHARS},
                    "image": {**_IMAGE, "type": "string"},
                    "preprocess": {"type": "string", "enum": ["none", "canny", "depth", "pose"], "maxLength": 16,
                                   "default": "none"},
                    "low_threshold": {"type": "integer", "minimum": 0, "maximum": 255, "default": 100},
                    "high_threshold": {"type": "integer", "minimum": 0, "maximum": 255, "default": 200},
                    "scale": {"type": "number", "minimum": 0, "maximum": 2, "default": 1.0},
                    "start": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0},
                    "end": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0},
                    "mode": {"type": ["string", "null"], "enum": [*UNION_MODES, None], "maxLength": 16,
                             "default": None},
                },
            },
            "default": None,
            "description": (
                "ControlNets guiding the base by an image's structure: a list (at most 3) of `{\"model\", "
                "\"image\", \"preprocess\", \"scale\", \"start\", \"end\", \"mode\"}`; `model` names one of "
                "CONTROLNET_MODELS, `preprocess` `canny` makes an edge map (`low_threshold`, `high_threshold`), "
                "`depth` a depth map (DEPTH_MODEL), `pose` people's OpenPose skeletons (POSE_MODEL), `none` takes "
                "the image as the control image; `scale` 0-2 "
                "(default 1), `start`/`end` the part of the schedule it guides; `mode` what the image is, for a "
                "union ControlNet (docs/control.md): "
                + ", ".join(UNION_MODES) + "."
            ),
        },
        "hires": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {
                "scale": {"type": "number", "minimum": 1.25, "maximum": 2, "default": 2},
                "strength": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": HIRES_STRENGTH},
                "steps": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "upscaler": {"type": "string", "enum": ["lanczos", "latent", "model"], "maxLength": 16, "default": "lanczos"},
            },
            "default": None,
            "description": (
                "A second, high-resolution pass (docs/modes.md): the first pass's images upscaled by `scale` "
                "(1.25-2; `upscaler` `lanczos` in pixels, `latent`, or `model`: the worker's UPSCALER_MODEL, an "
                "ESRGAN-family model) and redrawn by the base as img2img at the "
                "larger size, `strength` of it (default " + f"{HIRES_STRENGTH:g}" + ") over `steps` (default 20). "
                "The result's sides stay within 2048."
            ),
        },
        "return_control_images": {
            "type": "boolean",
            "default": False,
            "description": "Add `control_images` to the output: each ControlNet's control image as it guided the "
                           "job (preprocessed, at the output size), as PNG data URLs.",
        },
        "ip_adapter": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "required": ["image"],
            "properties": {
                # One image, or a list: the string and the array keywords each apply to their own type.
                "image": {"type": ["string", "array"], "minLength": 1, "maxLength": MAX_IMAGE_CHARS,
                          "minItems": 1, "maxItems": MAX_REFERENCE_IMAGES, "items": {**_IMAGE, "type": "string"}},
                "scale": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.6},
            },
            "default": None,
            "description": (
                "A reference picture's style or subject, through the worker's IP-Adapter (IP_ADAPTER_MODEL): "
                "`{\"image\", \"scale\"}`, `image` one image or a list of up to 4, `scale` 0-2 (default 0.6)."
            ),
        },
        # --- which model, how fast ---
        "model": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": MAX_NAME_CHARS,
            "default": None,
            "description": (
                "Which of the worker's checkpoints to use, by its name in BASE_MODELS. Unset: the first. "
                "Switching loads it (the time is in `timings.model_switch`)."
            ),
        },
        "preset": _one_of(list(presets.PRESETS), None, (
            "A few-step method: sets the scheduler, steps and guidance it needs and turns the refiner off "
            "(docs/checkpoints.md#fast-presets). Inputs that would break it are refused."
        ), unset_allowed=True),
        # --- delivery (issue 6) ---
        "output_format": _one_of(["png", "jpeg", "webp"], "png",
            "File format of the images: `png` (lossless), `jpeg` or `webp` (lossy, see `output_quality`)."),
        "output_quality": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 90,
            "description": "Quality of `jpeg` and `webp` images (100 = best, largest); `png` ignores it.",
        },
        "upload": {
            "type": ["boolean", "null"],
            "default": None,
            "description": (
                "Unset: presigned S3 URLs when the worker has storage (BUCKET_* variables), else data URLs. "
                "`false`: always data URLs. `true`: storage required (an error when the worker has none)."
            ),
        },
    },
}


def _is_finite_number(checker, value) -> bool:
    """A JSON number, but not a boolean, NaN or an infinity (Python's json lets those through)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def _is_integer(checker, value) -> bool:
    return _is_finite_number(checker, value) and float(value).is_integer()


_Validator = extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _is_finite_number, "integer": _is_integer}
    ),
)
_VALIDATOR = _Validator(INPUT_SCHEMA)
_PROPERTIES = INPUT_SCHEMA["properties"]


def defaults() -> dict:
    return {name: spec.get("default") for name, spec in _PROPERTIES.items()}


def entry_defaults(name: str) -> dict:
    """The defaults inside an object input (``ip_adapter``, ``hires``) or inside each entry of a list of objects
    (``loras``, ``controlnets``): stated in the schema only, filled in by ``validate``."""
    spec = _PROPERTIES[name]
    spec = spec.get("items", spec)
    return {key: sub["default"] for key, sub in spec["properties"].items() if "default" in sub}


def validate(raw) -> dict:
    """The job input with defaults filled in, or InputError naming every problem."""
    if not isinstance(raw, dict):
        raise InputError("The job's 'input' must be a JSON object of parameters, e.g. {\"prompt\": \"a cat\"}.")
    _check_size(raw)
    problems = [_sentence(error) for error in _VALIDATOR.iter_errors(raw)]
    if not problems:
        problems = _cross_field_problems(raw)
    if problems:
        raise InputError(" ".join(dict.fromkeys(problems)))  # ordered, without repeats
    request = defaults()
    request.update(presets.defaults(raw.get("preset"), raw))  # a preset is a set of defaults of its own
    request.update(raw)
    for name, spec in _PROPERTIES.items():  # 1024.0 is a valid integer in JSON Schema
        if "integer" in _types(spec) and isinstance(request[name], float):
            request[name] = int(request[name])
    for name in ("loras", "controlnets"):
        if request[name]:
            request[name] = [{**entry_defaults(name), **entry} for entry in request[name]]
    for name in ("ip_adapter", "hires"):
        if request[name] is not None:
            request[name] = {**entry_defaults(name), **request[name]}
    if request["hires"] is not None and isinstance(request["hires"]["steps"], float):
        request["hires"]["steps"] = int(request["hires"]["steps"])
    return request


def _check_size(raw: dict) -> None:
    """Refuse what would trip the validator itself: deep nesting, huge containers, numbers too long
    to print, and text that is not Unicode (lone surrogates, which JSON escapes allow)."""
    if len(raw) > MAX_VALUES:
        raise InputError(f"The job's 'input' holds more than {MAX_VALUES:,} values.")
    pending, seen = [(str(key)[:40], value, 1) for key, value in raw.items()], 0
    while pending:
        name, value, depth = pending.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise InputError(f"The job's 'input' holds more than {MAX_VALUES:,} values.")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(f"'{name}' is not valid Unicode text.") from None
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
            raise InputError(f"'{name}' is far too large a number.")
        elif isinstance(value, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InputError(f"'{name}' nests lists or objects more than {MAX_DEPTH} deep.")
            if seen + len(pending) + len(value) > MAX_VALUES:  # counted before a tuple is made for each
                raise InputError(f"The job's 'input' holds more than {MAX_VALUES:,} values.")
            children = value.items() if isinstance(value, dict) else enumerate(value)
            pending.extend((name, child, depth + 1) for _, child in children)


def _cross_field_problems(raw: dict) -> list[str]:
    problems = []
    has_image = any(raw.get(name) is not None for name in ("image", "image_url"))
    if not has_image and not (raw.get("prompt") or "").strip():
        problems.append("'prompt' is required unless 'image' or 'image_url' is given.")
    if raw.get("image") is not None and raw.get("image_url") is not None:
        problems.append(
            "Give either 'image' (img2img through the base) or 'image_url' (refiner only), not both."
        )
    problems += presets.problems(raw.get("preset"), raw)
    for index, control in enumerate(raw.get("controlnets") or ()):
        control = {**entry_defaults("controlnets"), **control}
        start, end = control["start"], control["end"]
        if start >= end:
            problems.append(f"'controlnets[{index}].start' ({start:g}) must be less than 'controlnets[{index}].end' "
                            f"({end:g}): they are the part of the schedule the ControlNet guides.")
    if raw.get("image_url") is not None or raw.get("task") == "refine":
        for name in ("controlnets", "ip_adapter"):
            if raw.get(name):
                problems.append(f"'{name}' guides the base, and a refiner-only job ('image_url') runs no base; "
                                f"send the image as 'image' for img2img, or leave '{name}' out.")
    task = raw.get("task")
    if task == "txt2img" and has_image:
        problems.append("'task' is 'txt2img' but an input image was given; drop the image or use 'img2img'.")
    if task in ("img2img", "refine") and not has_image:
        problems.append(f"'task' is '{task}' but no input image was given in 'image' or 'image_url'.")
    has_mask = raw.get("mask") is not None
    if has_mask and raw.get("image") is None:
        problems.append("'mask' needs the image to inpaint in 'image'.")
    elif task == "inpaint" and not has_mask:
        problems.append("'task' is 'inpaint' but no 'mask' was given (white = repaint, black = keep).")
    elif has_mask and task in ("txt2img", "img2img", "refine"):
        problems.append(f"'mask' was given but 'task' is '{task}'; use 'inpaint' or leave 'task' unset.")
    return problems


def _types(spec: dict) -> list[str]:
    kind = spec.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def _field(error) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "input"


def _show(value) -> str:
    """A short rendering of a value for an error sentence: never a payload, never a whole container."""
    if isinstance(value, (dict, list)):
        return f"a {_json_kind(value)}"
    if isinstance(value, str):
        return quoted(value)
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _sentence(error) -> str:
    """One readable sentence for one schema violation, naming the field and never echoing payloads."""
    name, value, kind, bound = _field(error), error.instance, error.validator, error.validator_value
    if kind == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        unknown = sorted(str(key) for key in value if key not in known)
        hints = []
        for key in unknown[:5]:  # a job with thousands of odd keys gets a short answer
            close = difflib.get_close_matches(key, known, n=1) if len(key) <= 64 else []
            hints.append(_show(key) + (f" (did you mean '{close[0]}'?)" if close else ""))
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        if name != "input":  # inside an object input (hires, ip_adapter, an entry of loras or controlnets)
            return f"'{name}' has an unknown key {', '.join(hints)}{more}; it takes {', '.join(known)}."
        return f"Unknown input {', '.join(hints)}{more}; see the README for the inputs this worker takes."
    if kind == "type":
        wanted = " or ".join("a whole number" if t == "integer" else "a number" if t == "number" else t
                             for t in ([bound] if isinstance(bound, str) else bound))
        return f"'{name}' must be {wanted}, got {_describe(value)}."
    if kind == "enum":
        options = ", ".join(str(option) for option in bound if option is not None)
        return f"'{name}' must be one of {options}; got {_show(value)}."
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        spec = error.schema
        low = spec.get("minimum", spec.get("exclusiveMinimum"))
        high = spec.get("maximum", spec.get("exclusiveMaximum"))
        low_text = f"greater than {low}" if "exclusiveMinimum" in spec else f"at least {low}"
        high_text = f"less than {high}" if "exclusiveMaximum" in spec else f"at most {high}"
        if low is not None and high is not None:
            return f"'{name}' must be {low_text} and {high_text}, got {_show(value)}."
        return f"'{name}' is out of range ({kind} {bound}), got {_show(value)}."
    if kind == "multipleOf":
        return f"'{name}' must be a multiple of {bound}, got {_show(value)}."
    if kind == "maxLength":
        return f"'{name}' is too long: at most {bound} characters, got {len(value)}."
    if kind == "minLength":
        return f"'{name}' must not be empty."
    if kind in ("maxItems", "minItems"):
        return f"'{name}' must have {'at most' if kind == 'maxItems' else 'at least'} {bound} items."
    if kind == "required":
        return f"'{name}' is missing {error.message.split(' is a required')[0]}."
    return f"'{name}' is invalid: {error.message[:120]}."


def _describe(value) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} (not a finite number)"
    if isinstance(value, str):
        shown = _show(value)
        return shown if shown.startswith("a text") else f"the text {shown}"
    if value is None:
        return "null"
    return f"{type(value).__name__} {_show(value)}" if isinstance(value, (int, float)) else f"a {_json_kind(value)}"


def _json_kind(value) -> str:
    return {dict: "JSON object", list: "list"}.get(type(value), type(value).__name__)


def markdown_table() -> str:
    """The README's input table, generated from INPUT_SCHEMA."""
    rows = ["| input | type | default | range | description |", "| --- | --- | --- | --- | --- |"]
    for name, spec in _PROPERTIES.items():
        kinds = [t for t in _types(spec) if t != "null"]
        rows.append(
            f"| `{name}` | {' or '.join(kinds)} | {_default_text(spec)} | {_range_text(spec)} | "
            f"{spec.get('description', '')} |"
        )
    return "\n".join(rows)


def _default_text(spec: dict) -> str:
    value = spec.get("default")
    return "unset" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def _range_text(spec: dict) -> str:
    if "enum" in spec:
        return ", ".join(f"`{option}`" for option in spec["enum"] if option is not None)
    parts = []
    low = spec.get("minimum", spec.get("exclusiveMinimum"))
    high = spec.get("maximum", spec.get("exclusiveMaximum"))
    if low is not None or high is not None:
        left = "(" if "exclusiveMinimum" in spec else "["
        right = ")" if "exclusiveMaximum" in spec else "]"
        parts.append(f"{left}{low if low is not None else ''}, {high if high is not None else ''}{right}")
    if "multipleOf" in spec:
        parts.append(f"multiple of {spec['multipleOf']}")
    if "maxLength" in spec:
        parts.append(f"at most {spec['maxLength']:,} characters")
    if "maxItems" in spec:
        parts.append(f"at most {spec['maxItems']} items")
    return "; ".join(parts) or "-"


if __name__ == "__main__":
    print(markdown_table())
