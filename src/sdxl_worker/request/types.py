"""The typed request: a validated job input, frozen, every field resolved to its default.

``Request.from_input(raw)`` validates ``raw`` against the schema (sdxl_worker.request.schema)
and builds the request; past this point no layer reads the raw input. Its fields are exactly
the schema's properties (a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sdxl_worker.request.schema import validate


@dataclass(frozen=True)
class Lora:
    """One LoRA of a job: where it is, how strongly it applies, and which file of a folder or repo."""

    path: str
    scale: float
    weight_name: str | None


@dataclass(frozen=True)
class ControlNetInput:
    """One ControlNet of a job: which one, its control image, how it is made and how strongly it guides."""

    model: str
    image: str
    preprocess: str  # none | canny
    low_threshold: int
    high_threshold: int
    scale: float
    start: float  # the fraction of the schedule where its guidance starts ...
    end: float  # ... and ends
    mode: str | None = None  # a union ControlNet's control mode (request.schema.UNION_MODES)


@dataclass(frozen=True)
class IpAdapterInput:
    """The IP-Adapter's reference images for a job, and how strongly they steer it."""

    images: tuple[str, ...]
    scale: float


@dataclass(frozen=True)
class HiresInput:
    """The high-resolution second pass: how much larger, how much redrawn, in how many steps, upscaled how."""

    scale: float
    strength: float
    steps: int
    upscaler: str  # lanczos | latent | model


@dataclass(frozen=True)
class Request:
    """A job's input, validated, every field and nested entry at its schema default when unset.

    Args (fields): exactly the schema's properties, under the same names; each one's meaning,
    range and default is its ``description`` in request/schema.py (the README's input table is
    generated from there). ``loras``, ``controlnets`` and ``ip_adapter`` hold typed entries
    (``Lora``, ``ControlNetInput``, ``IpAdapterInput``). Built only by ``Request.from_input``;
    the plan (engine/plan.py) resolves what it leaves unset.
    """

    # what to draw
    prompt: str | None
    negative_prompt: str | None
    width: int | None
    height: int | None
    num_images: int
    seed: int | None
    # how to denoise
    scheduler: str
    num_inference_steps: int
    guidance_scale: float
    # the refiner
    refine: str | None
    high_noise_frac: float | None
    refiner_inference_steps: int
    strength: float
    # input images
    task: str | None
    image: str | None
    image_url: str | None
    prompt_strength: float
    mask: str | None
    # extras
    apply_watermark: bool
    preview_steps: int
    preview_size: int
    preview_format: str
    preview_quality: int
    loras: tuple[Lora, ...]
    # guiding the image
    controlnets: tuple[ControlNetInput, ...]
    hires: HiresInput | None
    return_control_images: bool
    ip_adapter: IpAdapterInput | None
    # which model, how fast
    model: str | None
    preset: str | None
    # delivery
    output_format: str
    output_quality: int
    upload: bool | None

    @classmethod
    def from_input(cls, raw) -> "Request":
        """The request ``raw`` asks for; InputError naming every problem with it."""
        values = validate(raw)
        values["loras"] = tuple(Lora(**lora) for lora in values["loras"] or ())
        values["controlnets"] = tuple(ControlNetInput(**control) for control in values["controlnets"] or ())
        if values["hires"] is not None:
            values["hires"] = HiresInput(**values["hires"])
        asked = values["ip_adapter"]
        if asked is not None:
            images = asked["image"]
            values["ip_adapter"] = IpAdapterInput(tuple([images] if isinstance(images, str) else images),
                                                  asked["scale"])
        return cls(**{f.name: values[f.name] for f in fields(cls)})
