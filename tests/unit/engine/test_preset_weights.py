"""The fast presets' weights (engine/preset_weights.py): found only in the image's or RunPod's model
cache, never downloaded. What a preset job draws, and that the plain UNet is untouched after it, is in
tests/scenarios/test_presets.py."""

from pathlib import Path

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.preset_weights import available, weights_of
from sdxl_worker.request.presets import PRESETS


def _bake(cache: Path, repo: str, files: list[str], refs_main: bool = True) -> Path:
    """A hub cache entry as huggingface_hub writes it: models--owner--name/snapshots/<hash>/..."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "abc123"
    for name in files:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"weights")
    if refs_main:
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text("abc123\n")
    return snapshot


def test_no_preset_is_available_with_empty_caches(tmp_path):
    settings = ModelSettings(hub_cache=tmp_path / "hub", runpod_cache=tmp_path / "runpod")
    assert available(settings) == ()
    assert weights_of(PRESETS["lightning-4"], settings) is None


def test_a_lora_preset_is_its_file_and_a_unet_preset_its_unet_folder(tmp_path):
    hub = tmp_path / "hub"
    lightning = _bake(hub, "ByteDance/SDXL-Lightning", ["sdxl_lightning_4step_lora.safetensors"])
    turbo = _bake(hub, "stabilityai/sdxl-turbo", ["unet/diffusion_pytorch_model.fp16.safetensors"])
    settings = ModelSettings(hub_cache=hub, runpod_cache=tmp_path / "runpod")
    assert weights_of(PRESETS["lightning-4"], settings) == lightning / "sdxl_lightning_4step_lora.safetensors"
    assert weights_of(PRESETS["turbo-1"], settings) == turbo / "unet"
    assert available(settings) == ("lightning-4", "turbo-1")  # lightning-8's file is not in the same snapshot


def test_runpods_model_cache_is_looked_at_first(tmp_path):
    runpod = _bake(tmp_path / "runpod", "ByteDance/Hyper-SD", ["Hyper-SDXL-8steps-lora.safetensors"])
    _bake(tmp_path / "hub", "ByteDance/Hyper-SD", ["Hyper-SDXL-8steps-lora.safetensors"])
    settings = ModelSettings(hub_cache=tmp_path / "hub", runpod_cache=tmp_path / "runpod")
    assert weights_of(PRESETS["hyper-8"], settings) == runpod / "Hyper-SDXL-8steps-lora.safetensors"
