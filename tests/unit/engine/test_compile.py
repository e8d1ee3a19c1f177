"""COMPILE=1: real jobs never recompile, and a compiler that fails at warm-up is undone, not fatal.

Compiled with dynamo's "eager" backend: the same tracing, guards and recompiles as inductor's,
without the minutes of C++ code generation; recompiles counted by dynamo's own counters."""

from __future__ import annotations

import logging

import numpy as np

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.models import load_models
from sdxl_worker.engine.speed import Speedups, apply_speedups
from sdxl_worker.runtime.job import run_job
from sdxl_worker.runtime.warmup import warm_up_if_asked
from sdxl_worker.testing.tiny_loras import kohya_lora, tiny_lora
from tests.helpers import decode, worker_with

JOB = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 3, "refine": "no_refiner"}
SIZES = ((256, 256, 1), (320, 256, 2))


def compiled_worker(backend="eager", fused_qkv=False, lora_dir=None, **settings):
    """A worker on compiled tiny models, warmed up; its LoRAs from ``lora_dir``."""
    models = load_models(ModelSettings(**{"base": "tiny", "refiner": "tiny", "vae": None, "device": "cpu", **settings}))
    speedups = Speedups(compile=True, compile_backend=backend, warmup=True, warmup_sizes=SIZES, fused_qkv=fused_qkv)
    models.speedups = apply_speedups(models, speedups)
    worker = worker_with(models, **({"LORA_DIR": str(lora_dir)} if lora_dir else {}))
    warm_up_if_asked(worker)
    return worker


def pixels(worker, **inputs) -> np.ndarray:
    final = list(run_job(worker, {"id": "compiled", "input": {**JOB, **inputs}}))[-1]
    assert "images" in final, final
    return np.asarray(decode(final["images"][0]), dtype=np.int16)


def test_loras_their_scales_long_prompts_and_the_refiner_compile_nothing_after_the_warm_up(tmp_path, models):
    import torch._dynamo
    from torch._dynamo.utils import counters

    (tmp_path / "style.safetensors").write_bytes(tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1))
    (tmp_path / "kohya.safetensors").write_bytes(kohya_lora(seed=2, full=True))
    torch._dynamo.reset()
    compiled = compiled_worker(lora_dir=tmp_path)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # the warm-up compiled the blocks
    plain = pixels(compiled)
    with_lora = pixels(compiled, loras=[{"path": "style.safetensors", "scale": 0.7}])
    pixels(compiled, loras=[{"path": "style.safetensors", "scale": 0.3}])
    pixels(compiled, loras=[{"path": "kohya.safetensors", "scale": 1.2}, {"path": "style.safetensors"}])
    assert (pixels(compiled) == plain).all()  # the baked LoRA weights are restored exactly
    pixels(compiled, prompt=" ".join(["a red fox in the snow"] * 30))  # about 180 tokens
    pixels(compiled, refine="base_image_refiner", refiner_inference_steps=4, strength=0.5)
    assert counters["stats"]["unique_graphs"] == graphs, "a real job recompiled"
    # Baked into the weights, the LoRA gives what its layers give on the uncompiled worker.
    eager = pixels(worker_with(models, LORA_DIR=str(tmp_path)), loras=[{"path": "style.safetensors", "scale": 0.7}])
    assert np.abs(with_lora - eager).mean() < 1.0 and np.abs(with_lora - plain).mean() > 1.0
    torch._dynamo.reset()


def test_a_compiler_that_fails_at_the_warm_up_leaves_the_worker_uncompiled_and_serving(caplog):
    import torch._dynamo

    def broken_backend(graph, example_inputs):
        raise RuntimeError("this GPU is not supported by the compiler")

    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING):
        worker = compiled_worker(backend=broken_backend)
    models = worker.models
    assert not models.speedups.compile and "Compiling failed during the warm-up" in caplog.text
    assert not any(getattr(module, "_compiled_call_impl", None) is not None for module in models.base.unet.modules())
    assert pixels(worker).shape == (256, 256, 3)
    torch._dynamo.reset()


def test_a_baked_lora_on_cross_attention_reaches_an_ip_adapter_job_with_fused_projections(tmp_path):
    """FUSED_QKV (the CUDA default) puts k/v of cross-attention in one matrix, but the IP-Adapter's
    processor reads the unfused ones: a baked LoRA must change what each reads."""
    import torch._dynamo

    from sdxl_worker.testing.tiny_guides import write_tiny_ip_adapter
    from tests.helpers import photo, png_data_url

    (tmp_path / "kv.safetensors").write_bytes(tiny_lora("base", ["attn2.to_k", "attn2.to_v"], seed=5))
    torch._dynamo.reset()
    compiled = compiled_worker(fused_qkv=True, lora_dir=tmp_path, ip_adapter=str(write_tiny_ip_adapter(tmp_path / "ip")))
    reference = {"image": png_data_url(photo(64, 64)), "scale": 0.5}
    for job in ({}, {"ip_adapter": reference}):
        without = pixels(compiled, **job)
        with_lora = pixels(compiled, loras=[{"path": "kv.safetensors", "scale": 2.0}], **job)
        assert np.abs(with_lora - without).mean() > 0.5, f"the LoRA changed nothing in {job or 'a plain job'}"
        assert (pixels(compiled, **job) == without).all()
    torch._dynamo.reset()


def test_a_bake_that_fails_part_way_leaves_the_weights_as_they_were(tmp_path, monkeypatch):
    """Out of memory in the middle of baking: the job fails in one sentence, and every row already
    changed is put back, so the next job is the job before."""
    import torch
    import torch._dynamo

    from sdxl_worker.engine import lora_layers

    (tmp_path / "style.safetensors").write_bytes(tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1))
    torch._dynamo.reset()
    compiled = compiled_worker(lora_dir=tmp_path)
    before = pixels(compiled)
    real, calls = lora_layers._weights_in_use, []

    def out_of_memory_on_the_fifth(*args):
        calls.append(1)
        if len(calls) == 5:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real(*args)

    monkeypatch.setattr(lora_layers, "_weights_in_use", out_of_memory_on_the_fifth)
    failed = list(run_job(compiled, {"id": "oom", "input": {**JOB, "loras": [{"path": "style.safetensors"}]}}))[-1]
    assert "out of memory" in failed["error"].lower()
    assert (pixels(compiled) == before).all()
    torch._dynamo.reset()
