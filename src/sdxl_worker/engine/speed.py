"""GPU speed-ups, applied once at start-up to the loaded models; each is switchable by env.

Every switch reads ``auto`` (the default), ``1`` or ``0``. ``auto`` turns on what is safe and
faster on CUDA and leaves a CPU run exactly as diffusers would run it, so the tiny-model tests
see the same pixels with or without this module. Compiling is paid at start-up (warm-up jobs,
a long prompt among them), never by a real job: LoRAs are baked into a compiled UNet's weights
rather than wrapped around its layers (sdxl_worker.engine.lora_layers), the weights never require
grad, and tests/unit/engine/test_compile.py counts dynamo's graphs across LoRA jobs, new scales,
long prompts and the refiner. The cache lives in a folder so a warm restart does not recompile.

    CHANNELS_LAST     UNets and VAE in channels_last memory format (faster convolutions)
    FUSED_QKV         one matmul for q, k, v (k, v in cross-attention) in the UNets and VAE
    VAE_UPCAST        auto: no fp32 upcast for the fp16-fix VAE; 1: always (worker-sdxl); 0: never
    ATTENTION         auto: SDPA, cuDNN's kernel first on CUDA; sdpa; cudnn; classic (no SDPA)
    COMPILE           torch.compile the UNets' transformer blocks (regional compilation)
    COMPILE_MODE      torch.compile mode (default: inductor's default)
    COMPILE_CACHE_DIR where inductor keeps compiled kernels (TORCHINDUCTOR_CACHE_DIR wins)
    HOST_TIMESTEPS    keep the scheduler's timesteps on the host: no GPU->CPU sync per step
    WARMUP            run warm-up jobs at start-up (first CUDA calls, compilation)
    WARMUP_SIZES      warm-up sizes, WxH:images, comma-separated (default 1024x1024:1,768x1344:2)
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from sdxl_worker import config
from sdxl_worker.config import parse_sizes  # noqa: F401  (the warm-up sizes' syntax, for callers)

log = logging.getLogger(__name__)

FP16_FIX_VAE = "sdxl-vae-fp16-fix"  # madebyollin/sdxl-vae-fp16-fix: fp16-safe, no upcast needed
_TIMESTEP_HOOK = "_sdxl_worker_host_timesteps"


@dataclass(frozen=True)
class Speedups:
    """What apply_speedups does; ``resolve`` makes one from SpeedSettings, ``auto`` decided for a device."""

    channels_last: bool = False
    fused_qkv: bool = False
    vae_upcast: bool | None = None  # None: the VAE's own config decides
    attention: str = "sdpa"  # sdpa | cudnn | classic
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: object = None  # None: inductor; tests count recompiles with "eager"
    compile_cache_dir: str | None = None
    host_timesteps: bool = False
    warmup: bool = False
    warmup_sizes: tuple = ()  # ((width, height, images), ...)

    @classmethod
    def none(cls) -> "Speedups":
        """diffusers' own behaviour: nothing changed (the unoptimised path)."""
        return cls()

    @classmethod
    def resolve(cls, settings: config.SpeedSettings, device: str, vae_name: str | None = None,
                cpu_offload: bool = False) -> "Speedups":
        """What to apply on ``device``: each ``auto`` (None) decided here."""
        on_gpu = device.startswith("cuda")
        resident = on_gpu and not cpu_offload  # offload hooks and compiled blocks do not mix

        def auto(value: bool | None, default: bool) -> bool:
            return default if value is None else value

        vae_upcast = settings.vae_upcast
        if vae_upcast is None and vae_name and FP16_FIX_VAE in vae_name:
            vae_upcast = False  # the fp16-fix VAE needs no fp32 decode
        attention = settings.attention
        if attention == "auto":
            attention = "cudnn" if on_gpu and _cudnn_attention_available() else "sdpa"
        # Off unless asked: compiling costs minutes of cold start, which serverless users feel most.
        compile_ = settings.compile and resident
        return cls(
            channels_last=auto(settings.channels_last, on_gpu),
            fused_qkv=auto(settings.fused_qkv, on_gpu),
            vae_upcast=vae_upcast,
            attention=attention,
            compile=compile_,
            compile_mode=settings.compile_mode,
            compile_cache_dir=settings.compile_cache_dir or str(_default_cache_dir()),
            host_timesteps=auto(settings.host_timesteps, on_gpu),
            warmup=auto(settings.warmup, compile_),
            warmup_sizes=settings.warmup_sizes,
        )


def apply_speedups(models, speedups: Speedups) -> Speedups:
    """Apply ``speedups`` to every model in ``models``, in place.

    Order matters: attention processors before fusing (fusing installs its own SDPA processor),
    memory format before compiling. The warm-up that pays for compiling runs jobs, so it is the
    runtime's (sdxl_worker.runtime.warmup), after loading.
    """
    unets = _unique([models.base.unet] + ([models.refiner.unet] if models.refiner else []))
    speed_up(unets, [models.base.vae], speedups)  # the VAE is shared by every pipeline
    log.info("Speed-ups: %s", ", ".join(f"{k}={v}" for k, v in asdict(speedups).items()))
    return speedups


def speed_up(unets: list, vaes: list, speedups: Speedups) -> None:
    """The speed-ups on these UNets and VAEs, in place: at loading, and for a UNet or checkpoint
    loaded later (a preset's, another of BASE_MODELS)."""
    for vae in vaes:
        if speedups.vae_upcast is not None:
            vae.register_to_config(force_upcast=speedups.vae_upcast)
    if speedups.attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        for model in unets + vaes:
            model.set_attn_processor(AttnProcessor())
    if speedups.fused_qkv and speedups.attention != "classic":
        for model in unets + vaes:
            model.fuse_qkv_projections()
    if speedups.channels_last:
        import torch

        for model in unets + vaes:
            model.to(memory_format=torch.channels_last)
    if speedups.attention == "cudnn":
        for unet in unets:
            _prefer_cudnn_attention(unet)
    if speedups.host_timesteps:
        for unet in unets:
            _move_timesteps_in_forward(unet)
        _scheduler_noise_without_sync()
    if speedups.compile:
        _compile(unets, speedups)  # paid by the warm-up jobs (sdxl_worker.runtime.warmup), not here


def keep_timesteps_on_host(pipe, scheduler):
    """The scheduler for ``pipe``, keeping its timesteps on the host when ``pipe``'s UNet asks.

    With timesteps on the GPU, schedulers index their host-side tables with a GPU scalar and
    compare it in Python (DDIM does both), each a GPU->CPU sync that drains the launch queue
    once per step. On the host these are plain reads; the UNet's hook copies the timestep to the
    GPU asynchronously. A no-op unless HOST_TIMESTEPS put the hook there.
    """
    if not getattr(pipe.unet, _TIMESTEP_HOOK, False):
        return scheduler
    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)
    def on_host(num_inference_steps=None, device=None, *args, **kwargs):
        return set_timesteps(num_inference_steps, "cpu", *args, **kwargs)

    scheduler.set_timesteps = on_host
    return scheduler


def _compile(unets, speedups: Speedups) -> None:
    """Regional compilation: the transformer blocks, compiled once and shared by every instance.

    Compiling the repeated block instead of the whole UNet cuts compile time by about an order
    of magnitude for most of the speed; the kernels land in a cache folder that outlives the
    process (a network volume on RunPod), so a restart loads them instead of compiling.
    """
    import torch

    cache = Path(speedups.compile_cache_dir or _default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    config.use_compile_cache(str(cache))
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.fx_graph_cache = True
    # One code object serves base and refiner blocks of several widths and sizes.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    options = {"fullgraph": True}
    if speedups.compile_mode:
        options["mode"] = speedups.compile_mode
    if speedups.compile_backend:
        options["backend"] = speedups.compile_backend
    for unet in unets:
        # Inference only, and said before compiling: peft freezes the weights it wraps when a LoRA
        # loads, and a requires_grad that changed would fail the compiled blocks' guards.
        unet.requires_grad_(False)
        unet.compile_repeated_blocks(**options)


def uncompile(unets) -> None:
    """Undo _compile: the blocks run eagerly again (after a compile failure at warm-up)."""
    for unet in unets:
        for module in unet.modules():
            if getattr(module, "_compiled_call_impl", None) is not None:
                module._compiled_call_impl = None


def _prefer_cudnn_attention(unet) -> None:
    """Run the UNet with cuDNN's attention kernel first; SDPA falls back where it cannot."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
             SDPBackend.MATH]
    forward = unet.forward

    @functools.wraps(forward)
    def with_cudnn_first(*args, **kwargs):
        with sdpa_kernel(order, set_priority=True):
            return forward(*args, **kwargs)

    unet.forward = with_cudnn_first


def _move_timesteps_in_forward(unet) -> None:
    """A host timestep reaches the GPU by an asynchronous copy from pinned memory, not a sync."""

    def to_device(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        if len(args) > 1:
            timestep, where = args[1], 1
        else:
            timestep, where = kwargs.get("timestep"), None
        import torch

        if not torch.is_tensor(timestep) or timestep.device == sample.device:
            return None
        timestep = timestep.pin_memory().to(sample.device, non_blocking=True)
        if where is None:
            return args, dict(kwargs, timestep=timestep)
        return args[:1] + (timestep,) + args[2:], kwargs

    unet.register_forward_pre_hook(to_device, with_kwargs=True)
    setattr(unet, _TIMESTEP_HOOK, True)


def _scheduler_noise_without_sync() -> None:
    """Ancestral and stochastic samplers draw each step's noise from the job's CPU generators (the
    same image on any device) and diffusers moves it to the GPU with a plain copy, which waits for
    the GPU every step. Here the same numbers, drawn the same way, go through pinned memory with
    an asynchronous copy: the same pixels, no wait. Installed once, in diffusers' scheduler modules."""
    import importlib
    import pkgutil

    import diffusers.schedulers

    for info in pkgutil.iter_modules(diffusers.schedulers.__path__):
        if not info.name.startswith("scheduling_"):
            continue
        try:
            module = importlib.import_module(f"diffusers.schedulers.{info.name}")
        except Exception:  # a scheduler needing a library this image lacks (flax): not used here
            continue
        draw = getattr(module, "randn_tensor", None)
        if draw is not None and not getattr(draw, "_pinned", False):
            module.randn_tensor = _pinned_noise(draw)


def _pinned_noise(randn_tensor):
    import torch

    @functools.wraps(randn_tensor)
    def randn(shape, generator=None, device=None, dtype=None, layout=None):
        target = torch.device(device) if isinstance(device, str) else device
        first = generator[0] if isinstance(generator, list) and generator else generator
        if target is None or target.type != "cuda" or first is None or first.device.type != "cpu":
            return randn_tensor(shape, generator=generator, device=device, dtype=dtype, layout=layout)
        noise = randn_tensor(shape, generator=generator, device="cpu", dtype=dtype, layout=layout)
        return noise.pin_memory().to(target, non_blocking=True)

    randn._pinned = True
    return randn


def _cudnn_attention_available() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    # cuDNN's fused attention needs Ampere or newer and a cuDNN build that has it.
    return torch.cuda.get_device_capability() >= (8, 0) and torch.backends.cudnn.is_available() \
        and hasattr(torch.backends.cuda, "cudnn_sdp_enabled")


def _default_cache_dir() -> Path:
    # On RunPod a network volume survives the worker: compiled kernels kept there are shared
    # by every worker of the endpoint and by the next cold start.
    volume = Path("/runpod-volume")
    root = volume / ".cache" if volume.is_dir() else Path.home() / ".cache"
    return root / "sdxl-worker" / "torch-compile"


def _unique(items: list) -> list:
    seen, out = set(), []
    for item in items:
        if id(item) not in seen:
            seen.add(id(item))
            out.append(item)
    return out
