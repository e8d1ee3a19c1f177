"""SDXL latency on one GPU: worker-sdxl's way, plain diffusers, and this worker, in one run.

    bash bench/gpu_device.sh            on the lent GPU machine: the headline rows in one command, under
                                        8 minutes with model building (docs/performance.md, "GPU")
    python bench/gpu.py --headline      the same rows, where the packages are installed
    python bench/gpu.py                 every row, the switches one by one included (15+ minutes)
    python bench/gpu.py --cpu-smoke     anywhere, in seconds: the tiny model, every row but compile,
                                        to check the script end to end (a test runs it in CI)

The GPU models are SDXL's real architectures (bench/sdxl-configs/, the released checkpoints'
configs) with random fp16 weights: speed does not depend on weight values and nothing is
downloaded. They are saved once in diffusers layout under bench/.cache/, so this worker's path
loads them through load_models exactly as it loads real weights, and runs jobs through run_job.

Stages (DDIM, guidance 7.5, batch 1): "base only", and "base + refiner" as worker-sdxl runs it
and as this worker does by default: the base's latents refined at strength 0.3 over 50 refiner
steps (15 run). Rows:
  a          worker-sdxl's set-up: fp16, enable_model_cpu_offload, the fp16-fix VAE (no upcast),
             the refiner with its own VAE and text_encoder_2, the refiner called with the prompt
             alone and its own Euler scheduler, as its handler does; SDPA stands in for xformers
  b          plain diffusers: fp16, SDPA, everything resident, the fp16-fix VAE (no upcast), the
             refiner sharing text_encoder_2 and the VAE, prompt, negative prompt and guidance to both
  none       this worker with every speed switch off (the unoptimised path; reference image)
  c          this worker with its default switches for this device
  cc         this worker with its defaults and COMPILE=1 (its whole CUDA set-up)
  lightning  this worker, lightning-4's schedule: 4 trailing Euler steps without guidance (the
             fused LoRA adds no cost, so the base UNet stands in for it; base only)
  +name      this worker with one switch alone (base only)
Columns: median seconds per image over --runs runs after one warm-up run; peak GPU memory;
achieved TFLOP/s (FLOPs counted in this run) and its share of the matmul peak measured in this
run; host syncs per job; mean absolute pixel difference (0-255) from ``none`` on the same seed.
Rows accumulate in bench/.cache/results-<mode>.json across invocations (``--only``), and
bench/RESULTS.md is rewritten from them after every variant.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = ROOT / "bench" / "sdxl-configs"
CACHE = ROOT / "bench" / ".cache"
RESULTS = ROOT / "bench" / "RESULTS.md"
SEED = 1234
PROMPT = "a lighthouse at dusk, oil painting"
NEGATIVE = "blurry, low quality"
GUIDANCE = 7.5
STRENGTH = 0.3  # worker-sdxl's (and this worker's) refiner strength
REFINER_STEPS = 50  # worker-sdxl's refiner steps before strength: 15 run
# FLOPs per image from REFERENCE.md section 7 (1024x1024, CFG), printed next to our own count.
REFERENCE_TFLOP = {"base UNet call": 13.5, "refiner UNet call": 14.6, "VAE decode": 10.5}

# One sampler of each family, for the host syncs per job on row c (the GPU run).
SYNC_SAMPLERS = ("DDIM", "K_EULER", "K_EULER_ANCESTRAL", "DPMSolverMultistep", "DPMSolverSinglestep", "PNDM",
                 "UniPC", "HeunDiscrete", "KLMS", "K_DPM_2_ANCESTRAL", "DDPM", "LCM")

# The worker's speed switches, each measured alone on top of the unoptimised path.
ALONE = ("channels_last", "fused_qkv", "vae_no_upcast", "cudnn_attention", "host_timesteps", "compile")


# ---------------------------------------------------------------- models

def load_configs(reduced: bool) -> dict:
    names = ("base_unet", "refiner_unet", "vae", "text_encoder", "text_encoder_2")
    configs = {name: json.loads((CONFIGS / f"{name}.json").read_text()) for name in names}
    return reduce_width(configs) if reduced else configs


def reduce_width(configs: dict) -> dict:
    """SDXL's layout (levels, blocks, transformer depths, conditioning) at a fraction of its width."""
    configs = copy.deepcopy(configs)
    for name, width in (("text_encoder", 32), ("text_encoder_2", 64)):
        configs[name].update(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                             num_attention_heads=4, projection_dim=width)
    time_embed = 8
    for name, cross in (("base_unet", 32 + 64), ("refiner_unet", 64)):
        unet = configs[name]
        time_ids = (unet["projection_class_embeddings_input_dim"] - 1280) // unet["addition_time_embed_dim"]
        scale = unet["block_out_channels"][0] // 32
        channels = [max(32, channels // scale // 8 * 8) for channels in unet["block_out_channels"]]
        unet.update(block_out_channels=channels, attention_head_dim=[c // 16 for c in channels],
                    norm_num_groups=8, cross_attention_dim=cross, addition_time_embed_dim=time_embed,
                    projection_class_embeddings_input_dim=64 + time_ids * time_embed)
    configs["vae"].update(block_out_channels=[16, 32, 32, 32], norm_num_groups=8)
    return configs


def save_models(configs: dict, folder: Path, device: str, dtype, variant: str | None) -> Path:
    """Random weights in SDXL's shapes, saved once in diffusers layout (like the real repos)."""
    if (folder / "complete").exists():
        return folder
    import torch
    from diffusers import (
        AutoencoderKL,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdxl_worker.engine.tiny import scheduler, tokenizer  # offline CLIP tokenizers and SDXL's scheduler

    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])).to(dtype)
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])).to(dtype)
        vae = AutoencoderKL.from_config(configs["vae"]).to(dtype)
        base_unet = UNet2DConditionModel.from_config(configs["base_unet"]).to(dtype)
        refiner_unet = UNet2DConditionModel.from_config(configs["refiner_unet"]).to(dtype)
    save = {"variant": variant} if variant else {}
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer(),
        tokenizer_2=tokenizer(), unet=base_unet, scheduler=scheduler(), add_watermarker=False,
    ).save_pretrained(folder / "base", **save)
    StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer(),
        unet=refiner_unet, scheduler=scheduler(), requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False,
    ).save_pretrained(folder / "refiner", **save)
    # The name is what the worker recognises as the fp16-fix VAE (no upcast needed); like the
    # real one (madebyollin/sdxl-vae-fp16-fix), it says force_upcast: false and ships a single
    # weights file, no fp16 variant.
    vae.register_to_config(force_upcast=False)
    vae.save_pretrained(folder / "sdxl-vae-fp16-fix")
    (folder / "complete").write_text(f"{time.perf_counter() - started:.0f} s\n")
    del text_encoder, text_encoder_2, vae, base_unet, refiner_unet
    free_memory()
    return folder


def tiny_models(folder: Path) -> Path:
    """The smoke run's models: the built-in tiny model, with its VAE as the fp16-fix one."""
    import shutil

    from diffusers import AutoencoderKL

    from sdxl_worker.engine.tiny import ensure_tiny_model

    if (folder / "complete").exists():
        return folder
    tiny = ensure_tiny_model()
    for part in ("base", "refiner"):
        shutil.copytree(tiny / part, folder / part, dirs_exist_ok=True)
    vae = AutoencoderKL.from_pretrained(tiny / "base" / "vae")
    vae.register_to_config(force_upcast=False)
    vae.save_pretrained(folder / "sdxl-vae-fp16-fix")
    (folder / "complete").write_text("tiny\n")
    return folder


# ---------------------------------------------------------------- the three ways to run a job

class DiffusersRunner:
    """Variants a and b: diffusers pipelines called directly, as other workers do."""

    def __init__(self, folder: Path, device: str, dtype, variant: str | None, worker_sdxl: bool):
        import torch
        from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

        self.device = device
        files = {"variant": variant} if variant else {}
        common = {"dtype": dtype, "use_safetensors": True, "add_watermarker": False, **files}
        vae = AutoencoderKL.from_pretrained(folder / "sdxl-vae-fp16-fix", dtype=dtype)
        self.base = StableDiffusionXLPipeline.from_pretrained(folder / "base", vae=vae, **common)
        self.worker_sdxl = worker_sdxl
        if worker_sdxl:
            # worker-sdxl loads the refiner with its own VAE and text_encoder_2 and offloads every
            # model to the CPU between uses; the fp16-fix VAE decodes without an upcast.
            refiner_vae = AutoencoderKL.from_pretrained(folder / "sdxl-vae-fp16-fix", dtype=dtype)
            self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder / "refiner", vae=refiner_vae,
                                                                            **common)
            for pipe in (self.base, self.refiner):
                if device.startswith("cuda"):
                    pipe.enable_model_cpu_offload()
                else:  # offloading needs an accelerator; the CPU smoke run keeps it resident
                    pipe.to(device)
        else:
            self.refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                folder / "refiner", vae=self.base.vae, text_encoder_2=self.base.text_encoder_2, **common)
            self.base.to(device)
            self.refiner.to(device)
        for pipe in (self.base, self.refiner):
            pipe.set_progress_bar_config(disable=True)
        self._torch = torch

    def job(self, spec: dict, refine: bool):
        from diffusers import DDIMScheduler

        from sdxl_worker.delivery.deliver import deliver
        from sdxl_worker.request.types import Request

        torch = self._torch
        prompts = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": GUIDANCE}
        self.base.scheduler = DDIMScheduler.from_config(self.base.scheduler.config)
        generator = torch.Generator("cpu").manual_seed(SEED)
        args = dict(prompts, width=spec["width"], height=spec["height"], num_inference_steps=spec["steps"],
                    generator=generator)
        with torch.inference_mode():
            if not refine:
                image = self.base(**args).images[0]
            else:
                latents = self.base(**args, output_type="latent").images
                refine_args = {"image": latents, "strength": STRENGTH, "num_inference_steps": spec["refiner_steps"],
                               "generator": generator}
                if self.worker_sdxl:  # its handler: the prompt alone, the refiner's own Euler scheduler
                    image = self.refiner(prompt=PROMPT, **refine_args).images[0]
                else:
                    self.refiner.scheduler = DDIMScheduler.from_config(self.refiner.scheduler.config)
                    image = self.refiner(**prompts, **refine_args).images[0]
        deliver([image], Request.from_input({"prompt": PROMPT}))  # the same PNG encoding the worker pays
        return image

    def close(self):
        del self.base, self.refiner


class WorkerRunner:
    """This worker: load_models, then every job through run_job, as the handler does."""

    def __init__(self, folder: Path, device: str, speedups=None, schedule: str = "job", compile_: bool = False):
        from sdxl_worker import config
        from sdxl_worker.config import ModelSettings
        from sdxl_worker.engine.models import load_models
        from sdxl_worker.engine.speed import apply_speedups
        from sdxl_worker.runtime.warmup import warm_up_if_asked
        from sdxl_worker.runtime.worker import Worker

        settings = ModelSettings(base=str(folder / "base"), refiner=str(folder / "refiner"),
                                 vae=str(folder / "sdxl-vae-fp16-fix"), device=device)
        self.schedule = schedule
        if speedups is None:  # the worker's own defaults, from the environment (COMPILE=1 for cc)
            self.models = load_models(settings, config.speed(dict(os.environ, **({"COMPILE": "1"} if compile_ else {}))))
            self.worker = Worker.build(self.models, config.load())
        else:
            unoptimised = {"CHANNELS_LAST": "0", "FUSED_QKV": "0", "COMPILE": "0", "HOST_TIMESTEPS": "0", "WARMUP": "0",
                           "ATTENTION": "sdpa", "VAE_UPCAST": "1"}
            self.models = load_models(settings, config.speed(unoptimised))
            apply_speedups(self.models, speedups)
            self.worker = Worker.build(self.models, config.load())
            warm_up_if_asked(self.worker, speedups)
        self.warmup_seconds = self.models.load_seconds.get("warm-up")
        self.compiled = compile_ or self.models.speedups.compile

    def job(self, spec: dict, refine: bool, scheduler: str = "DDIM"):
        from sdxl_worker.runtime.job import run_job

        inputs = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "guidance_scale": GUIDANCE, "seed": SEED,
                  "width": spec["width"], "height": spec["height"], "num_inference_steps": spec["steps"],
                  "scheduler": scheduler, "refine": "base_image_refiner" if refine else "no_refiner"}
        if refine:
            inputs.update(strength=STRENGTH, refiner_inference_steps=spec["refiner_steps"])
        if self.schedule == "lightning":  # lightning-4's steps, sampler and guidance
            inputs.update(num_inference_steps=4, scheduler="K_EULER_TRAILING", guidance_scale=0)
        result = list(run_job(self.worker, {"id": "bench", "input": inputs}))[-1]
        if "error" in result:
            raise RuntimeError(result["error"])
        return decode_data_url(result["images"][0])

    def close(self):
        del self.models, self.worker


def alone(name: str):
    """The unoptimised path plus one switch."""
    from sdxl_worker.engine.speed import Speedups

    if name == "compile":
        return Speedups(compile=True, warmup=True, warmup_sizes=WARMUP_SIZES)
    settings = {"channels_last": {"channels_last": True}, "fused_qkv": {"fused_qkv": True},
                "vae_no_upcast": {"vae_upcast": False}, "cudnn_attention": {"attention": "cudnn"},
                "host_timesteps": {"host_timesteps": True}}[name]
    return Speedups(**settings)


WARMUP_SIZES: tuple = ()  # set in main from the mode


# ---------------------------------------------------------------- measuring

def measure(runner, spec: dict, refine: bool, runs: int, on_gpu: bool) -> dict:
    import numpy as np
    import torch

    runner.job(spec, refine)  # warm-up: first-call costs are not the steady state
    synchronize(on_gpu)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(runs):
        synchronize(on_gpu)
        started = time.perf_counter()
        image = runner.job(spec, refine)
        synchronize(on_gpu)
        seconds.append(time.perf_counter() - started)
    row = {"seconds": statistics.median(seconds), "all_seconds": [round(s, 3) for s in seconds],
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
           "syncs": count_syncs(lambda: runner.job(spec, refine)) if on_gpu else None}
    return row, np.asarray(image.convert("RGB"), dtype=np.float64)


def count_syncs(job) -> int:
    """GPU->CPU synchronisations during one job, as torch's sync debug mode reports them."""
    import torch

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def count_flops(folder: Path, device: str, dtype, variant: str | None, spec: dict) -> dict:
    """FLOPs of one UNet call (CFG batch of 2) per model and of one VAE decode, counted by torch."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    files = {"variant": variant} if variant else {}
    height, width = spec["height"] // 8, spec["width"] // 8
    counted = {}
    with torch.inference_mode():
        for name, time_ids in (("base", 6), ("refiner", 5)):
            unet = UNet2DConditionModel.from_pretrained(folder / name, subfolder="unet", dtype=dtype, **files)
            unet.to(device)
            config = unet.config
            pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
            inputs = dict(
                sample=torch.randn(2, 4, height, width, device=device, dtype=dtype), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(2, 77, config.cross_attention_dim, device=device, dtype=dtype),
                added_cond_kwargs={"text_embeds": torch.randn(2, pooled, device=device, dtype=dtype),
                                   "time_ids": torch.randn(2, time_ids, device=device, dtype=dtype)})
            with FlopCounterMode(display=False) as counter:
                unet(**inputs)
            counted[f"{name} UNet call"] = counter.get_total_flops()
            del unet
            free_memory()
        vae = AutoencoderKL.from_pretrained(folder / "sdxl-vae-fp16-fix", dtype=dtype).to(device)
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.randn(1, 4, height, width, device=device, dtype=dtype))
        counted["VAE decode"] = counter.get_total_flops()
        del vae
        free_memory()
    steps, refiner_steps = spec["steps"], int(spec["refiner_steps"] * STRENGTH)
    counted["image, base only"] = steps * counted["base UNet call"] + counted["VAE decode"]
    counted["image, base + refiner"] = (steps * counted["base UNet call"] + refiner_steps * counted["refiner UNet call"]
                                        + counted["VAE decode"])
    # lightning-4: 4 steps without guidance, so half the batch of a guided call
    counted["image, lightning"] = 4 * counted["base UNet call"] / 2 + counted["VAE decode"]
    return counted


def matmul_peak(device: str, dtype) -> float:
    """Dense matmul FLOP/s reached on this device in this run: the ceiling we compare against."""
    import torch

    on_gpu = device.startswith("cuda")
    size, repeats = (8192, 20) if on_gpu else (1024, 3)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(5):
        synchronize(on_gpu)
        started = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(on_gpu)
        best = min(best, (time.perf_counter() - started) / repeats)
    return 2 * size**3 / best


def restart_warmup(folder: Path, device: str, mode: str, variant: str, size: int) -> float | None:
    """Warm-up seconds of a fresh process reusing the compile cache: what a restarted worker pays."""
    command = [sys.executable, str(Path(__file__).resolve()), "--restart-probe", variant, "--mode-name", mode,
               "--folder", str(folder), "--device", device, "--size", str(size)]
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    for line in done.stdout.splitlines():
        if line.startswith("RESTART_WARMUP "):
            return float(line.split()[1])
    print(done.stdout[-2000:], done.stderr[-4000:], file=sys.stderr)
    return None


def decode_data_url(url: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2]))).convert("RGB")


def synchronize(on_gpu: bool) -> None:
    if on_gpu:
        import torch

        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- results

def load_results(path: Path, machine: dict) -> dict:
    if path.exists():
        results = json.loads(path.read_text())
        if results.get("machine", {}).get("device_name") == machine["device_name"]:
            results["machine"] = machine
            return results
    return {"machine": machine, "rows": {}, "flops": {}, "compile": {}}


def table(results: dict) -> str:
    machine, rows, flops = results["machine"], results["rows"], results["flops"]
    peak = machine["matmul_peak"]
    lines = ["| variant | stage | median s | vs a | vs b | peak GiB | TFLOP/s | % of matmul peak | syncs/job "
             "| mean abs px diff |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = ["a", "b", "none", "c", "cc", "lightning"] + [f"+{name}" for name in ALONE]
    for name in order:
        for stage in ("base only", "base + refiner"):
            row = rows.get(f"{name}|{stage}")
            if not row:
                continue
            a, b = rows.get(f"a|{stage}"), rows.get(f"b|{stage}")
            achieved = flops.get("image, lightning" if name == "lightning" else f"image, {stage}", 0) / row["seconds"]
            lines.append("| " + " | ".join([
                f"{name}: {row['label']}", stage, f"{row['seconds']:.3f}",
                f"{a['seconds'] / row['seconds']:.2f}x" if a else "-",
                f"{b['seconds'] / row['seconds']:.2f}x" if b else "-",
                f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-",
                f"{achieved / 1e12:.3g}",
                f"{100 * achieved / peak:.1f}",
                str(row["syncs"]) if row["syncs"] is not None else "-",
                f"{row['pixel_diff']:.3f}" if row.get("pixel_diff") is not None else "-",
            ]) + " |")
    return "\n".join(lines)


def render(results: dict, mode: str, command: str) -> str:
    machine, flops, compiled = results["machine"], results["flops"], results["compile"]
    unit = 1e12
    parts = [f"Device: **{machine['device_name']}** (torch {machine['torch']}, diffusers {machine['diffusers']}, "
             f"{machine['dtype']}); {machine['spec']}. Commands: "
             + "; ".join(f"`{line}`" for line in results.get("commands", [command])) + ".",
             f"Matmul peak measured in this run: {machine['matmul_peak'] / unit:.2f} TFLOP/s "
             f"({machine['dtype']}, square matmul).",
             "FLOPs counted by torch.utils.flop_counter in this run: " + ", ".join(
                 f"{name} {value / unit:.4g} TFLOP" for name, value in flops.items())
             + (" (REFERENCE.md section 7 at 1024x1024: " + ", ".join(
                 f"{name} {value} TFLOP" for name, value in REFERENCE_TFLOP.items()) + ")" if mode == "gpu" else ""),
             "", table(results), ""]
    if mode == "smoke":
        parts.append("This run checks the script end to end, not speed: fp32 on a shared CPU, where offloading "
                     "and fp16 upcasting do not apply (a runs resident), and the GPU switches are forced on "
                     "through code paths built for CUDA. Ratios here are noise; the pixel column is meaningful.")
    if results.get("reference_std", 99) < 1:
        parts.append("Warning: the reference image is flat (random weights saturated); pixel differences "
                     "prove nothing here.")
    if results.get("sampler_syncs"):
        parts.append("Host syncs per base-only job on row c, by sampler: " + ", ".join(
            f"{name} {count}" for name, count in results["sampler_syncs"].items()) + ".")
    if compiled:
        parts.append("Compilation, paid at start-up by the warm-up jobs and never by a job: " + "; ".join(
            f"{name} {value:.1f} s" for name, value in compiled.items() if value is not None) + ".")
    return "\n".join(parts)


def write_results(results: dict, mode: str, command: str, path: Path = RESULTS) -> None:
    heading = {"gpu": "## GPU run",
               "smoke": "## CPU smoke run, not GPU figures; GPU figures pending (no GPU lent)"}[mode]
    text = path.read_text() if path.exists() else ""
    sections = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line
            sections[current] = []
        elif current:
            sections[current].append(line)
    sections[heading] = [""] + render(results, mode, command).splitlines() + [""]
    if mode == "smoke" and "## GPU run" not in sections:
        sections["## GPU run"] = ["", "Pending: no GPU was lent to the session that wrote this benchmark. Run "
                                  "`python bench/gpu.py` on one (see the README, Performance / GPU).", ""]
    body = ["# GPU benchmark results", "",
            "Written by `bench/gpu.py`; what each variant and column means is in its docstring.", ""]
    for name in ("## GPU run", "## CPU smoke run, not GPU figures; GPU figures pending (no GPU lent)"):
        if name in sections:
            body += [name] + sections[name]
    path.write_text("\n".join(body).rstrip() + "\n")


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="the tiny model, small size, on the CPU")
    parser.add_argument("--headline", action="store_true",
                        help="only a, b, c, cc and lightning, 3 runs each: the rows of the one GPU command")
    parser.add_argument("--runs", type=int, help="timed runs per variant (default 5; 3 with --headline; 1 in the smoke run)")
    parser.add_argument("--only", help="comma-separated variants: a,b,none,c,cc,lightning,alone or +switch "
                                       "(default: all)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile variant (smoke test)")
    parser.add_argument("--size", type=int, help="width and height (default 1024; 256 in the smoke run)")
    parser.add_argument("--steps", type=int, help="base steps (default 30; 3 in the smoke run)")
    parser.add_argument("--refiner-steps", type=int, help="refiner steps before strength 0.3 (default 50; 10 in "
                                                           "the smoke run)")
    parser.add_argument("--cache", type=Path, default=CACHE, help="models, compile cache, results (bench/.cache)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown to write (bench/RESULTS.md)")
    parser.add_argument("--restart-probe", help=argparse.SUPPRESS)  # c or +compile: load, warm up, report
    parser.add_argument("--mode-name", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    mode = "smoke" if args.cpu_smoke or args.mode_name == "smoke" else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or use --cpu-smoke to check the script on the CPU")
    device = "cpu" if mode == "smoke" else "cuda"
    on_gpu = device == "cuda"
    dtype = torch.float16 if on_gpu else torch.float32
    variant = "fp16" if on_gpu else None
    size = args.size or (256 if mode == "smoke" else 1024)
    spec = {"width": size, "height": size, "steps": args.steps or (3 if mode == "smoke" else 30),
            "refiner_steps": args.refiner_steps or (10 if mode == "smoke" else REFINER_STEPS)}
    runs = args.runs or (1 if mode == "smoke" else 3 if args.headline else 5)
    global WARMUP_SIZES
    from sdxl_worker.engine.speed import parse_sizes

    # Two shapes, as the worker's default: the second (wider, two images) makes kernels shape-generic.
    WARMUP_SIZES = parse_sizes(f"{size}x{size}:1,{size * 5 // 4 // 8 * 8}x{max(256, size * 3 // 4 // 8 * 8)}:2")
    if mode == "smoke":  # the worker's own default warm-up sizes are for 1024x1024 models
        os.environ.setdefault("WARMUP_SIZES", ",".join(f"{w}x{h}:{n}" for w, h, n in WARMUP_SIZES))
    cache = args.cache
    if not args.restart_probe:
        # A fresh compile cache per run, so the first compile is a cold one; children reuse it.
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-", dir=cache))

    if args.restart_probe:
        if args.restart_probe == "cc":
            runner = WorkerRunner(Path(args.folder), args.device, compile_=True)
        else:
            runner = WorkerRunner(Path(args.folder), args.device, None if args.restart_probe == "c" else alone("compile"))
        print(f"RESTART_WARMUP {runner.warmup_seconds:.3f}", flush=True)
        return 0

    import diffusers

    if mode == "smoke":
        folder = tiny_models(cache / "models-smoke-tiny")
    else:
        folder = save_models(load_configs(reduced=False), cache / f"models-{mode}-{device}", device, dtype, variant)
    device_name = torch.cuda.get_device_name() if on_gpu else f"CPU ({platform.processor() or platform.machine()}, " \
                                                               f"{torch.get_num_threads()} threads)"
    machine = {"device_name": device_name, "torch": torch.__version__, "diffusers": diffusers.__version__,
               "dtype": str(dtype).replace("torch.", ""), "matmul_peak": matmul_peak(device, dtype),
               "spec": f"{spec['width']}x{spec['height']}, {spec['steps']} steps, batch 1, CFG {GUIDANCE}, DDIM, "
                       f"refiner at strength {STRENGTH} of {spec['refiner_steps']} steps, median of {runs} runs "
                       f"after 1 warm-up"
                       + (", the tiny model" if mode == "smoke" else ", SDXL base 1.0 / refiner 1.0 shapes")}
    results_path = cache / f"results-{mode}.json"
    results = load_results(results_path, machine)
    results["flops"] = count_flops(folder, device, dtype, variant, spec)
    command = " ".join(["python bench/gpu.py"] + list(sys.argv[1:] if argv is None else argv))
    results.setdefault("commands", [])
    if command not in results["commands"]:
        results["commands"].append(command)

    default = "a,b,c,cc,lightning" if args.headline else "a,b,none,c,cc,lightning,alone"
    wanted = set((args.only or default).split(","))
    if args.no_compile:
        wanted.discard("cc")
    plan = []  # (name, label, make_runner, stages)
    both = ("base only", "base + refiner")
    from sdxl_worker.engine.speed import Speedups

    if "none" in wanted or (wanted - {"a", "b"} and not args.headline):  # the pixel reference
        plan.append(("none", "this worker, switches off", lambda: WorkerRunner(folder, device, Speedups.none()),
                     both))
    if "a" in wanted:
        plan.append(("a", "worker-sdxl's set-up: CPU offload, own refiner parts, SDPA for xformers",
                     lambda: DiffusersRunner(folder, device, dtype, variant, worker_sdxl=True), both))
    if "b" in wanted:
        plan.append(("b", "diffusers: SDPA, resident",
                     lambda: DiffusersRunner(folder, device, dtype, variant, worker_sdxl=False), both))
    if "c" in wanted:
        plan.append(("c", "this worker, defaults", lambda: WorkerRunner(folder, device), both))
    if "cc" in wanted:
        plan.append(("cc", "this worker, defaults + COMPILE=1", lambda: WorkerRunner(folder, device, compile_=True),
                     both))
    if "lightning" in wanted:
        plan.append(("lightning", "this worker, lightning-4's schedule",
                     lambda: WorkerRunner(folder, device, schedule="lightning"), ("base only",)))
    for name in ALONE:
        if ("alone" in wanted or f"+{name}" in wanted) and not (name == "compile" and args.no_compile):
            plan.append((f"+{name}", "switches off but this", lambda name=name: WorkerRunner(
                folder, device, alone(name)), ("base only",)))

    reference, compiled_before = {}, False
    for name, label, make, stages in plan:
        print(f"== {name}: {label}", flush=True)
        runner = make()
        warmup = getattr(runner, "warmup_seconds", None)
        if warmup is not None:
            cold = "in-process, compiled before" if compiled_before else "cold cache"
            results["compile"][f"{name} warm-up ({cold})"] = warmup
            compiled_before = compiled_before or runner.compiled
            if runner.compiled and cold == "cold cache" and not args.headline:  # a second process: minutes
                results["compile"][f"{name} warm-up in a restarted process (cache kept)"] = restart_warmup(
                    folder, device, mode, name, size)
        for stage in stages:
            row, image = measure(runner, spec, stage == "base + refiner", runs, on_gpu)
            if name == "none":
                reference[stage] = image
                # Random weights can saturate to a flat image, where equal pixels would prove nothing.
                results["reference_std"] = max(results.get("reference_std", 0.0), float(image.std()))
            if stage in reference:
                row["pixel_diff"] = float(abs(image - reference[stage]).mean())
            row["label"] = label
            results["rows"][f"{name}|{stage}"] = row
            print(f"   {stage}: {row['seconds']:.3f} s (runs {row['all_seconds']})", flush=True)
        if name == "c" and on_gpu:  # host syncs per job, one sampler of each family
            results["sampler_syncs"] = {
                sampler: count_syncs(lambda sampler=sampler, runner=runner: runner.job(spec, False, sampler))
                for sampler in SYNC_SAMPLERS}
        runner.close()
        del runner
        free_memory()
        import torch._dynamo

        torch._dynamo.reset()
        results_path.write_text(json.dumps(results, indent=1))
        write_results(results, mode, command, args.results)
    print(render(results, mode, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
