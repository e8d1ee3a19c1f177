"""Model loading: once per process, before the first job. Pipelines share components.

BASE_MODEL, REFINER_MODEL and VAE_MODEL name a hub id, a local folder, or ``tiny`` (the
built-in random-weight model). The refiner reuses the base's text_encoder_2 and VAE, and
the img2img and inpaint pipelines are built from the base's (and the refiner's) components:
one copy of each in memory.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

from sdxl_worker import config
from sdxl_worker.config import ModelSettings, SpeedSettings
from sdxl_worker.engine.speed import Speedups, apply_speedups
from sdxl_worker.errors import StartupError

log = logging.getLogger(__name__)



class ModelUnavailable(StartupError):
    """Weights that cannot be loaded at start-up; the message is one sentence for the log."""


def torch_dtype(settings: ModelSettings):
    """The weights' torch dtype: DTYPE, else fp16 on CUDA and fp32 on CPU."""
    import torch

    if settings.dtype:
        return getattr(torch, settings.dtype)
    return torch.float16 if (settings.device or "cpu").startswith("cuda") else torch.float32


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Models:
    """The loaded pipelines. One job at a time uses them (RunPod runs one job per worker).

    base, img2img and inpaint are the checkpoint in use (``name``); sdxl_worker.engine.switch
    swaps them for another of BASE_MODELS, keeping MODELS_KEPT of them loaded.
    """

    base: object  # StableDiffusionXLPipeline
    img2img: object  # StableDiffusionXLImg2ImgPipeline on the base's components
    refiner: object | None  # StableDiffusionXLImg2ImgPipeline sharing text_encoder_2 and VAE
    device: str
    dtype: object
    scheduler_configs: dict = field(default_factory=dict)  # pristine, per stage
    load_seconds: dict = field(default_factory=dict)
    inpaint: object | None = None  # StableDiffusionXLInpaintPipeline on the base's components
    refiner_inpaint: object | None = None  # the same on the refiner's: refining keeps to the mask
    preview_decoder: object | None = None  # TAESDXL (AutoencoderTiny) when TAESD_MODEL loads, else None
    speedups: object | None = None  # the sdxl_worker.engine.speed.Speedups applied at loading
    name: str = config.DEFAULT_MODEL_NAME  # which of BASE_MODELS the base pipelines are
    settings: ModelSettings | None = None  # what was loaded: where the other BASE_MODELS come from
    kept: dict = field(default_factory=dict)  # name -> sdxl_worker.engine.switch.Checkpoint, not in use
    preset_unets: dict = field(default_factory=dict)  # preset name -> its UNet for this checkpoint
    controlnets: dict = field(default_factory=dict)  # CONTROLNET_MODELS: name -> ControlNetModel, shared
    ip_adapter: object | None = None  # sdxl_worker.engine.ip_adapter.IpAdapter when IP_ADAPTER_MODEL is set
    depth: object | None = None  # sdxl_worker.engine.depth.DepthEstimator when DEPTH_MODEL is set
    pose: object | None = None  # sdxl_worker.engine.pose.PoseEstimator when POSE_MODEL is set
    upscaler: object | None = None  # sdxl_worker.engine.upscaler.Upscaler when UPSCALER_MODEL is set
    shared_vae: object | None = None  # VAE_MODEL's VAE, which every checkpoint of BASE_MODELS uses
    broken: dict = field(default_factory=dict)  # BASE_MODELS name -> why it failed to load: not tried again
    broken_samplers: dict = field(default_factory=dict)  # sampler name -> why it cannot be built (self-check)

    @property
    def has_refiner(self) -> bool:
        return self.refiner is not None


def resolve(name: str, part: str, settings: ModelSettings) -> str:
    """A model name as from_pretrained takes it: ``tiny`` becomes the saved tiny folder, and a hub
    id already in a hub cache (baked into the image, or RunPod's) becomes its snapshot folder, so
    loading reads local files and never asks the hub."""
    if name == "tiny":
        from sdxl_worker.engine.tiny import ensure_tiny_model

        return str(ensure_tiny_model(settings.tiny_dir) / part)
    cached = hub_snapshot(name, settings)
    # Not cached: from_pretrained fetches it, or (offline) explains why it cannot.
    return str(cached) if cached else name


def _variant(folder: str, subfolder: str | None) -> str | None:
    """fp16 where the weights ship as an fp16 variant (SDXL repos do; the builder bakes only those)."""
    where = Path(folder) / (subfolder or "")
    if not where.is_dir():
        return "fp16"  # a hub id being downloaded: SDXL repos publish the fp16 variant
    return "fp16" if any(where.glob("*.fp16*.safetensors")) else None


def _load(loader, name: str, variable: str, **kwargs):
    """from_pretrained, turning 'not found' into one sentence that names the model and the fix."""
    local = Path(name).exists()
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelUnavailable(config.model_not_found(variable, name, str(error).splitlines()[0], local)) from None


def _tensors(module) -> list:
    return list(module.parameters()) + list(module.buffers())


def model_bytes(module) -> int:
    """Bytes of a module's weights and buffers as loaded."""
    return sum(t.numel() * t.element_size() for t in _tensors(module))


def loaded_bytes(models: Models) -> int:
    """Bytes of every weight the worker holds, each shared tensor counted once: the pipelines (fused
    projections included), the ControlNets, the IP-Adapter with its image encoder, the preview decoder."""
    modules = [component for pipe in (models.base, models.img2img, models.refiner) if pipe is not None
               for component in pipe.components.values() if hasattr(component, "parameters")]
    modules += list(models.controlnets.values())
    if models.ip_adapter is not None:
        ip = models.ip_adapter
        modules += [ip.image_encoder, ip.projection, *ip.processors.values()]
    if models.preview_decoder is not None:
        modules.append(models.preview_decoder)
    seen, total = set(), 0
    for module in modules:
        for tensor in _tensors(module):
            key = (tensor.device, tensor.data_ptr())
            if key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total


def hub_snapshot(name: str, settings: ModelSettings) -> Path | None:
    """The cached snapshot folder of a hub id, found without importing huggingface_hub: RunPod's
    model cache first (RUNPOD_MODEL_CACHE, when the folder exists), then the Hugging Face cache."""
    if name.count("/") != 1 or Path(name).exists():
        return None
    for cache in (settings.runpod_cache, settings.hub_cache):
        repo = cache / ("models--" + name.replace("/", "--"))
        try:
            return repo / "snapshots" / (repo / "refs" / "main").read_text().strip()
        except OSError:
            snapshots = sorted(repo.glob("snapshots/*/model_index.json")) if repo.is_dir() else []
            if snapshots:  # no refs/main: the newest snapshot holding a whole pipeline
                return max(snapshots, key=lambda index: index.stat().st_mtime).parent
    return None


PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth", ".pkl")


def single_file(name: str | None, variable: str) -> Path | None:
    """The checkpoint file when ``name`` is one (``.safetensors``); ModelUnavailable for a pickle one."""
    if not name:
        return None
    path = Path(name)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelUnavailable(
            f"{variable}={name!r} is a pickle checkpoint ({path.suffix}), which can run code when it is loaded; "
            f"the worker loads only .safetensors files: download the checkpoint's .safetensors version."
        )
    if path.suffix.lower() != ".safetensors":
        return None
    if not path.is_file():
        raise ModelUnavailable(f"{variable}={name!r}: no such file; check the path (a network volume is "
                               f"mounted at /runpod-volume).")
    return path


def _from_single_file(pipeline_cls, path: Path, config_name: str, variable: str, dtype, device: str | None,
                      **components):
    """A pipeline from one original-layout checkpoint, the other files (configs, tokenizers,
    scheduler) from ``config_name``'s local folder: nothing is fetched."""
    try:
        pipe = pipeline_cls.from_single_file(str(path), config=config_name, local_files_only=True,
                                             torch_dtype=dtype, add_watermarker=False, **components)
    except (OSError, ValueError, KeyError) as error:
        raise ModelUnavailable(
            f"Could not load {variable}={str(path)!r} as a single-file SDXL checkpoint with the configs of "
            f"{config_name!r}: {str(error).splitlines()[0].rstrip('.')}. Check that it is an SDXL checkpoint "
            f"and that CHECKPOINT_CONFIG names a baked SDXL model folder."
        ) from None
    return pipe.to(device) if device and device != "cpu" else pipe  # loaded on the CPU


def weight_files(settings: ModelSettings) -> list[Path]:
    """The safetensors files load_models will read, in the order it reads them."""

    def folder(name: str | None) -> Path | None:
        if not name or name == "tiny":
            return None
        return Path(name) if Path(name).exists() else hub_snapshot(name, settings)

    def weights(where: Path | None, subfolder: str = "") -> list[Path]:
        if where is not None and where.is_file():  # a single-file checkpoint: everything in one
            return [where] if subfolder in ("", "unet") else []
        if where is None or not (where / subfolder).is_dir():
            return []
        found = sorted((where / subfolder).glob("*.safetensors"))
        fp16 = [f for f in found if ".fp16" in f.name]
        return fp16 or found

    base, refiner = folder(settings.base), folder(settings.refiner)
    files = weights(folder(settings.vae)) if settings.vae else weights(base, "vae")
    for part in ("text_encoder", "text_encoder_2", "unet"):
        files += weights(base, part)
    files += weights(refiner, "unet")
    for _, source in settings.controlnets:
        files += weights(folder(source))
    adapter = folder(settings.ip_adapter)
    if adapter is not None:
        weight = adapter / settings.ip_adapter_weight
        files += [weight] if weight.is_file() else []
        files += weights(adapter, config.ip_adapter_encoder_folder(settings))
    return files


@dataclass
class _Loader:
    """Loads model components one by one, straight onto the device in the target dtype, and
    keeps what each cost for the start-up log."""

    dtype: object
    device_map: str | None  # None: load on the CPU (CPU offload moves them later)
    report: dict = field(default_factory=dict)  # component -> (bytes, seconds)

    def component(self, label: str, cls, name: str, variable: str, subfolder: str | None = None):
        started = time.perf_counter()
        kwargs = {"dtype": self.dtype, "use_safetensors": True}
        variant = _variant(name, subfolder)
        if variant:
            kwargs["variant"] = variant
        if subfolder:
            kwargs["subfolder"] = subfolder
        if self.device_map:
            # Each tensor goes from the memory-mapped safetensors file to the device in the
            # target dtype: no full CPU copy of the model on the way.
            kwargs["device_map"] = self.device_map
        try:
            model = _load(cls, name, variable, **kwargs)
        except ModelUnavailable:
            if "variant" not in kwargs or Path(name).is_dir():
                raise
            del kwargs["variant"]  # a hub id being downloaded that publishes no fp16 variant
            model = _load(cls, name, variable, **kwargs)
        self.report[label] = (model_bytes(model), time.perf_counter() - started)
        return model


def import_libraries() -> SimpleNamespace:
    """What load_models builds with. Importing it is most of a cold start's CPU time, so it is
    one call: ``python -m sdxl_worker.runtime.prefetch --record`` makes it to list the files the imports read."""
    from diffusers import (
        AutoencoderKL,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdxl_worker.engine.control_pipelines import load_controlnets, speed_up_controlnets
    from sdxl_worker.engine.ip_adapter import load_ip_adapter
    from sdxl_worker.engine.latent_previews import load_preview_decoder

    return SimpleNamespace(
        load_controlnets=load_controlnets,
        speed_up_controlnets=speed_up_controlnets,
        load_ip_adapter=load_ip_adapter,
        AutoencoderKL=AutoencoderKL,
        CLIPTextModel=CLIPTextModel,
        CLIPTextModelWithProjection=CLIPTextModelWithProjection,
        StableDiffusionXLImg2ImgPipeline=StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLInpaintPipeline=StableDiffusionXLInpaintPipeline,
        StableDiffusionXLPipeline=StableDiffusionXLPipeline,
        UNet2DConditionModel=UNet2DConditionModel,
        load_preview_decoder=load_preview_decoder,
    )


def load_models(settings: ModelSettings, speed: SpeedSettings = SpeedSettings()) -> Models:
    """Every model ``settings`` names, loaded once (the base, the refiner, ControlNets, the
    IP-Adapter, the preview decoder), with the speed-ups ``speed`` asks for applied."""
    lib = import_libraries()
    if settings.device is None:
        settings = replace(settings, device=_default_device())
    _quiet_libraries()
    _check_choices(settings)
    on_gpu = settings.device.startswith("cuda")
    dtype = torch_dtype(settings)
    loader = _Loader(dtype, None if settings.cpu_offload and on_gpu else settings.device)
    everything_started = time.perf_counter()

    # 1. Base: each weight-bearing component on its own, so the log can say what each cost.
    vae = None
    if settings.vae:
        vae = loader.component("vae", lib.AutoencoderKL, resolve(settings.vae, "vae", settings), "VAE_MODEL")
    base = load_base(lib, settings, settings.base, loader, vae)

    # 2. Refiner: its own UNet; text_encoder_2 and the VAE are the base's (one copy in memory).
    refiner = None
    refiner_file = single_file(settings.refiner, "REFINER_MODEL")
    if refiner_file is not None:
        started = time.perf_counter()
        refiner = _from_single_file(lib.StableDiffusionXLImg2ImgPipeline, refiner_file,
                                    resolve(settings.refiner_checkpoint_config, "refiner", settings), "REFINER_MODEL", dtype,
                                    loader.device_map, text_encoder_2=base.text_encoder_2, vae=base.vae)
        loader.report["refiner unet"] = (model_bytes(refiner.unet), time.perf_counter() - started)
    elif settings.refiner:
        refiner_name = resolve(settings.refiner, "refiner", settings)
        refiner_unet = loader.component(
            "refiner unet", lib.UNet2DConditionModel, refiner_name, "REFINER_MODEL", "unet"
        )
        refiner = _load(
            lib.StableDiffusionXLImg2ImgPipeline,
            refiner_name,
            "REFINER_MODEL",
            unet=refiner_unet,
            text_encoder_2=base.text_encoder_2,
            vae=base.vae,
            add_watermarker=False,
        )

    # 3. What guides the base: ControlNets and the IP-Adapter, loaded once for every job and checkpoint.
    named = functools.partial(resolve, settings=settings)
    controlnets = lib.load_controlnets(settings, loader, named)
    ip = lib.load_ip_adapter(base, settings, named, ModelUnavailable)
    from sdxl_worker.engine.depth import load_depth
    from sdxl_worker.engine.pose import load_pose
    from sdxl_worker.engine.upscaler import load_upscaler

    depth = load_depth(settings.depth, settings.device, named)
    pose = load_pose(settings.pose, settings.pose_detector, settings.device, named)
    upscaler = load_upscaler(settings.upscaler, settings.upscaler_weight, settings.device, dtype, named)

    img2img, inpaint = base_pipelines(lib, base)
    refiner, refiner_inpaint = refiner_pipelines(lib, refiner) if refiner else (None, None)
    if settings.cpu_offload and on_gpu:
        base.enable_model_cpu_offload()
        if refiner:
            refiner.enable_model_cpu_offload()

    configs = {"base": dict(base.scheduler.config)}
    if refiner:
        configs["refiner"] = dict(refiner.scheduler.config)
    seconds = {label: spent for label, (_, spent) in loader.report.items()}
    models = Models(base, img2img, refiner, settings.device, dtype, configs, seconds,
                    inpaint=inpaint, refiner_inpaint=refiner_inpaint, name=settings.choices[0][0],
                    settings=settings, controlnets=controlnets, ip_adapter=ip, shared_vae=vae, depth=depth, pose=pose,
                    upscaler=upscaler)
    models.preview_decoder = lib.load_preview_decoder(settings.taesd, settings.device, dtype)
    models.speedups = apply_speedups(models, Speedups.resolve(speed, settings.device, settings.vae, settings.cpu_offload))
    lib.speed_up_controlnets(list(controlnets.values()), models.speedups)
    # After the speed-ups: fused projections are weights of their own (the unfused ones stay, for LoRAs).
    _log_loaded(settings, dtype, loader.report, loaded_bytes(models), time.perf_counter() - everything_started)
    return models


def _check_choices(settings: ModelSettings) -> None:
    """The BASE_MODELS loaded only when a job asks, checked at start-up as far as can be without
    loading them: a file's header, a folder's model_index.json, a hub id's cached copy when offline.
    A bad one stops the start in one sentence naming it."""
    for name, source in settings.choices[1:]:
        problem = _choice_problem(source, name, settings)
        if problem:
            raise ModelUnavailable(f"BASE_MODELS {name}={source!r}: {problem}; fix or remove that entry.")


def _choice_problem(source: str, name: str, settings: ModelSettings) -> str | None:
    if source == "tiny":
        return None
    checkpoint = single_file(source, f"BASE_MODELS {name}")  # a pickle or missing .safetensors file
    if checkpoint is not None:
        return _single_file_problem(checkpoint)
    folder = Path(source).expanduser()
    if source.startswith(("/", "./", "../", "~")) or folder.exists():
        return _folder_problem(folder) if folder.is_dir() else "no such folder (a network volume is mounted at /runpod-volume)"
    cached = hub_snapshot(source, settings)
    if cached is not None:
        return _folder_problem(cached)
    if settings.hub_offline:
        return ("a hub id that is neither in the image's Hugging Face cache nor in RunPod's model cache, and the "
                "worker is offline (HF_HUB_OFFLINE=1): bake it with the builder, or name a folder")
    return None  # fetched from the hub when a job first asks for it


def _single_file_problem(path: Path) -> str | None:
    """Why a .safetensors file is no SDXL checkpoint, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            names = list(checkpoint.keys())
    except Exception:  # safetensors' own error type: a header it cannot read
        return "not a safetensors file this worker can read"
    if not any(key.startswith("model.diffusion_model.") for key in names) or \
            not any(key.startswith("conditioner.embedders.1.") for key in names):
        return "not an SDXL checkpoint (no SDXL UNet and second text encoder among its tensors)"
    return None


def _folder_problem(folder: Path) -> str | None:
    """Why a folder is no diffusers SDXL pipeline, from its model_index.json."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return "not a diffusers pipeline folder (no readable model_index.json)"
    if "StableDiffusionXL" not in str(index.get("_class_name", "")):
        return f"not an SDXL pipeline (its model_index.json names {str(index.get('_class_name'))[:60]})"
    return None


def load_base(lib, settings: ModelSettings, source: str, loader: "_Loader", vae=None):
    """The base pipeline of checkpoint ``source`` (as BASE_MODEL takes it), with ``vae`` when given."""
    base_file = single_file(source, "BASE_MODEL")
    if base_file is not None:
        started = time.perf_counter()
        base = _from_single_file(lib.StableDiffusionXLPipeline, base_file,
                                 resolve(settings.checkpoint_config, "base", settings),
                                 "BASE_MODEL", loader.dtype, loader.device_map, **({"vae": vae} if vae else {}))
        loader.report["checkpoint"] = (sum(model_bytes(getattr(base, part)) for part in
                                           ("unet", "text_encoder", "text_encoder_2")) + model_bytes(base.vae),
                                       time.perf_counter() - started)
        return base
    base_name = resolve(source, "base", settings)
    if vae is None:
        vae = loader.component("vae", lib.AutoencoderKL, base_name, "BASE_MODEL", "vae")
    text_encoder = loader.component("text_encoder", lib.CLIPTextModel, base_name, "BASE_MODEL", "text_encoder")
    text_encoder_2 = loader.component(
        "text_encoder_2", lib.CLIPTextModelWithProjection, base_name, "BASE_MODEL", "text_encoder_2"
    )
    unet = loader.component("unet", lib.UNet2DConditionModel, base_name, "BASE_MODEL", "unet")
    # Tokenizers and the scheduler are all that is left to read.
    return _load(lib.StableDiffusionXLPipeline, base_name, "BASE_MODEL", vae=vae, text_encoder=text_encoder,
                 text_encoder_2=text_encoder_2, unet=unet, add_watermarker=False)


def base_pipelines(lib, base) -> tuple:
    """The img2img and inpaint pipelines on the base's components (no weights copied).

    Pipelines made from components take add_watermarker=False too: otherwise diffusers adds one
    whenever invisible-watermark is installed (sdxl_worker.engine.watermark does it instead).
    """
    img2img = lib.StableDiffusionXLImg2ImgPipeline(**base.components, add_watermarker=False)
    inpaint = lib.StableDiffusionXLInpaintPipeline(**base.components, add_watermarker=False)
    for pipe in (base, img2img, inpaint):
        pipe.set_progress_bar_config(disable=True)
    return img2img, inpaint


def refiner_pipelines(lib, refiner, **components) -> tuple:
    """The refiner's img2img and inpaint pipelines on its components, with ``components`` swapped in
    (another base's text_encoder_2 and VAE): refining keeps to the mask after inpainting."""
    parts = {**refiner.components, **components}
    settings = dict(requires_aesthetics_score=refiner.config.requires_aesthetics_score,
                    force_zeros_for_empty_prompt=refiner.config.force_zeros_for_empty_prompt, add_watermarker=False)
    if components:
        refiner = lib.StableDiffusionXLImg2ImgPipeline(**parts, **settings)
    inpaint = lib.StableDiffusionXLInpaintPipeline(**parts, **settings)
    for pipe in (refiner, inpaint):
        pipe.set_progress_bar_config(disable=True)
    return refiner, inpaint


def free_memory() -> None:
    """Return what dropped models or a failed job held: Python objects, then CUDA's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _log_loaded(settings: ModelSettings, dtype, report: dict, total_bytes: int, total_seconds: float) -> None:
    """One line per component and a total: what a cold start spent, where."""
    log.info(
        "Loaded base=%s refiner=%s vae=%s on %s (%s)",
        settings.base,
        settings.refiner or "off",
        settings.vae or "the base's own",
        settings.device,
        str(dtype).replace("torch.", ""),
    )
    for label, (size, seconds) in report.items():
        log.info("  %-15s %8.1f MB in %5.2f s (%.2f GB/s)", label, size / 1e6, seconds, size / 1e9 / max(seconds, 1e-9))
    log.info("  %-15s %8.1f MB in %5.2f s (every model held: ControlNets, IP-Adapter and fused projections "
             "included, shared text_encoder_2 and VAE once)", "total", total_bytes / 1e6, total_seconds)


def _quiet_libraries() -> None:
    """Progress bars and truncation chatter are noise in a worker's log."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
