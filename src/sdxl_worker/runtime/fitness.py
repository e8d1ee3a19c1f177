"""Fitness checks for RunPod (runpod >= 1.9): what a broken host would fail, checked before any job.

handler.py registers ``checks(worker)`` with ``runpod.serverless.register_fitness_check``; runpod
runs them on RunPod only, after start-up and before it takes the first job, and a check that
raises exits the worker with code 1, so the platform replaces it instead of failing jobs on it.
Each raises ``RuntimeError`` with one sentence.
"""

from __future__ import annotations

from typing import Callable

from sdxl_worker.runtime import selfcheck


def checks(worker) -> list[Callable[[], None]]:
    """The worker's checks, in order: models on their device, every scheduler, the storage endpoint."""

    def models_on_their_device() -> None:
        models_on_device(worker.models)

    def every_scheduler_imports() -> None:
        try:
            selfcheck.check_scheduler_classes()
        except selfcheck.SelfCheckFailed as error:
            raise RuntimeError(str(error)) from None

    def storage_answers() -> None:
        if worker.storage is not None:
            worker.storage.check()

    return [models_on_their_device, every_scheduler_imports, storage_answers]


def models_on_device(models) -> None:
    """Every loaded model's weights are on the worker's device (unless CPU offload keeps them on the
    host), and the device computes: a small matmul on it gives the right answer."""
    import torch

    device = torch.device(models.device)
    offloaded = bool(getattr(models.speedups, "cpu_offload", False)) or _offloaded(models.base)
    pipelines = {"base": models.base, "refiner": models.refiner}
    for stage, pipe in pipelines.items():
        if pipe is None or offloaded:
            continue
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            module = getattr(pipe, name, None)
            if module is None:
                continue
            where = next(module.parameters()).device
            if where.type != device.type:
                raise RuntimeError(f"The {stage} {name} is on {where}, not on {device}: the host's device is not usable.")
    numbers = torch.arange(16, dtype=torch.float32, device=device).reshape(4, 4)
    if (numbers @ numbers).sum().item() != 3920.0:  # an exact sum in float32
        raise RuntimeError(f"A 4x4 matmul on {device} gave a wrong answer: the device is faulty.")


def _offloaded(pipe) -> bool:
    return bool(getattr(pipe, "_offload_gpu_id", None) is not None or getattr(pipe, "hf_device_map", None))
