"""Model loading: once per process, before the first job. Pipelines share components.

BASE_MODEL, REFINER_MODEL and VAE_MODEL name a hub id, a local folder, or ``tiny`` (the
built-in random-weight model). The refiner reuses the base's text_encoder_2 and VAE, and
the img2img pipeline is built from the base's components: one copy of each in memory.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"


class ModelUnavailable(RuntimeError):
    """Weights that cannot be loaded at start-up; the message is one sentence for the log."""


@dataclass(frozen=True)
class Settings:
    """Which weights to load and how, read from the environment."""

    base: str = DEFAULT_BASE
    refiner: str | None = DEFAULT_REFINER
    vae: str | None = DEFAULT_VAE  # None: the base checkpoint's own VAE
    device: str = "cpu"
    cpu_offload: bool = False
    taesd: str | None = None  # TAESDXL weights for previews; None: the linear projection

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        import torch

        base = env.get("BASE_MODEL", DEFAULT_BASE).strip()
        refiner = env.get("REFINER_MODEL", DEFAULT_REFINER).strip()
        # The tiny base has no fp16-fix VAE to pair with: it uses its own unless told otherwise.
        vae = env.get("VAE_MODEL", "base" if base == "tiny" else DEFAULT_VAE).strip()
        device = env.get("DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            base=base,
            refiner=None if refiner.lower() in ("", "none") else refiner,
            vae=None if vae.lower() in ("", "base", "none") else vae,
            device=device,
            cpu_offload=env.get("CPU_OFFLOAD", "0") == "1",
            taesd=env.get("TAESD_MODEL", "").strip() or None,
        )


@dataclass
class Models:
    """The loaded pipelines. One job at a time uses them (RunPod runs one job per worker)."""

    base: object  # StableDiffusionXLPipeline
    img2img: object  # StableDiffusionXLImg2ImgPipeline on the base's components
    refiner: object | None  # StableDiffusionXLImg2ImgPipeline sharing text_encoder_2 and VAE
    device: str
    dtype: object
    scheduler_configs: dict = field(default_factory=dict)  # pristine, per stage
    load_seconds: dict = field(default_factory=dict)
    preview_decoder: object | None = None  # TAESDXL (AutoencoderTiny) when TAESD_MODEL loads, else None

    @property
    def has_refiner(self) -> bool:
        return self.refiner is not None


def _resolve(name: str, part: str) -> str:
    """A model name as from_pretrained takes it: ``tiny`` becomes the saved tiny folder."""
    if name == "tiny":
        from src.tiny import ensure_tiny_model

        return str(ensure_tiny_model() / part)
    return name


def _load(loader, name: str, variable: str, **kwargs):
    """from_pretrained, turning 'not found' into one sentence that names the model and the fix."""
    local = Path(name).exists()
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        where = "the local folder" if local else "the Hugging Face hub id"
        raise ModelUnavailable(
            f"Could not load {variable}={name!r} ({where}): {str(error).splitlines()[0]} "
            f"Bake the weights into the image (builder/download_weights.py), point {variable} "
            f"at a folder in diffusers layout, or set {variable}=tiny to try the built-in test model."
        ) from None


def load_models(settings: Settings | None = None) -> Models:
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    from src.previews import load_preview_decoder

    settings = settings or Settings.from_env()
    _quiet_libraries()
    on_gpu = settings.device.startswith("cuda")
    dtype = torch.float16 if on_gpu else torch.float32
    # Real SDXL repos ship an fp16 variant; the builder bakes only that one.
    variant = {"variant": "fp16"} if on_gpu and settings.base != "tiny" else {}
    common = {"dtype": dtype, "use_safetensors": True, "add_watermarker": False}
    seconds = {}

    started = time.perf_counter()
    extra = {}
    if settings.vae:
        extra["vae"] = _load(AutoencoderKL, _resolve(settings.vae, "vae"), "VAE_MODEL", dtype=dtype)
        seconds["vae"] = time.perf_counter() - started
    started = time.perf_counter()
    base = _load(
        StableDiffusionXLPipeline, _resolve(settings.base, "base"), "BASE_MODEL", **common, **variant, **extra
    )
    seconds["base"] = time.perf_counter() - started

    refiner = None
    if settings.refiner:
        started = time.perf_counter()
        variant = {"variant": "fp16"} if on_gpu and settings.refiner != "tiny" else {}
        refiner = _load(
            StableDiffusionXLImg2ImgPipeline,
            _resolve(settings.refiner, "refiner"),
            "REFINER_MODEL",
            text_encoder_2=base.text_encoder_2,
            vae=base.vae,
            **common,
            **variant,
        )
        seconds["refiner"] = time.perf_counter() - started

    img2img = StableDiffusionXLImg2ImgPipeline(**base.components)
    pipelines = [base, img2img] + ([refiner] if refiner else [])
    for pipe in pipelines:
        pipe.set_progress_bar_config(disable=True)
    if settings.cpu_offload and on_gpu:
        base.enable_model_cpu_offload()
        if refiner:
            refiner.enable_model_cpu_offload()
    else:
        for pipe in (base, refiner):
            if pipe is not None:
                pipe.to(settings.device)

    configs = {"base": dict(base.scheduler.config)}
    if refiner:
        configs["refiner"] = dict(refiner.scheduler.config)
    models = Models(base, img2img, refiner, settings.device, dtype, configs, seconds)
    models.preview_decoder = load_preview_decoder(settings.taesd, settings.device, dtype)
    log.info(
        "Loaded base=%s refiner=%s vae=%s on %s (%s) in %s",
        settings.base,
        settings.refiner or "off",
        settings.vae or "the base's own",
        settings.device,
        str(dtype).replace("torch.", ""),
        ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items()),
    )
    return models


def _quiet_libraries() -> None:
    """Progress bars and truncation chatter are noise in a worker's log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
