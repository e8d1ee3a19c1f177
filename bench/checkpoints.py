"""What a choice of checkpoint and the fast presets cost, on the tiny model.

    python bench/checkpoints.py [--rounds 3] [--size 512]

Table 1, switching: a job's ``model`` switching to a checkpoint not loaded (MODELS_KEPT=1: the
other is dropped first), to one kept loaded (MODELS_KEPT=2), and the predecessor's way, a
worker restarted with the other BASE_MODEL (the whole load_models). Table 2, the presets: steps and
UNet passes per job (images through the UNet, counted with a forward hook: classifier-free
guidance doubles them) and the job's
time, against the default job (25 base steps at guidance 7.5, then the refiner's 15). On CPU the
tiny model's time is mostly outside the UNet, so the passes are the figure that carries to a GPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("BASE_MODEL", "tiny")

import torch  # noqa: E402

from sdxl_worker import config  # noqa: E402
from sdxl_worker.config import ModelSettings  # noqa: E402
from sdxl_worker.engine.models import load_models  # noqa: E402
from sdxl_worker.engine.tiny import ensure_tiny_model  # noqa: E402
from sdxl_worker.request.presets import PRESETS  # noqa: E402
from sdxl_worker.runtime.job import run_job  # noqa: E402
from sdxl_worker.runtime.worker import Worker  # noqa: E402
from sdxl_worker.testing.tiny_presets import write_tiny_presets  # noqa: E402


def other_checkpoint(where: Path) -> Path:
    """The tiny base with its UNet changed: a second checkpoint of the same shape."""
    from diffusers import UNet2DConditionModel

    folder = where / "other"
    shutil.copytree(ensure_tiny_model() / "base", folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(1.01)
    unet.save_pretrained(folder / "unet")
    return folder


def job(models, size: int, **inputs) -> dict:
    inputs = {"prompt": "a lighthouse at dusk", "width": size, "height": size, "seed": 1, **inputs}
    out = list(run_job(Worker.build(models, config.load()), {"id": "bench", "input": inputs}))[-1]
    assert "images" in out, out
    return out


def switching(settings: ModelSettings, rounds: int, size: int) -> list[tuple[str, float]]:
    cold, kept, restart = [], [], []
    single = load_models(replace(settings, kept=1))
    double = load_models(replace(settings, kept=2))
    job(double, size, model="other", refine="no_refiner")  # both loaded from here on
    for index in range(rounds):
        name = "other" if index % 2 == 0 else "first"
        cold.append(job(single, size, model=name, refine="no_refiner")["timings"]["model_switch"])
        kept.append(job(double, size, model=name if index % 2 else "first", refine="no_refiner")["timings"]
                    .get("model_switch", 0))
        started = time.perf_counter()
        load_models(replace(settings, base=dict(settings.choices)[name], choices=settings.choices[:1]))
        restart.append((time.perf_counter() - started) * 1000)
    return [("restart the worker with the other BASE_MODEL (before)", statistics.median(restart)),
            ("switch, MODELS_KEPT=1 (load, the other dropped)", statistics.median(cold)),
            ("switch, MODELS_KEPT=2 (both kept)", statistics.median(kept))]


def presets(models, rounds: int, size: int) -> list[tuple[str, int, float]]:
    calls = []
    def count(module, args, output):
        calls.append(args[0].shape[0])  # images in the call: 2 per image under classifier-free guidance

    hooks = [unet.register_forward_hook(count) for unet in (models.base.unet, models.refiner.unet)]
    rows = []
    for name in [None, *PRESETS]:
        inputs = {"preset": name} if name else {}
        if name:
            from sdxl_worker.engine.preset_weights import unet_for

            unet_for(models, name)[0].register_forward_hook(count)
        seconds = []
        for _ in range(rounds):
            calls.clear()
            started = time.perf_counter()
            job(models, size, **inputs)
            seconds.append(time.perf_counter() - started)
        rows.append((name or "default (25 base steps, guidance 7.5, refiner 15)", len(calls), sum(calls),
                     statistics.median(seconds)))
    for hook in hooks:
        hook.remove()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as where:
        hub = write_tiny_presets(Path(where) / "hub")  # the presets' weights, as the builder bakes them
        settings = ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu", hub_cache=hub,
                                 choices=(("first", "tiny"), ("other", str(other_checkpoint(Path(where))))))
        rows = switching(settings, args.rounds, args.size)
        base_ms = rows[0][1]
        print(f"\nSwitching checkpoints, tiny model, median of {args.rounds} (ms)\n")
        print(f"| {'way':55} | {'ms':>8} | {'vs restart':>10} |")
        print(f"| {'-' * 55} | {'-' * 8} | {'-' * 10} |")
        for label, ms in rows:
            print(f"| {label:55} | {ms:8.0f} | {ms / base_ms:9.2f}x |")
        table = presets(load_models(replace(settings, choices=settings.choices[:1])), args.rounds, args.size)
        default_passes, default_s = table[0][2], table[0][3]
        print(f"\nPresets, tiny model, {args.size}x{args.size} (turbo-1 too), median of {args.rounds}\n")
        print(f"| {'job':50} | {'steps':>5} | {'UNet passes':>11} | {'vs default':>10} | {'s':>6} | {'time vs default':>15} |")
        print(f"| {'-' * 50} | {'-' * 5} | {'-' * 11} | {'-' * 10} | {'-' * 6} | {'-' * 15} |")
        for label, steps, passes, seconds in table:
            print(f"| {label:50} | {steps:5d} | {passes:11d} | {passes / default_passes:9.3f}x | {seconds:6.2f} | "
                  f"{seconds / default_s:14.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
