"""Build time: download exactly the weights the worker loads, so the image runs offline.

    python builder/download_weights.py             download into the Hugging Face cache (HF_HOME)
    python builder/download_weights.py --dry-run   print what it would fetch, download nothing
    python builder/download_weights.py --dry-run --listings tests/fixtures/hub   ... from stored listings

The models come from the same variables the worker reads at run time (Docker build args in the
image): BASE_MODEL, REFINER_MODEL, VAE_MODEL and TAESD_MODEL; PRESETS adds the weights of those fast
presets (sdxl_worker.request.presets), CONTROLNET_MODELS the ControlNets a job may name, and
IP_ADAPTER_MODEL the IP-Adapter file IP_ADAPTER_WEIGHT with its image encoder, and UPSCALER_MODEL
the upscaling model's file UPSCALER_WEIGHT. A BASE_MODEL (or REFINER_MODEL) that
is a single `.safetensors` file (builder/download_checkpoint.py bakes one from BASE_MODEL_URL)
needs only the configs and tokenizers of CHECKPOINT_CONFIG (REFINER_CHECKPOINT_CONFIG): no weights.
Of each repository it takes the
configs, the tokenizers and one copy of the weights: the fp16 safetensors where the repository has
them, else its plain safetensors. Never the fp32 duplicates, flax, ONNX or OpenVINO copies, nor
single-file checkpoints (the base repository is over 70 GB with them; the worker loads 11.5 GB),
and never a component the worker takes from elsewhere: the refiner borrows the base's
text_encoder_2 and VAE, and the base uses VAE_MODEL instead of its own VAE.

Which files to fetch is a pure function of the repository's file listing (files_to_fetch); only
downloading needs the network, and huggingface_hub is imported only then.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from sdxl_worker import config

# The worker's own defaults (sdxl_worker.config), and the image's TAESDXL for sharper previews.
DEFAULTS = {
    "BASE_MODEL": config.DEFAULT_BASE,
    "REFINER_MODEL": config.DEFAULT_REFINER,
    "VAE_MODEL": config.DEFAULT_VAE,
    "TAESD_MODEL": config.DEFAULT_TAESD,
}
VARIANT = "fp16"

# Weight files are named like diffusers and transformers name them; anything else at those places
# (sd_xl_base_1.0.safetensors, sdxl.vae.safetensors, taesdxl_decoder.safetensors) is a copy in
# another layout that the worker never opens.
WEIGHT_NAMES = ("diffusion_pytorch_model", "model")
SHARD = r"-\d{5}-of-\d{5}"


@dataclass(frozen=True)
class Wanted:
    """One repository the worker loads, and the pipeline components it takes from elsewhere."""

    variable: str
    repo: str
    skip: tuple[str, ...] = ()
    configs_only: bool = False  # a single-file checkpoint's component configs: no weights
    weight: str | None = None  # an IP-Adapter or an upscaler: its weight file in the repository
    encoder: str | None = None  # and an IP-Adapter's image encoder's folder there
    one_file: bool = False  # an upscaler: ``weight`` alone
    also: tuple[str, ...] = ()  # top-level files a single model needs beside config.json (a processor's)


def _single_file(name: str | None) -> bool:
    return bool(name) and name.lower().endswith(".safetensors")


def wanted_from_env(env=None) -> list[Wanted]:
    """The repositories to bake, as the worker will load them: the build arguments read by the
    worker's own configuration (sdxl_worker.config), so `none`/`off` mean the same in both."""
    settings = config.image_models(env)
    if _single_file(settings.base):  # baked by builder/download_checkpoint.py, or on a volume
        wanted = [Wanted("CHECKPOINT_CONFIG", settings.checkpoint_config, configs_only=True)]
    else:
        wanted = [Wanted("BASE_MODEL", settings.base, ("vae",) if settings.vae else ())]
    if _single_file(settings.refiner):
        wanted.append(Wanted("REFINER_CHECKPOINT_CONFIG", settings.refiner_checkpoint_config, configs_only=True))
    elif settings.refiner:
        wanted.append(Wanted("REFINER_MODEL", settings.refiner, ("text_encoder_2", "vae")))
    if settings.vae:
        wanted.append(Wanted("VAE_MODEL", settings.vae))
    if settings.taesd:
        wanted.append(Wanted("TAESD_MODEL", settings.taesd))
    # ControlNets are single models (config.json and weights at the top); an IP-Adapter is one file
    # of a repository that holds many, with the CLIP image encoder it was trained with beside it.
    wanted += [Wanted(f"CONTROLNET_MODELS {name}", source) for name, source in settings.controlnets]
    if settings.ip_adapter:
        wanted.append(Wanted("IP_ADAPTER_MODEL", settings.ip_adapter, weight=settings.ip_adapter_weight,
                             encoder=config.ip_adapter_encoder_folder(settings)))
    # The preprocessors are transformers models: each with its image processor's settings beside its config.
    for variable, source in (("DEPTH_MODEL", settings.depth), ("POSE_MODEL", settings.pose),
                             ("POSE_DETECTOR", settings.pose_detector)):
        if source:
            wanted.append(Wanted(variable, source, also=("preprocessor_config.json",)))
    # The hires pass's upscaling model: one weight file of a repository (a file path needs no download).
    if settings.upscaler and not settings.upscaler.lower().endswith(config.UPSCALER_TYPES):
        wanted.append(Wanted("UPSCALER_MODEL", settings.upscaler, weight=settings.upscaler_weight, one_file=True))
    # Local folders and the built-in test model need no download.
    return [w for w in wanted if w.repo != "tiny" and not Path(w.repo).exists()]


def pipeline_components(model_index: dict) -> list[str]:
    """Component folders a diffusers pipeline loads: model_index.json entries that name a class."""
    return sorted(
        name
        for name, value in model_index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[1] is not None
    )


def _weights(files: list[str], variant: str) -> list[str]:
    """One copy of a component's weights: the variant's safetensors, else the plain safetensors."""
    names = "|".join(WEIGHT_NAMES)
    by_variant = re.compile(rf"({names})\.{variant}({SHARD})?\.safetensors|({names})\.safetensors\.index\.{variant}\.json")
    plain = re.compile(rf"({names})({SHARD})?\.safetensors|({names})\.safetensors\.index\.json")
    for pattern in (by_variant, plain):
        chosen = [f for f in files if pattern.fullmatch(f.rsplit("/", 1)[-1])]
        if chosen:
            return chosen
    return []


def _settings(files: list[str]) -> list[str]:
    """Configs and tokenizer files: small text that from_pretrained reads next to the weights."""
    return [
        f
        for f in files
        if f.endswith((".json", ".txt", ".model")) and ".safetensors.index" not in f and ".bin.index" not in f
    ]


class NothingToLoad(ValueError):
    """A component or model with no safetensors weights: the worker loads safetensors only."""


def files_to_fetch(
    listing: list[str], components: list[str] | None = None, variant: str = VARIANT, skip=(), weights: bool = True
) -> list[str]:
    """The files of one repository that the worker loads.

    listing: every file path in the repository. components: the pipeline's component folders
    (pipeline_components of its model_index.json), or None for a single model (a VAE) whose
    config.json and weights sit at the top. skip: components the worker passes in from elsewhere.
    weights: False for the configs and tokenizers alone (what a single-file checkpoint needs).
    """
    if components is None:
        top = [f for f in listing if "/" not in f]
        weights = _weights(top, variant)
        if "config.json" not in top or not weights:
            raise NothingToLoad("no config.json with safetensors weights at the top of the repository")
        return sorted(["config.json"] + weights)

    chosen = ["model_index.json"]
    for component in components:
        if component in skip:
            continue
        inside = [f for f in listing if f.startswith(component + "/") and f.count("/") == 1]
        settings, chosen_weights = _settings(inside), _weights(inside, variant)
        has_weights = any(f.endswith((".safetensors", ".bin", ".msgpack", ".onnx")) for f in inside)
        if weights and has_weights and not chosen_weights:
            raise NothingToLoad(f"component {component!r} has no safetensors weights")
        chosen += settings + (chosen_weights if weights else [])
    return sorted(chosen)


# --- the network side: listing and downloading ----------------------------------------------


def ip_adapter_files(listing: list[str], weight: str, encoder: str, variant: str = VARIANT) -> list[str]:
    """An IP-Adapter's weight file and the image encoder the worker loads with it: ``encoder``, a
    folder of the repository, as sdxl_worker.config.ip_adapter_encoder_folder names it."""
    if weight not in listing:
        raise NothingToLoad(f"no file {weight!r} in the repository (IP_ADAPTER_WEIGHT)")
    if not weight.endswith(".safetensors"):
        raise NothingToLoad(f"IP_ADAPTER_WEIGHT={weight!r} is not a .safetensors file")
    inside = [f[len(encoder) + 1:] for f in listing
              if f.startswith(encoder + "/") and f.count("/") == encoder.count("/") + 1]
    try:
        files = files_to_fetch(inside, None, variant)
    except NothingToLoad:
        raise NothingToLoad(f"no image encoder (config.json and safetensors weights) in {encoder}/ "
                            f"(IP_ADAPTER_ENCODER)") from None
    return sorted([weight] + [f"{encoder}/{name}" for name in files])


def upscaler_files(listing: list[str], weight: str) -> list[str]:
    """An upscaling model's one file, UPSCALER_WEIGHT: safetensors, or a .pth the worker reads as
    tensors only (torch's weights-only unpickler: no code runs)."""
    if weight not in listing:
        raise NothingToLoad(f"no file {weight!r} in the repository (UPSCALER_WEIGHT)")
    refusal = config.upscaler_weight_refusal(weight)
    if refusal:
        raise NothingToLoad(refusal)
    return [weight]


def _stored_listing(folder: Path, repo: str) -> tuple[list[str], dict | None]:
    """A listing saved as <owner>__<name>.txt (one path a line, # comments), model_index beside it."""
    stem = repo.replace("/", "__")
    listing = [
        line.strip()
        for line in (folder / f"{stem}.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    index = folder / f"{stem}.model_index.json"
    return listing, (json.loads(index.read_text()) if index.exists() else None)


def _hub_listing(repo: str) -> tuple[list[str], dict | None]:
    from huggingface_hub import HfApi, hf_hub_download

    listing = HfApi().list_repo_files(repo)
    index = None
    if "model_index.json" in listing:
        index = json.loads(Path(hf_hub_download(repo, "model_index.json")).read_text())
    return listing, index


def plan(wanted: list[Wanted], listings: Path | None = None) -> list[tuple[Wanted, list[str]]]:
    """For each repository, the files to fetch."""
    planned = []
    for item in wanted:
        listing, index = _stored_listing(listings, item.repo) if listings else _hub_listing(item.repo)
        components = pipeline_components(index) if index is not None else None
        try:
            if item.one_file:
                files = upscaler_files(listing, item.weight)
            elif item.weight:
                files = ip_adapter_files(listing, item.weight, item.encoder)
            else:
                files = files_to_fetch(listing, components, VARIANT, item.skip, weights=not item.configs_only)
                files = sorted({*files, *(name for name in item.also if name in listing)})
        except NothingToLoad as error:
            raise SystemExit(f"{item.variable}={item.repo}: {error}") from None
        planned.append((item, files))
    return planned


def preset_downloads(names: tuple[str, ...]) -> list[tuple[str, str, list[str]]]:
    """(preset, repository, file patterns) for the fast presets PRESETS names (``all``: every one).
    A LoRA preset needs its one file; a UNet preset its UNet's config and fp16 weights."""
    from sdxl_worker.request.presets import PRESETS

    names = tuple(PRESETS) if "all" in names else names
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        raise SystemExit(f"PRESETS={','.join(names)}: {unknown[0]!r} is not a preset; use {', '.join(PRESETS)} or all.")
    return [(name, PRESETS[name].repo,
             [PRESETS[name].file] if PRESETS[name].file else ["unet/config.json", f"unet/*.{VARIANT}.safetensors"])
            for name in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Download the weights the worker loads (fp16 safetensors, configs, tokenizers) "
        "for BASE_MODEL, REFINER_MODEL, VAE_MODEL, TAESD_MODEL, PRESETS, CONTROLNET_MODELS, "
        "IP_ADAPTER_MODEL, the preprocessors and UPSCALER_MODEL into the Hugging Face cache.",
        epilog="Model ids come from the environment; 'none' turns REFINER_MODEL or TAESD_MODEL off, "
        "VAE_MODEL=base keeps the checkpoint's own VAE.",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the files it would fetch and stop")
    parser.add_argument(
        "--listings", type=Path, help="read repository listings from this folder instead of the hub (offline)"
    )
    args = parser.parse_args(argv)

    planned = plan(wanted_from_env(), args.listings)
    presets = preset_downloads(config.build().presets)
    for item, files in planned:
        note = " (configs only)" if item.configs_only else (f" (not {', '.join(item.skip)})" if item.skip else "")
        print(f"{item.variable}={item.repo}: {len(files)} files{note}")
        for name in files:
            print(f"  {name}")
    for name, repo, patterns in presets:
        print(f"PRESETS {name}={repo}: {', '.join(patterns)}")
    if args.dry_run:
        return 0

    from huggingface_hub import snapshot_download

    for item, files in planned:
        # Exact paths as patterns: nothing else in the repository matches them.
        path = snapshot_download(item.repo, allow_patterns=files)
        print(f"{item.variable}: {path}", flush=True)
    for name, repo, patterns in presets:
        print(f"PRESETS {name}: {snapshot_download(repo, allow_patterns=patterns)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
