"""src/sdxl_worker/engine/speed.py: which switches ``auto`` turns on where, and that each one keeps the image."""

import numpy as np
import pytest
import torch

from sdxl_worker import config
from sdxl_worker.config import ConfigError
from sdxl_worker.engine.speed import FP16_FIX_VAE, Speedups, apply_speedups, keep_timesteps_on_host, parse_sizes
from sdxl_worker.runtime.warmup import warm_up_if_asked
from tests.helpers import decode, worker_with

JOB = {"prompt": "a red fox", "negative_prompt": "blurry", "width": 256, "height": 256, "num_inference_steps": 3,
       "seed": 7, "refine": "expert_ensemble_refiner", "high_noise_frac": 0.7}


def fresh_models():
    """Speed-ups change models in place: each switch gets its own copy, not the shared fixture."""
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models

    return load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))


def pixels(models, **overrides) -> np.ndarray:
    from sdxl_worker.runtime.job import run_job

    result = list(run_job(worker_with(models), {"id": "speed", "input": dict(JOB, **overrides)}))[-1]
    assert "error" not in result, result
    return np.asarray(decode(result["images"][0]), dtype=np.float64)


def resolved(device: str, vae: str | None, env: dict) -> Speedups:
    """The switches the speed variables in ``env`` give on ``device``, ``auto`` resolved, as loading resolves them."""
    return Speedups.resolve(config.speed(env), device, vae)


@pytest.fixture(scope="module")
def unoptimised():
    return pixels(fresh_models())


def test_auto_leaves_a_cpu_run_as_diffusers_runs_it():
    speedups = resolved("cpu", None, {})
    assert (speedups.channels_last, speedups.fused_qkv, speedups.compile, speedups.host_timesteps,
            speedups.warmup, speedups.vae_upcast, speedups.attention) == (False, False, False, False, False, None,
                                                                          "sdpa")


def test_auto_on_cuda_turns_on_the_fast_path_but_not_the_compiler():
    speedups = resolved("cuda", f"madebyollin/{FP16_FIX_VAE}", {})
    assert speedups.channels_last and speedups.fused_qkv and speedups.host_timesteps
    assert speedups.vae_upcast is False
    # Compiling costs minutes of cold start: opt-in, and then warmed up before the first job.
    assert not speedups.compile and not speedups.warmup
    compiled = resolved("cuda", None, {"COMPILE": "1"})
    assert compiled.compile and compiled.warmup
    # Another VAE keeps its own upcast setting.
    assert resolved("cuda", "some/vae", {}).vae_upcast is None


def test_every_switch_can_be_set_by_env():
    env = {"CHANNELS_LAST": "0", "FUSED_QKV": "0", "COMPILE": "0", "HOST_TIMESTEPS": "0", "WARMUP": "0",
           "VAE_UPCAST": "1", "ATTENTION": "classic", "COMPILE_MODE": "max-autotune-no-cudagraphs",
           "COMPILE_CACHE_DIR": "/tmp/kernels", "WARMUP_SIZES": "512x768:2"}
    speedups = resolved("cuda", f"madebyollin/{FP16_FIX_VAE}", env)
    assert speedups == Speedups(vae_upcast=True, attention="classic", compile_mode="max-autotune-no-cudagraphs",
                                compile_cache_dir="/tmp/kernels", warmup_sizes=((512, 768, 2),))
    assert resolved("cpu", None, {"TORCHINDUCTOR_CACHE_DIR": "/x", "COMPILE_CACHE_DIR": "/y"}) \
        .compile_cache_dir == "/x"


@pytest.mark.parametrize("name,value", [("COMPILE", "fast"), ("ATTENTION", "flash3")])
def test_a_wrong_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        resolved("cuda", None, {name: value})


def test_warmup_sizes():
    assert parse_sizes("1024x1024:1, 768X1344:2,512x512") == ((1024, 1024, 1), (768, 1344, 2), (512, 512, 1))


def _uses_channels_last(models):
    weight = models.base.unet.conv_in.weight
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _fused(models):
    names = {type(p).__name__ for p in models.refiner.unet.attn_processors.values()}
    return names == {"FusedAttnProcessor2_0"}


def _classic(models):
    return {type(p).__name__ for p in models.base.unet.attn_processors.values()} == {"AttnProcessor"}


SWITCHES = {
    "channels_last": (Speedups(channels_last=True), _uses_channels_last),
    "fused_qkv": (Speedups(fused_qkv=True), _fused),
    "vae_upcast": (Speedups(vae_upcast=True), lambda models: models.base.vae.config.force_upcast is True),
    "classic_attention": (Speedups(attention="classic"), _classic),
    "host_timesteps": (Speedups(host_timesteps=True), lambda models: models.base.unet._forward_pre_hooks),
    "warmup": (Speedups(warmup=True, warmup_sizes=((256, 256, 1),)),
               lambda models: models.load_seconds["warm-up"] > 0),
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_keeps_the_image(switch, unoptimised):
    speedups, took_effect = SWITCHES[switch]
    models = fresh_models()
    apply_speedups(models, speedups)
    warm_up_if_asked(worker_with(models), speedups)  # what start-up does after loading
    assert took_effect(models)
    # Reordered float sums may flip a rounding here and there; never a different image.
    assert np.abs(pixels(models) - unoptimised).mean() < 0.05


def test_host_timesteps_ignore_the_device_the_pipeline_asks_for():
    models = fresh_models()
    apply_speedups(models, Speedups(host_timesteps=True))
    from sdxl_worker.engine.schedulers import build_scheduler

    for name in ("DDIM", "K_EULER", "DPMSolverMultistep"):
        scheduler = keep_timesteps_on_host(models.base, build_scheduler(name, models.scheduler_configs["base"]))
        scheduler.set_timesteps(10, device="meta")  # the pipeline passes the GPU here
        assert scheduler.timesteps.device.type == "cpu"
    # Without the hook the scheduler is left alone.
    plain = fresh_models()
    scheduler = keep_timesteps_on_host(plain.base, build_scheduler("DDIM", plain.scheduler_configs["base"]))
    scheduler.set_timesteps(10, device="meta")
    assert scheduler.timesteps.device.type == "meta"


def test_scheduler_noise_through_pinned_memory_draws_the_same_numbers():
    """On CUDA the copy is asynchronous; the numbers are the CPU generators' own, so the image is the same."""
    import torch
    from diffusers.schedulers import scheduling_euler_ancestral_discrete as euler_a
    from diffusers.utils.torch_utils import randn_tensor

    from sdxl_worker.engine import speed

    speed._scheduler_noise_without_sync()
    speed._scheduler_noise_without_sync()  # once is enough: not wrapped twice
    assert euler_a.randn_tensor._pinned and euler_a.randn_tensor.__wrapped__ is randn_tensor
    generators = lambda: [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]  # noqa: E731
    ours = euler_a.randn_tensor((2, 4, 8, 8), generator=generators(), device="cpu", dtype=torch.float32)
    assert torch.equal(ours, randn_tensor((2, 4, 8, 8), generator=generators(), device="cpu", dtype=torch.float32))
