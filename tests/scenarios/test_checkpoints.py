"""Your own checkpoint: single `.safetensors` files in the original layout, and RunPod's model cache."""

import shutil

import pytest
import torch

from sdxl_worker.engine.models import ModelUnavailable, Settings, load_models, weight_files
from sdxl_worker.engine.tiny import ensure_tiny_model
from sdxl_worker.runtime.job import run_job
from sdxl_worker.testing import checkpoints
from tests.helpers import FAST


@pytest.fixture(scope="module")
def single_files(tmp_path_factory):
    """The tiny base and refiner, each written as one original-layout file."""
    folder, where = ensure_tiny_model(), tmp_path_factory.mktemp("checkpoints")
    return (checkpoints.write_single_file(folder / "base", where / "tiny-base.safetensors"),
            checkpoints.write_single_file(folder / "refiner", where / "tiny-refiner.safetensors"))


def test_the_original_layout_converts_back_to_the_same_tensors_with_diffusers():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    folder = ensure_tiny_model() / "base"
    for cls, to_original, back, prefix in (
            (UNet2DConditionModel, checkpoints.unet_to_original, convert_ldm_unet_checkpoint, "model.diffusion_model."),
            (AutoencoderKL, checkpoints.vae_to_original, convert_ldm_vae_checkpoint, "first_stage_model.")):
        model = cls.from_pretrained(folder / ("unet" if cls is UNet2DConditionModel else "vae"))
        state = model.state_dict()
        original = {prefix + key: tensor for key, tensor in to_original(state, model.config).items()}
        assert not any(key.startswith(prefix + "down_blocks") for key in original)  # really the other layout
        converted = back(original, model.config)
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[key], state[key]) for key in state)


def test_single_file_base_and_refiner_give_the_folders_pixels(models, single_files):
    base_file, refiner_file = single_files
    from_files = load_models(Settings(base=str(base_file), refiner=str(refiner_file), vae=None, device="cpu",
                                      checkpoint_config="tiny", refiner_checkpoint_config="tiny"))
    assert from_files.refiner.text_encoder_2 is from_files.base.text_encoder_2  # shared, as with folders
    for inputs in (FAST, {**FAST, "refine": "base_image_refiner"}, {**FAST, "refine": "no_refiner", "num_images": 2}):
        job = {"id": "file", "input": inputs}
        assert list(run_job(from_files, job))[-1]["images"] == list(run_job(models, job))[-1]["images"]
    assert weight_files(from_files_settings := Settings(base=str(base_file), refiner=str(refiner_file)))[:1] == \
        [base_file]
    assert refiner_file in weight_files(from_files_settings)


@pytest.mark.parametrize("name", ["/models/juggernaut.ckpt", "pony.bin", "/runpod-volume/x.pt"])
def test_a_pickle_checkpoint_is_refused_in_one_sentence(name):
    with pytest.raises(ModelUnavailable) as refused:
        load_models(Settings(base=name, refiner=None, vae=None, device="cpu"))
    message = str(refused.value)
    assert f"BASE_MODEL={name!r} is a pickle checkpoint" in message and ".safetensors" in message
    assert message.count(". ") == 0


def test_a_missing_checkpoint_file_names_the_variable(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"REFINER_MODEL='.*gone.safetensors': no such file"):
        load_models(Settings(base="tiny", refiner=str(tmp_path / "gone.safetensors"), vae=None, device="cpu"))


def test_hub_ids_resolve_in_runpods_model_cache_first(models, tmp_path, monkeypatch):
    """RunPod's cached models: /runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/HASH."""
    repo = tmp_path / "hub" / "models--someone--tiny-sdxl"
    shutil.copytree(ensure_tiny_model() / "base", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("RUNPOD_MODEL_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # not found anywhere else
    cached = load_models(Settings(base="someone/tiny-sdxl", refiner=None, vae=None, device="cpu"))
    job = {"id": "cached", "input": {**FAST, "refine": "no_refiner"}}
    assert list(run_job(cached, job))[-1]["images"] == list(run_job(models, job))[-1]["images"]
    assert str(weight_files(Settings(base="someone/tiny-sdxl", refiner=None, vae=None))[0]).startswith(str(repo))
