"""src/sdxl_worker/engine/models.py: one copy of each weight, loaded from local files (as baked), and a start-up log
that says what was loaded."""

import logging
import shutil
from pathlib import Path

import pytest

from sdxl_worker import config
from sdxl_worker.engine.models import load_models, loaded_bytes, model_bytes, weight_files
from sdxl_worker.engine.tiny import ensure_tiny_model


def test_refiner_and_img2img_share_the_base_weights_and_each_byte_counts_once(models):
    assert models.refiner.text_encoder_2 is models.base.text_encoder_2
    assert models.refiner.vae is models.base.vae
    assert models.img2img.unet is models.base.unet
    distinct = [models.base.vae, models.base.text_encoder, models.base.text_encoder_2, models.base.unet]
    distinct.append(models.refiner.unet)
    assert loaded_bytes(models) == sum(model_bytes(part) for part in distinct)
    # What five separately loaded pipelines would hold, less everything they share.
    every_pipeline = sum(model_bytes(part) for pipe in (models.base, models.img2img, models.inpaint,
                                                       models.refiner, models.refiner_inpaint)
                         for part in pipe.components.values() if hasattr(part, "parameters"))
    base_parts = model_bytes(models.base.vae) + model_bytes(models.base.text_encoder) + model_bytes(
        models.base.text_encoder_2) + model_bytes(models.base.unet)
    # img2img and inpaint repeat the base; the refiner's inpaint pipeline repeats the refiner's UNet;
    # both refiner pipelines repeat the base's VAE and text_encoder_2.
    shared = 2 * base_parts + model_bytes(models.refiner.unet) + 2 * (
        model_bytes(models.base.vae) + model_bytes(models.base.text_encoder_2))
    assert loaded_bytes(models) == every_pipeline - shared > 0


def _fake_hub_cache(root: Path, repo: str, source: Path) -> Path:
    """A Hugging Face cache holding `source` as repo's main snapshot, as the builder leaves it."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / "0123abcd"
    shutil.copytree(source, snapshot)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_baked_hub_ids_load_offline_from_the_cache_and_the_log_names_every_component(tmp_path, caplog):
    tiny = ensure_tiny_model()
    _fake_hub_cache(tmp_path, "example/sdxl-base", tiny / "base")
    refiner = _fake_hub_cache(tmp_path, "example/sdxl-refiner", tiny / "refiner")
    for borrowed in ("text_encoder_2", "vae"):  # the builder does not bake what the base lends
        shutil.rmtree(refiner / borrowed)
    settings = config.models({"BASE_MODEL": "example/sdxl-base", "REFINER_MODEL": "example/sdxl-refiner",
                              "VAE_MODEL": "base", "DEVICE": "cpu", "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})

    with caplog.at_level(logging.INFO, logger="sdxl_worker.engine.models"):
        loaded = load_models(settings)

    assert loaded.refiner.text_encoder_2 is loaded.base.text_encoder_2
    log = "\n".join(record.getMessage() for record in caplog.records)
    for component in ("vae", "text_encoder", "text_encoder_2", "unet", "refiner unet", "total"):
        assert f"  {component} " in log, component
    assert f"{loaded_bytes(loaded) / 1e6:.1f} MB" in log  # the total, shared parts counted once


def test_an_unknown_dtype_is_refused_by_name():
    from sdxl_worker import config

    with pytest.raises(config.ConfigError, match="DTYPE='float8'"):
        config.models({"DTYPE": "float8"})


def _checkpoint(root: Path, parts: dict) -> Path:
    for path, size in parts.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"\0" * size)
    return root


def test_the_weight_files_are_exactly_those_the_loader_reads_in_its_order(tmp_path):
    base = _checkpoint(
        tmp_path / "base",
        {
            "unet/diffusion_pytorch_model.fp16.safetensors": 300,
            "unet/diffusion_pytorch_model.safetensors": 600,
            "text_encoder/model.fp16.safetensors": 20,
            "text_encoder_2/model.fp16.safetensors": 40,
            "vae/diffusion_pytorch_model.fp16.safetensors": 10,
        },
    )
    refiner = _checkpoint(
        tmp_path / "refiner",
        {
            "unet/diffusion_pytorch_model.fp16.safetensors": 200,
            "text_encoder_2/model.fp16.safetensors": 40,  # the base's is used
            "vae/diffusion_pytorch_model.fp16.safetensors": 10,
        },
    )
    vae = _checkpoint(tmp_path / "vae", {"diffusion_pytorch_model.safetensors": 20})
    env = {"BASE_MODEL": str(base), "REFINER_MODEL": str(refiner), "VAE_MODEL": str(vae)}

    expected = [
        vae / "diffusion_pytorch_model.safetensors",
        base / "text_encoder/model.fp16.safetensors",
        base / "text_encoder_2/model.fp16.safetensors",
        base / "unet/diffusion_pytorch_model.fp16.safetensors",
        refiner / "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert weight_files(config.models(env)) == expected
    own_vae = weight_files(config.models(dict(env, VAE_MODEL="base", REFINER_MODEL="none")))
    assert own_vae[0] == base / "vae/diffusion_pytorch_model.fp16.safetensors" and len(own_vae) == 4


