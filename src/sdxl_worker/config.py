"""The worker's configuration: every environment variable it reads, in one place.

``load()`` reads them all once, at start-up, into frozen dataclasses, one per part of the
worker; a bad value raises ConfigError (the worker stops) with one sentence naming the variable
and what it accepts. One parser per kind of value. Wherever a model can be switched off,
``none``, ``off``, ``false``, ``0`` and the empty string all mean off. The default model ids
live here, and the image builder reads them from here. ``VARIABLES`` documents every variable;
``python -m sdxl_worker.config`` prints the table docs/configuration.md holds (a test keeps the
two in step). Standard library only: the builder imports this before anything is installed.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from sdxl_worker.errors import StartupError

DEFAULT_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"
DEFAULT_VAE = "madebyollin/sdxl-vae-fp16-fix"
DEFAULT_TAESD = "madebyollin/taesdxl"  # the Docker image's default; unset, previews are linear
OFF = ("", "none", "off", "false", "0")  # a model switched off
YES, NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# Two warm-up shapes: the default one compiles static kernels for it, and a second, different
# size and batch makes dynamo compile shape-generic kernels, so other sizes do not recompile.
DEFAULT_WARMUP_SIZES = "1024x1024:1,768x1344:2"
RUNPOD_MODEL_CACHE = "/runpod-volume/huggingface-cache/hub"  # where RunPod's model caching puts hub repos
DEFAULT_IP_ADAPTER_WEIGHT = "sdxl_models/ip-adapter_sdxl.safetensors"  # h94/IP-Adapter's SDXL adapter
DEFAULT_MODEL_NAME = "default"  # the one checkpoint's name when BASE_MODELS is unset
MAX_URL_LIFETIME_S = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
STORAGE_REQUIRED = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")
_SECRET_NAMES = ("KEY", "SECRET", "TOKEN", "PASSWORD", "CREDENTIAL", "LOGIN")


class ConfigError(StartupError):
    """An environment variable with a value the worker cannot use."""


@dataclass(frozen=True)
class Variable:
    name: str
    part: str
    default: str
    accepted: str
    meaning: str


VARIABLES: list[Variable] = []


def _variable(name: str, part: str, default: str, accepted: str, meaning: str) -> None:
    VARIABLES.append(Variable(name, part, default, accepted, meaning))


@dataclass(frozen=True)
class Number:
    """A numeric variable, declared once: its doc row, its dataclass default and its parser's bounds
    all come from here."""

    name: str
    default: float
    low: float
    high: float
    integer: bool = False


def _number(name: str, part: str, default: float, low: float, high: float, unit: str, meaning: str,
            integer: bool = False, shown: str | None = None, accepted: str | None = None) -> Number:
    """Declare a number: ``shown`` is how the doc shows its default (else the number), ``accepted``
    what it says is accepted (else the unit and the range)."""
    _variable(name, part, shown or f"{default:g}", accepted or f"{unit}, {low:g}-{high:g}", meaning)
    return Number(name, int(default) if integer else default, low, high, integer)


@dataclass(frozen=True)
class Flag:
    """A yes/no variable, declared once."""

    name: str
    default: bool


def _flag(name: str, part: str, default: bool, meaning: str, shown: str | None = None) -> Flag:
    _variable(name, part, shown or ("1" if default else "0"), "yes/no", meaning)
    return Flag(name, default)


# --- the parsers: one per kind of value ---


def _reader(env: Mapping[str, str] | None) -> "_Reader":
    return _Reader(os.environ if env is None else env)


class _Reader:
    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def raw(self, name: str) -> str:
        return (self.env.get(name) or "").strip()

    def text(self, name: str, default: str | None = None) -> str | None:
        return self.raw(name) or default

    def model(self, name: str, default: str | None) -> str | None:
        """A model id or folder; None when switched off."""
        value = self.raw(name) if name in self.env else (default or "")
        return None if value.lower() in OFF else value

    def flag(self, declared: Flag) -> bool:
        name, value = declared.name, self.raw(declared.name).lower()
        if not value:
            return declared.default
        if value in YES:
            return True
        if value in NO:
            return False
        raise ConfigError(f"{name}={value[:40]!r} is not a yes/no value: use 1, true, yes, on or 0, false, no, off.")

    def auto_flag(self, name: str) -> bool | None:
        """None for ``auto`` (or unset): the worker decides from the device."""
        value = self.raw(name).lower()
        if value in ("", "auto"):
            return None
        if value in YES:
            return True
        if value in NO:
            return False
        raise ConfigError(f"{name}={value[:40]!r} is not auto, 1 (on) or 0 (off).")

    def number(self, declared: Number) -> float:
        name, default, low, high, integer = (declared.name, declared.default, declared.low, declared.high,
                                             declared.integer)
        text = self.raw(name)
        if not text:
            return default
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            value = None
        if value is None or value != value or not low <= value <= high:
            kind = "a whole number" if integer else "a number"
            raise ConfigError(f"{name}={text[:40]!r} is not {kind} from {low:g} to {high:g} (default {default:g}).")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(name).lower() or default
        if value not in choices:
            raise ConfigError(f"{name}={value[:40]!r} is not one of {', '.join(c for c in choices if c)}.")
        return value

    def sizes(self, name: str, default: str) -> tuple:
        text = self.raw(name) or default
        try:
            return parse_sizes(text)
        except ValueError:
            raise ConfigError(f"{name}={text[:60]!r} is not a list of sizes like 1024x1024:1,768x1344:2.") from None


def parse_sizes(text: str) -> tuple:
    """``1024x1024:1,768x1344:2`` -> ((1024, 1024, 1), (768, 1344, 2)); ValueError when it is not that."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size, _, images = item.partition(":")
        width, _, height = size.lower().partition("x")
        sizes.append((int(width), int(height), int(images or 1)))
    return tuple(sizes)


# --- the parts ---

_variable("BASE_MODEL", "models", DEFAULT_BASE, "hub id, folder (diffusers layout), a `.safetensors` file, or `tiny`",
          "the SDXL checkpoint; `tiny` is the built-in random-weight test model")
_variable("BASE_MODELS", "models", "unset (BASE_MODEL alone, named `default`)",
          "`name=source,...`, each source as BASE_MODEL takes it",
          "the checkpoints a job may pick with `model`; the first is the default and is loaded at start")
MODELS_KEPT = _number("MODELS_KEPT", "models", 1, 1, 8, "checkpoints", "how many of BASE_MODELS stay loaded; the least "
                      "recently used is evicted and its memory freed", integer=True)
_variable("CONTROLNET_MODELS", "models", "unset (none)", "`name=source,...`, each a hub id or folder of an SDXL "
          "ControlNet", "the ControlNets a job may name in `controlnets`; loaded at start, shared by every job; "
          "as a build argument, baked into the image")
_variable("IP_ADAPTER_MODEL", "models", "unset (none)", "hub id or folder, e.g. `h94/IP-Adapter`",
          "the IP-Adapter a job's `ip_adapter` uses, with its image encoder; loaded at start; as a build "
          "argument, its file and encoder are baked")
_variable("IP_ADAPTER_WEIGHT", "models", DEFAULT_IP_ADAPTER_WEIGHT, "a path inside IP_ADAPTER_MODEL",
          "the IP-Adapter's weight file (`.safetensors`)")
_variable("IP_ADAPTER_ENCODER", "models", "the `image_encoder` folder beside IP_ADAPTER_WEIGHT",
          "a folder path inside IP_ADAPTER_MODEL, e.g. `models/image_encoder`",
          "the image encoder the adapter was trained with; h94's `*_vit-h` SDXL adapters need `models/image_encoder`")
_variable("REFINER_MODEL", "models", DEFAULT_REFINER, "hub id, folder, a `.safetensors` file, `tiny`, or `none`/`off`",
          "the refiner; off: no refiner")
_variable("CHECKPOINT_CONFIG", "models", f"{DEFAULT_BASE} and {DEFAULT_REFINER} (baked in the image)",
          "hub id or folder of the base (the refiner's: `REFINER_CHECKPOINT_CONFIG`), or `tiny`",
          "where a single-file checkpoint's component configs come from, never the network")
_variable("REFINER_CHECKPOINT_CONFIG", "models", f"{DEFAULT_REFINER}, or `tiny` with CHECKPOINT_CONFIG=tiny",
          "hub id or folder", "the same for a single-file refiner")
_variable("RUNPOD_MODEL_CACHE", "models", RUNPOD_MODEL_CACHE, "a folder (a Hugging Face hub cache)",
          "RunPod's cached models: hub ids resolve there first, offline, when it exists")
_variable("VAE_MODEL", "models", f"{DEFAULT_VAE} (`base` with BASE_MODEL=tiny)", "hub id, folder, or `base`/`none`",
          "an SDXL VAE; `base`: the checkpoint's own")
_variable("TAESD_MODEL", "models", f"unset ({DEFAULT_TAESD} in the Docker image)", "hub id, folder, or `none`",
          "TAESDXL for sharper previews; unset: the linear projection")
_variable("DEVICE", "models", "`cuda` when available, else `cpu`", "a torch device", "where the models run")
_variable("DTYPE", "models", "float16 on CUDA, float32 on CPU", "float16, bfloat16, float32", "the weights' type")
CPU_OFFLOAD = _flag("CPU_OFFLOAD", "models", False, "move idle components to the CPU (cards under 16 GB; slower)")
_variable("TINY_MODEL_DIR", "models", "~/.cache/sdxl-worker", "a folder", "where the tiny model is saved once")
DEFAULT_DEPTH = "depth-anything/Depth-Anything-V2-Small-hf"  # Apache-2.0; what the docs and the Hub offer
_variable("DEPTH_MODEL", "models", "unset", f"hub id or folder of a transformers depth-estimation model "
          f"(e.g. {DEFAULT_DEPTH}), or `none`", "the depth preprocessor (`preprocess: depth`); unset: none")
DEFAULT_POSE, DEFAULT_POSE_DETECTOR = "usyd-community/vitpose-base-simple", "PekingU/rtdetr_r50vd_coco_o365"
_variable("POSE_MODEL", "models", "unset", f"hub id or folder of a transformers ViTPose model (e.g. {DEFAULT_POSE}), "
          "or `none`", "the pose preprocessor's keypoint model (`preprocess: pose`); with POSE_DETECTOR")
_variable("POSE_DETECTOR", "models", "unset", f"hub id or folder of a transformers object detector on COCO's labels "
          f"(e.g. {DEFAULT_POSE_DETECTOR}), or `none`", "finds the people whose poses POSE_MODEL reads")
DEFAULT_UPSCALER, DEFAULT_UPSCALER_WEIGHT = "ai-forever/Real-ESRGAN", "RealESRGAN_x2.pth"  # BSD-3-Clause
UPSCALER_TYPES = (".safetensors", ".pth")  # the upscaler's files: a .pth is read as tensors only
_variable("UPSCALER_MODEL", "models", "unset", f"hub id or folder holding UPSCALER_WEIGHT (e.g. {DEFAULT_UPSCALER}), "
          "a `.safetensors` or `.pth` file, or `none`", "the upscaler of `hires.upscaler: model`: an ESRGAN-family "
          "super-resolution model (2x, 4x), loaded by spandrel at start; unset: none")
_variable("UPSCALER_WEIGHT", "models", DEFAULT_UPSCALER_WEIGHT, "a file path inside UPSCALER_MODEL",
          "the upscaler's weights (`.safetensors`, or `.pth` read as tensors only); unused when "
          "UPSCALER_MODEL is the file itself")
HF_HUB_OFFLINE = _flag("HF_HUB_OFFLINE", "models", False, "huggingface_hub's own: hub ids (models, LoRAs) only "
                       "from the hub's cache, never downloaded", shown="0 (1 in the Docker image)")


@dataclass(frozen=True)
class ModelSettings:
    """Which weights to load and how."""

    base: str = DEFAULT_BASE
    refiner: str | None = DEFAULT_REFINER
    vae: str | None = DEFAULT_VAE  # None: the base checkpoint's own VAE
    device: str | None = None  # None: cuda when available, else cpu
    cpu_offload: bool = CPU_OFFLOAD.default
    dtype: str | None = None  # None: fp16 on CUDA, fp32 on CPU
    taesd: str | None = None  # None: linear previews
    tiny_dir: Path | None = None  # None: ~/.cache/sdxl-worker
    checkpoint_config: str = DEFAULT_BASE  # a single-file base's component configs
    refiner_checkpoint_config: str = DEFAULT_REFINER  # a single-file refiner's
    runpod_cache: Path = Path(RUNPOD_MODEL_CACHE)  # RunPod's cached models, when the folder exists
    choices: tuple[tuple[str, str], ...] = ((DEFAULT_MODEL_NAME, DEFAULT_BASE),)  # BASE_MODELS: (name, source)
    kept: int = MODELS_KEPT.default  # how many of them stay loaded
    controlnets: tuple[tuple[str, str], ...] = ()  # CONTROLNET_MODELS: (name, source)
    ip_adapter: str | None = None  # IP_ADAPTER_MODEL: a hub id or folder; None: none
    ip_adapter_weight: str = DEFAULT_IP_ADAPTER_WEIGHT  # IP_ADAPTER_WEIGHT: subfolder/file inside it
    ip_adapter_encoder: str | None = None  # IP_ADAPTER_ENCODER: its folder inside it; None: beside the weight
    depth: str | None = None  # DEPTH_MODEL: the depth preprocessor's model; None: none
    pose: str | None = None  # POSE_MODEL: the pose preprocessor's keypoint model; None: none
    pose_detector: str | None = None  # POSE_DETECTOR: its person detector
    upscaler: str | None = None  # UPSCALER_MODEL: a hub id, folder or weight file; None: none
    upscaler_weight: str = DEFAULT_UPSCALER_WEIGHT  # UPSCALER_WEIGHT: the file inside a hub id or folder
    hub_offline: bool = HF_HUB_OFFLINE.default  # hub ids only from the hub's cache
    hub_cache: Path = field(default_factory=lambda: Path.home() / ".cache" / "huggingface" / "hub")


def _models(read: _Reader) -> ModelSettings:
    choices = _named_sources(read, "BASE_MODELS") or ((DEFAULT_MODEL_NAME, read.text("BASE_MODEL", DEFAULT_BASE)),)
    base = choices[0][1]
    vae = read.model("VAE_MODEL", "base" if base == "tiny" else DEFAULT_VAE)
    checkpoint_config = read.text("CHECKPOINT_CONFIG", DEFAULT_BASE)
    pose, pose_detector = read.model("POSE_MODEL", None), read.model("POSE_DETECTOR", None)
    if (pose is None) != (pose_detector is None):
        raise ConfigError("POSE_MODEL and POSE_DETECTOR go together (the keypoints of the people the detector finds): "
                          "set both, or neither.")
    return ModelSettings(
        base=base,
        refiner=read.model("REFINER_MODEL", DEFAULT_REFINER),
        vae=None if vae is None or vae.lower() == "base" else vae,
        device=read.text("DEVICE"),
        cpu_offload=read.flag(CPU_OFFLOAD),
        dtype=read.choice("DTYPE", "", ("", "float16", "bfloat16", "float32")) or None,
        taesd=read.model("TAESD_MODEL", None),
        tiny_dir=Path(read.text("TINY_MODEL_DIR")) if read.text("TINY_MODEL_DIR") else None,
        checkpoint_config=checkpoint_config,
        refiner_checkpoint_config=read.text("REFINER_CHECKPOINT_CONFIG",
                                            "tiny" if checkpoint_config == "tiny" else DEFAULT_REFINER),
        runpod_cache=Path(read.text("RUNPOD_MODEL_CACHE", RUNPOD_MODEL_CACHE)),
        choices=choices,
        kept=int(read.number(MODELS_KEPT)),
        controlnets=_named_sources(read, "CONTROLNET_MODELS"),
        ip_adapter=read.model("IP_ADAPTER_MODEL", None),
        ip_adapter_weight=read.text("IP_ADAPTER_WEIGHT", DEFAULT_IP_ADAPTER_WEIGHT),
        ip_adapter_encoder=read.text("IP_ADAPTER_ENCODER"),
        depth=read.model("DEPTH_MODEL", None),
        pose=pose,
        pose_detector=pose_detector,
        upscaler=read.model("UPSCALER_MODEL", None),
        upscaler_weight=read.text("UPSCALER_WEIGHT", DEFAULT_UPSCALER_WEIGHT),
        hub_offline=read.flag(HF_HUB_OFFLINE),
        hub_cache=_hub_cache(read.env),
    )


MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


def _named_sources(read: _Reader, variable: str) -> tuple[tuple[str, str], ...]:
    """BASE_MODELS, CONTROLNET_MODELS: ``name=source`` pairs, comma-separated, names unique; () when unset."""
    text, choices = read.raw(variable), {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, source = (half.strip() for half in item.partition("="))
        if not MODEL_NAME.fullmatch(name) or not source:
            raise ConfigError(f"{variable} entry {item[:60]!r} is not name=source with a name of lowercase "
                              f"letters, digits, '.', '_' or '-' (e.g. canny=diffusers/controlnet-canny-sdxl-1.0).")
        if name in choices:
            raise ConfigError(f"{variable} names {name!r} twice; give each its own name.")
        choices[name] = source
    return tuple(choices.items())


_variable("CHANNELS_LAST", "speed", "auto (on with CUDA)", "auto, 1, 0", "channels-last memory format for UNets and VAE")
_variable("FUSED_QKV", "speed", "auto (on with CUDA)", "auto, 1, 0", "one fused QKV projection in attention")
_variable("HOST_TIMESTEPS", "speed", "auto (on with CUDA)", "auto, 1, 0", "scheduler timesteps on the host: no sync per step")
_variable("VAE_UPCAST", "speed", "auto (off with the fp16-fix VAE)", "auto, 1, 0", "decode in fp32")
_variable("ATTENTION", "speed", "auto (cudnn on CUDA when it works, else sdpa)", "auto, sdpa, cudnn, classic",
          "the attention kernels")
COMPILE = _flag("COMPILE", "speed", False, "torch.compile the UNets' transformer blocks (minutes of start-up)")
_variable("COMPILE_MODE", "speed", "unset", "a torch.compile mode", "e.g. max-autotune-no-cudagraphs")
_variable("COMPILE_CACHE_DIR", "speed", "/runpod-volume/.cache/... or ~/.cache/...", "a folder",
          "compiled kernels, kept between starts (TORCHINDUCTOR_CACHE_DIR also works)")
_variable("WARMUP", "speed", "auto (on with COMPILE)", "auto, 1, 0", "run short jobs at start-up")
_variable("WARMUP_SIZES", "speed", DEFAULT_WARMUP_SIZES, "WIDTHxHEIGHT:IMAGES,...", "the warm-up jobs")


@dataclass(frozen=True)
class SpeedSettings:
    """The speed switches as set; None means auto (decided from the device in sdxl_worker.engine.speed)."""

    channels_last: bool | None = None
    fused_qkv: bool | None = None
    host_timesteps: bool | None = None
    vae_upcast: bool | None = None
    attention: str = "auto"
    compile: bool = COMPILE.default
    compile_mode: str | None = None
    compile_cache_dir: str | None = None
    warmup: bool | None = None
    warmup_sizes: tuple = parse_sizes(DEFAULT_WARMUP_SIZES)


def _speed(read: _Reader) -> SpeedSettings:
    return SpeedSettings(
        channels_last=read.auto_flag("CHANNELS_LAST"),
        fused_qkv=read.auto_flag("FUSED_QKV"),
        host_timesteps=read.auto_flag("HOST_TIMESTEPS"),
        vae_upcast=read.auto_flag("VAE_UPCAST"),
        attention=read.choice("ATTENTION", "auto", ("auto", "sdpa", "cudnn", "classic")),
        compile=read.flag(COMPILE),
        compile_mode=read.text("COMPILE_MODE"),
        compile_cache_dir=read.text("TORCHINDUCTOR_CACHE_DIR") or read.text("COMPILE_CACHE_DIR"),
        warmup=read.auto_flag("WARMUP"),
        warmup_sizes=read.sizes("WARMUP_SIZES", DEFAULT_WARMUP_SIZES),
    )


ALLOW_PRIVATE_URLS = _flag("ALLOW_PRIVATE_URLS", "fetch", False,
                           "allow loopback and private addresses (local testing only)")
FETCH_CONNECT_TIMEOUT = _number("FETCH_CONNECT_TIMEOUT", "fetch", 5, 0.1, 120, "seconds", "to open a connection")
FETCH_READ_TIMEOUT = _number("FETCH_READ_TIMEOUT", "fetch", 10, 0.1, 600, "seconds",
                             "the longest a server may stay silent")
FETCH_TOTAL_TIMEOUT = _number("FETCH_TOTAL_TIMEOUT", "fetch", 30, 0.1, 3600, "seconds",
                              "a whole download, redirects included")
FETCH_MAX_BYTES = _number("FETCH_MAX_BYTES", "fetch", 20_000_000, 1, 2**40, "bytes", "per download or base64 payload",
                          integer=True, shown="20000000 (20 MB)", accepted="bytes")
MAX_IMAGE_PIXELS = _number("MAX_IMAGE_PIXELS", "fetch", 4096 * 4096, 1, 2**40, "pixels",
                           "in an input image, read from its header", integer=True,
                           shown="16777216 (4096 x 4096)", accepted="pixels")


@dataclass(frozen=True)
class FetchSettings:
    """Limits on everything fetched: input images, masks, LoRA files."""

    max_bytes: int = FETCH_MAX_BYTES.default
    connect_timeout: float = FETCH_CONNECT_TIMEOUT.default
    read_timeout: float = FETCH_READ_TIMEOUT.default
    total_timeout: float = FETCH_TOTAL_TIMEOUT.default
    allow_private: bool = ALLOW_PRIVATE_URLS.default
    max_image_pixels: int = MAX_IMAGE_PIXELS.default


def _fetch(read: _Reader) -> FetchSettings:
    return FetchSettings(
        max_bytes=int(read.number(FETCH_MAX_BYTES)),
        connect_timeout=read.number(FETCH_CONNECT_TIMEOUT),
        read_timeout=read.number(FETCH_READ_TIMEOUT),
        total_timeout=read.number(FETCH_TOTAL_TIMEOUT),
        allow_private=read.flag(ALLOW_PRIVATE_URLS),
        max_image_pixels=int(read.number(MAX_IMAGE_PIXELS)),
    )


_variable("LORA_DIR", "loras", "unset", "a folder", "the one folder local LoRA paths may point into; unset: none")
_variable("LORA_CACHE_DIR", "loras", "~/.cache/sdxl-worker/loras", "a folder", "downloaded LoRAs")
LORA_CACHE_MB = _number("LORA_CACHE_MB", "loras", 4096, 0, 2**30, "MB",
                        "size cap of that folder, least recently used deleted first", accepted="MB")
LORA_MAX_MB = _number("LORA_MAX_MB", "loras", 1024, 0, 2**20, "MB", "the largest LoRA file accepted", accepted="MB")


@dataclass(frozen=True)
class LoraSettings:
    dir: Path | None = None
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "sdxl-worker" / "loras")
    cache_mb: float = LORA_CACHE_MB.default
    max_mb: float = LORA_MAX_MB.default


def _loras(read: _Reader) -> LoraSettings:
    root = read.text("LORA_DIR")
    cache = read.text("LORA_CACHE_DIR")
    return LoraSettings(
        dir=Path(root).resolve() if root else None,
        cache_dir=Path(cache) if cache else LoraSettings().cache_dir,
        cache_mb=read.number(LORA_CACHE_MB),
        max_mb=read.number(LORA_MAX_MB),
    )


# About 6,000 UNet calls at 1024x1024: 180 s at 30 ms a call on an H100-class GPU with plain
# diffusers fp16 (see docs/security.md for the arithmetic).
MAX_JOB_WORK = _number("MAX_JOB_WORK", "jobs", 6000.0, 1e-9, 1e12, "units",
                       "units of work per job (docs/security.md)", accepted="a positive number")
INLINE_LIMIT_MB = _number("INLINE_LIMIT_MB", "jobs", 10.0, 0.001, 1e6, "MB", "a job's whole output, previews and "
                          "final payload together (RunPod's /run limit)", accepted="MB")
JOB_TIMEOUT_S = _number("JOB_TIMEOUT_S", "jobs", 0, 1, 86400, "seconds", "a job running longer is stopped within "
                        "one step and answered with an error", shown="unset (no limit of the worker's own)")
CONCURRENCY = _number("CONCURRENCY", "jobs", 1, 1, 4, "jobs", "jobs in flight at once on RunPod; the pipelines "
                      "still run one at a time", integer=True)


@dataclass(frozen=True)
class JobSettings:
    max_job_work: float = MAX_JOB_WORK.default
    inline_limit_mb: float = INLINE_LIMIT_MB.default
    timeout_s: float | None = None  # None: only the platform's execution timeout
    concurrency: int = CONCURRENCY.default  # docs/runpod.md: 2 overlaps one job's delivery with the next one's denoising


def _jobs(read: _Reader) -> JobSettings:
    return JobSettings(
        max_job_work=read.number(MAX_JOB_WORK),
        inline_limit_mb=read.number(INLINE_LIMIT_MB),
        timeout_s=read.number(JOB_TIMEOUT_S) or None,
        concurrency=int(read.number(CONCURRENCY)),
    )


for _name, _meaning in (("BUCKET_ENDPOINT_URL", "S3-compatible endpoint, http(s) URL"),
                        ("BUCKET_ACCESS_KEY_ID", "access key id"),
                        ("BUCKET_SECRET_ACCESS_KEY", "secret key (never logged)"),
                        ("BUCKET_NAME", "the bucket")):
    _variable(_name, "storage", "unset", "text", _meaning + "; all four or none")
_variable("BUCKET_REGION", "storage", "unset", "text", "the region, where the store needs one")
_variable("BUCKET_KEY_PREFIX", "storage", "unset", "text", "a prefix for every object key")
BUCKET_PATH_STYLE = _flag("BUCKET_PATH_STYLE", "storage", False, "path-style URLs (MinIO and the like)")
BUCKET_URL_LIFETIME_S = _number("BUCKET_URL_LIFETIME_S", "storage", MAX_URL_LIFETIME_S, 1, MAX_URL_LIFETIME_S,
                                "seconds", "presigned URLs' life", integer=True)
# Fault handling: attempts x (connect + read timeout) plus backoff, cut off by the deadline,
# keeps the worst case (storage hanging) near 85 s: the job still answers within 2 minutes.
BUCKET_UPLOAD_ATTEMPTS = _number("BUCKET_UPLOAD_ATTEMPTS", "storage", 4, 1, 10, "attempts", "attempts per upload",
                                 integer=True)
BUCKET_RETRY_DELAY_S = _number("BUCKET_RETRY_DELAY_S", "storage", 1.0, 0, 10, "seconds",
                               "first wait between attempts, doubled each time (with jitter)")
BUCKET_CONNECT_TIMEOUT_S = _number("BUCKET_CONNECT_TIMEOUT_S", "storage", 5.0, 0.1, 10, "seconds",
                                   "to connect to the store")
BUCKET_READ_TIMEOUT_S = _number("BUCKET_READ_TIMEOUT_S", "storage", 20.0, 0.1, 30, "seconds",
                                "the store's longest silence")
BUCKET_UPLOAD_DEADLINE_S = _number("BUCKET_UPLOAD_DEADLINE_S", "storage", 60.0, 0, 60, "seconds",
                                   "no new attempt starts later than this after the first")


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    bucket: str
    region: str | None = None
    key_prefix: str = ""
    path_style: bool = BUCKET_PATH_STYLE.default
    url_lifetime_s: int = BUCKET_URL_LIFETIME_S.default
    attempts: int = BUCKET_UPLOAD_ATTEMPTS.default
    retry_delay_s: float = BUCKET_RETRY_DELAY_S.default
    connect_timeout_s: float = BUCKET_CONNECT_TIMEOUT_S.default
    read_timeout_s: float = BUCKET_READ_TIMEOUT_S.default
    deadline_s: float = BUCKET_UPLOAD_DEADLINE_S.default


def _storage(read: _Reader) -> StorageSettings | None:
    """None when no BUCKET_* credential is set; ConfigError when it is half set."""
    values = {name: read.raw(name) for name in STORAGE_REQUIRED}
    present = [name for name in STORAGE_REQUIRED if values[name]]
    if not present:
        return None
    missing = [name for name in STORAGE_REQUIRED if not values[name]]
    if missing:
        raise ConfigError(
            f"Storage is half configured: {', '.join(present)} set but {', '.join(missing)} missing; "
            f"set all of {', '.join(STORAGE_REQUIRED)} to upload images, or none of them to return images inline."
        )
    if not re.match(r"^https?://", values["BUCKET_ENDPOINT_URL"]):
        raise ConfigError("BUCKET_ENDPOINT_URL must be an http(s) URL, e.g. https://s3.us-east-1.amazonaws.com.")
    return StorageSettings(
        endpoint_url=values["BUCKET_ENDPOINT_URL"].rstrip("/"),
        access_key_id=values["BUCKET_ACCESS_KEY_ID"],
        secret_access_key=values["BUCKET_SECRET_ACCESS_KEY"],
        bucket=values["BUCKET_NAME"],
        region=read.text("BUCKET_REGION"),
        key_prefix=read.raw("BUCKET_KEY_PREFIX").strip("/"),
        path_style=read.flag(BUCKET_PATH_STYLE),
        url_lifetime_s=int(read.number(BUCKET_URL_LIFETIME_S)),
        attempts=int(read.number(BUCKET_UPLOAD_ATTEMPTS)),
        retry_delay_s=read.number(BUCKET_RETRY_DELAY_S),
        connect_timeout_s=read.number(BUCKET_CONNECT_TIMEOUT_S),
        read_timeout_s=read.number(BUCKET_READ_TIMEOUT_S),
        deadline_s=read.number(BUCKET_UPLOAD_DEADLINE_S),
    )


def unused_storage_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """BUCKET_* variables set while storage is off (none of the four required ones is): worth a warning."""
    read = _reader(env)
    if any(read.raw(name) for name in STORAGE_REQUIRED):
        return []
    return sorted(name for name in read.env if name.startswith("BUCKET_") and read.raw(name))


_variable("BASE_MODEL_URL", "build", "unset", "an http(s) URL",
          "build time: a single-file checkpoint to download to BASE_MODEL's path (docs/checkpoints.md)")
_variable("PRESETS", "build", "unset (none)", "preset names, comma-separated, or `all`",
          "build time: bake the weights of these fast presets (docs/checkpoints.md#fast-presets)")
BASE_MODEL_MAX_GB = _number("BASE_MODEL_MAX_GB", "build", 16, 1, 100, "GB", "build time: the largest BASE_MODEL_URL "
                            "download accepted (an fp32 SDXL checkpoint is about 14 GB)")
_variable("MODEL_TOKEN", "build", "unset", "text", "build time, outside Docker: the site's token (in Docker: the "
          "build secret `model_token`)")


@dataclass(frozen=True)
class BuildSettings:
    """What only the image builder reads."""

    base_model_url: str | None = None
    base_model_max_bytes: int = int(BASE_MODEL_MAX_GB.default * 10**9)
    presets: tuple[str, ...] = ()  # PRESETS: the fast presets whose weights to bake, or ("all",)
    model_token: str | None = field(default=None, repr=False)


def build(env: Mapping[str, str] | None = None) -> BuildSettings:
    read = _reader(env)
    # Names only: the builder checks them against the preset table (sdxl_worker.request.presets).
    asked = tuple(dict.fromkeys(name.strip().lower() for name in read.raw("PRESETS").split(",") if name.strip()))
    max_gb = read.number(BASE_MODEL_MAX_GB)
    return BuildSettings(base_model_url=read.text("BASE_MODEL_URL"), presets=asked,
                         base_model_max_bytes=int(max_gb * 10**9),
                         model_token=read.text("MODEL_TOKEN"))


_variable("RUNPOD_API_KEY", "studio", "unset", "a RunPod API key",
          "`--studio --endpoint`: the key the studio's server sends to the endpoint (never to the browser)")
_variable("RUNPOD_ENDPOINT_BASE_URL", "studio", "https://api.runpod.ai/v2", "an http(s) URL",
          "`--studio --endpoint`: where RunPod's endpoint API is (runpod-python reads the same name)")


_variable("STUDIO_HOSTS", "studio", "unset", "host names, comma-separated",
          "more names the studio answers to, besides 127.0.0.1, localhost, [::1] and `--host` (a name you "
          "reach it by); any other `Host` is refused")
_variable("STUDIO_LOGIN", "studio", "unset", "text, at least 12 characters",
          "the login the studio's page asks for; required with a `--host` that is not loopback")


@dataclass(frozen=True)
class StudioSettings:
    api_key: str | None = field(default=None, repr=False)
    endpoint_base_url: str = "https://api.runpod.ai/v2"
    hosts: tuple[str, ...] = ()
    login: str | None = field(default=None, repr=False)


def studio(env: Mapping[str, str] | None = None) -> StudioSettings:
    """The studio page's settings (python handler.py --studio)."""
    read = _reader(env)
    base = read.text("RUNPOD_ENDPOINT_BASE_URL", StudioSettings.endpoint_base_url).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"RUNPOD_ENDPOINT_BASE_URL={base!r} is not an http(s) URL, e.g. https://api.runpod.ai/v2.")
    hosts = tuple(name.strip() for name in read.raw("STUDIO_HOSTS").split(",") if name.strip())
    return StudioSettings(api_key=read.text("RUNPOD_API_KEY"), endpoint_base_url=base, hosts=hosts,
                          login=read.text("STUDIO_LOGIN"))


_variable("SERVE", "http", "queue", "queue, http",
          "`queue`: the RunPod queue worker (runpod-python); `http`: the HTTP server of docs/http.md (RunPod "
          "load-balancing endpoints, the OpenAI Images API), as `python handler.py --serve` starts it")
PORT = _number("PORT", "http", 80, 1, 65535, "port", "the HTTP server's port (RunPod's load balancer sets it)",
               integer=True)
PORT_HEALTH = _number("PORT_HEALTH", "http", 0, 0, 65535, "port", "the port of `GET /ping`, the health check",
                      integer=True, shown="PORT", accepted="port, 0-65535 (0: PORT)")
_variable("SERVE_HOST", "http", "0.0.0.0", "an address", "the address the HTTP server binds")
_variable("SERVE_API_KEY", "http", "unset", "text, at least 16 characters",
          "a bearer key every request but `/ping` must carry (`Authorization: Bearer KEY`); unset: none (RunPod's "
          "gateway checks its own key)")
SERVE_QUEUE = _number("SERVE_QUEUE", "http", 2, 0, 64, "requests", "requests that wait for a turn beyond "
                      "CONCURRENCY; more get 429 with Retry-After", integer=True)
MIN_API_KEY_CHARS = 16


@dataclass(frozen=True)
class ServerSettings:
    """The HTTP server's (sdxl_worker.api): where it listens, who may call it, how many may wait."""

    mode: str = "queue"  # SERVE: queue | http
    port: int = int(PORT.default)
    health_port: int = int(PORT.default)
    host: str = "0.0.0.0"
    api_key: str | None = field(default=None, repr=False)
    queue: int = int(SERVE_QUEUE.default)


def _server(read: _Reader) -> ServerSettings:
    port = int(read.number(PORT))
    key = read.text("SERVE_API_KEY")
    if key is not None and (len(key) < MIN_API_KEY_CHARS or not all(32 < ord(c) < 127 for c in key)):
        raise ConfigError(f"SERVE_API_KEY must be at least {MIN_API_KEY_CHARS} printable ASCII characters "
                          f"without spaces (it travels in a header).")
    return ServerSettings(mode=read.choice("SERVE", "queue", ("queue", "http")), port=port,
                          health_port=int(read.number(PORT_HEALTH)) or port,
                          host=read.text("SERVE_HOST", "0.0.0.0"), api_key=key, queue=int(read.number(SERVE_QUEUE)))


_variable("HANDLER_MODE", "runtime", "stream", "stream, single",
          "`stream`: a generator handler, previews then the result as the output list's last item; `single`: "
          "the output is the result itself, worker-sdxl's shape, and previews are refused (docs/runpod.md)")
_variable("LOG_LEVEL", "runtime", "INFO", "DEBUG, INFO, WARNING, ERROR", "the worker's log level")
PREFETCH = _flag("PREFETCH", "runtime", True, "the cold-start helper that reads files ahead of need")
_variable("START_FILES", "runtime", "share/sdxl-worker/start-files.txt under the Python prefix", "a file",
          "the files a start opens, recorded at build time")


@dataclass(frozen=True)
class RuntimeSettings:
    handler_mode: str = "stream"  # HANDLER_MODE: stream | single
    log_level: str = "INFO"
    prefetch: bool = PREFETCH.default
    start_files: Path = field(default_factory=lambda: Path(sys.prefix) / "share" / "sdxl-worker" / "start-files.txt")


def _runtime(read: _Reader) -> RuntimeSettings:
    start_files = read.text("START_FILES")
    return RuntimeSettings(
        handler_mode=read.choice("HANDLER_MODE", "stream", ("stream", "single")),
        log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical")).upper(),
        prefetch=read.flag(PREFETCH),
        start_files=Path(start_files) if start_files else RuntimeSettings().start_files,
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration, one frozen part per part of the worker."""

    models: ModelSettings
    speed: SpeedSettings
    fetch: FetchSettings
    loras: LoraSettings
    jobs: JobSettings
    storage: StorageSettings | None
    runtime: RuntimeSettings
    server: ServerSettings = ServerSettings()
    unused_bucket_variables: tuple[str, ...] = ()  # BUCKET_* set while storage is off: worth a warning


def load(env: Mapping[str, str] | None = None) -> Config:
    """Every variable, parsed; ConfigError naming the first one that is wrong."""
    read = _reader(env)
    return Config(models=_models(read), speed=_speed(read), fetch=_fetch(read), loras=_loras(read),
                  jobs=_jobs(read), storage=_storage(read), runtime=_runtime(read), server=_server(read),
                  unused_bucket_variables=tuple(unused_storage_variables(read.env)))


# Each part on its own, from ``env`` (default: the process environment, read now). The worker reads
# them once, at start-up (``load``), and hands each part to what it configures.
def models(env: Mapping[str, str] | None = None) -> ModelSettings:
    return _models(_reader(env))


def ip_adapter_encoder_folder(settings: "ModelSettings") -> str:
    """Where the IP-Adapter's image encoder is inside IP_ADAPTER_MODEL: IP_ADAPTER_ENCODER, else the
    ``image_encoder`` folder beside IP_ADAPTER_WEIGHT (the worker and the builder read it here)."""
    if settings.ip_adapter_encoder:
        return settings.ip_adapter_encoder.strip("/")
    parent = settings.ip_adapter_weight.rsplit("/", 1)[0] if "/" in settings.ip_adapter_weight else ""
    return f"{parent}/image_encoder" if parent else "image_encoder"


def model_not_found(variable: str, name: str, reason: str, local: bool) -> str:
    """The one sentence for a model the worker cannot load (at start-up, before or after the libraries)."""
    where = "the local folder" if local else "the Hugging Face hub id"
    fallback = "base to use the checkpoint's own VAE" if variable == "VAE_MODEL" else "tiny to try the built-in test model"
    return (f"Could not load {variable}={name!r} ({where}): {reason.rstrip('.')}. Bake the weights into the image "
            f"(builder/download_weights.py), point {variable} at a folder in diffusers layout, or set "
            f"{variable}={fallback}.")


def upscaler_weight_refusal(weight: str) -> str | None:
    """What is wrong with UPSCALER_WEIGHT, as the start of a sentence, or None: it must be a
    ``.safetensors`` or ``.pth`` path inside UPSCALER_MODEL (the worker's and the builder's rule)."""
    from pathlib import PurePosixPath

    if PurePosixPath(weight).is_absolute() or ".." in PurePosixPath(weight).parts:
        return f"UPSCALER_WEIGHT={weight!r} is not a path inside UPSCALER_MODEL"
    if not weight.lower().endswith(UPSCALER_TYPES):
        return f"UPSCALER_WEIGHT={weight!r} is not a .safetensors or .pth file"
    return None


def missing_model_paths(settings: ModelSettings) -> list[str]:
    """Models named by a path (absolute, or ./ ../ ~) that is not there: known before any library
    loads, so such a start stops in a second rather than after the imports."""
    named = [("BASE_MODEL", source) for _, source in settings.choices]
    named += [("REFINER_MODEL", settings.refiner), ("VAE_MODEL", settings.vae), ("TAESD_MODEL", settings.taesd),
              ("DEPTH_MODEL", settings.depth), ("POSE_MODEL", settings.pose), ("POSE_DETECTOR", settings.pose_detector),
              ("UPSCALER_MODEL", settings.upscaler)]
    return [model_not_found(variable, source, "no such file or folder", local=True)
            for variable, source in named
            if source and source.startswith(("/", "./", "../", "~")) and not Path(source).expanduser().exists()]


def image_models(env: Mapping[str, str] | None = None) -> ModelSettings:
    """What the Docker image bakes: the worker's models, with TAESDXL unless TAESD_MODEL says otherwise."""
    return _models(_Reader({"TAESD_MODEL": DEFAULT_TAESD, **_reader(env).env}))


def speed(env: Mapping[str, str] | None = None) -> SpeedSettings:
    return _speed(_reader(env))


def fetch(env: Mapping[str, str] | None = None) -> FetchSettings:
    return _fetch(_reader(env))


def loras(env: Mapping[str, str] | None = None) -> LoraSettings:
    return _loras(_reader(env))


def jobs(env: Mapping[str, str] | None = None) -> JobSettings:
    return _jobs(_reader(env))


def storage(env: Mapping[str, str] | None = None) -> StorageSettings | None:
    return _storage(_reader(env))


def runtime(env: Mapping[str, str] | None = None) -> RuntimeSettings:
    return _runtime(_reader(env))


def server(env: Mapping[str, str] | None = None) -> ServerSettings:
    """The HTTP server's settings (SERVE=http, or python handler.py --serve)."""
    return _server(_reader(env))


# --- what is not the worker's own setting, read or set in this one place too ---


def _hub_cache(env: Mapping[str, str]) -> Path:
    """The Hugging Face hub cache folder, as huggingface_hub finds it."""
    cache = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return Path(env.get("HF_HUB_CACHE") or Path(env.get("HF_HOME") or cache / "huggingface") / "hub")


def secret_values() -> list[str]:
    """Values of environment variables whose names say they are secret, for log redaction (read
    each time: a value set after start-up is hidden too)."""
    return [value for name, value in os.environ.items()
            if len(value) >= 8 and any(part in name.upper() for part in _SECRET_NAMES)]


def quiet_libraries() -> None:
    """Libraries' own variables: no import-time chatter, and runpod not logging whole outputs at DEBUG."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")


def use_compile_cache(folder: str) -> None:
    """Point torch's compiler caches at ``folder`` (kept between starts), unless already set."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", folder)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def markdown_table() -> str:
    """docs/configuration.md's table, generated from VARIABLES."""
    rows = ["| variable | part | default | accepted | meaning |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| `{v.name}` | {v.part} | {v.default} | {v.accepted} | {v.meaning} |" for v in VARIABLES]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
