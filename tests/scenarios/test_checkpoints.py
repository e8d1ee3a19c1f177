"""Your own checkpoint: single `.safetensors` files in the original layout, and RunPod's model cache."""

import shutil

import pytest
import torch

from sdxl_worker import config
from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.models import ModelUnavailable, load_models, weight_files
from sdxl_worker.engine.tiny import ensure_tiny_model
from sdxl_worker.runtime.job import run_job
from sdxl_worker.testing import checkpoints
from tests.helpers import FAST, worker_with


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


def test_single_file_base_and_refiner_give_the_folders_pixels(single_files):
    from sdxl_worker.testing.memory import fresh_memory

    base_file, refiner_file = single_files
    from_files = load_models(ModelSettings(base=str(base_file), refiner=str(refiner_file), vae=None, device="cpu",
                                      checkpoint_config="tiny", refiner_checkpoint_config="tiny"))
    assert from_files.refiner.text_encoder_2 is from_files.base.text_encoder_2  # shared, as with folders
    from_folders = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))
    for loaded in (from_files, from_folders):  # the same weights in the same kind of memory (testing/memory.py)
        fresh_memory(loaded.base, loaded.refiner)
    for inputs in (FAST, {**FAST, "refine": "base_image_refiner"}, {**FAST, "refine": "no_refiner", "num_images": 2}):
        job = {"id": "file", "input": inputs}
        assert list(run_job(worker_with(from_files), job))[-1]["images"] == \
            list(run_job(worker_with(from_folders), job))[-1]["images"]
    assert weight_files(from_files_settings := ModelSettings(base=str(base_file), refiner=str(refiner_file)))[:1] == \
        [base_file]
    assert refiner_file in weight_files(from_files_settings)


@pytest.mark.parametrize("name", ["/models/juggernaut.ckpt", "pony.bin", "/runpod-volume/x.pt"])
def test_a_pickle_checkpoint_is_refused_in_one_sentence(name):
    with pytest.raises(ModelUnavailable) as refused:
        load_models(ModelSettings(base=name, refiner=None, vae=None, device="cpu"))
    message = str(refused.value)
    assert f"BASE_MODEL={name!r} is a pickle checkpoint" in message and ".safetensors" in message
    assert message.count(". ") == 0


def test_a_missing_checkpoint_file_names_the_variable(tmp_path):
    with pytest.raises(ModelUnavailable, match=r"REFINER_MODEL='.*gone.safetensors': no such file"):
        load_models(ModelSettings(base="tiny", refiner=str(tmp_path / "gone.safetensors"), vae=None, device="cpu"))


def test_hub_ids_resolve_in_runpods_model_cache_first(models, tmp_path):
    """RunPod's cached models: /runpod-volume/huggingface-cache/hub/models--ORG--NAME/snapshots/HASH."""
    repo = tmp_path / "hub" / "models--someone--tiny-sdxl"
    shutil.copytree(ensure_tiny_model() / "base", repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    settings = config.models({"BASE_MODEL": "someone/tiny-sdxl", "REFINER_MODEL": "none", "VAE_MODEL": "base",
                              "DEVICE": "cpu", "RUNPOD_MODEL_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
                              "HF_HUB_CACHE": str(tmp_path / "empty-hf-cache")})  # not found anywhere else
    cached = load_models(settings)
    job = {"id": "cached", "input": {**FAST, "refine": "no_refiner"}}
    assert list(run_job(worker_with(cached), job))[-1]["images"] == list(run_job(worker_with(models), job))[-1]["images"]
    assert str(weight_files(settings)[0]).startswith(str(repo))


# --- several models: BASE_MODELS, a job's 'model', MODELS_KEPT ---


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory, single_files):
    """A second tiny checkpoint: the tiny base with its UNet changed (text encoders and VAE the same),
    as a diffusers folder; and the first one as a single file, for a mixed BASE_MODELS."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("other") / "other-base"
    shutil.copytree(ensure_tiny_model() / "base", folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    unet.save_pretrained(folder / "unet")
    return folder


def _choices(single_files, other_checkpoint, kept: int) -> ModelSettings:
    return ModelSettings(base=str(single_files[0]), refiner="tiny", vae=None, device="cpu", checkpoint_config="tiny",
                    choices=(("first", str(single_files[0])), ("second", str(other_checkpoint))), kept=kept)


def _image(models, settings: dict | None = None, **inputs) -> dict:
    """The final output of a job on ``models``, on a worker with these ``settings`` (environment variables)."""
    return list(run_job(worker_with(models, **(settings or {})), {"id": "choice", "input": {**FAST, **inputs}}))[-1]


def test_each_model_gives_its_own_image_and_the_evicted_one_is_freed(single_files, other_checkpoint):
    import weakref

    loaded = load_models(_choices(single_files, other_checkpoint, kept=1))
    first = _image(loaded)
    assert "model_switch" not in first["timings"]
    alone = load_models(ModelSettings(base=str(single_files[0]), refiner="tiny", vae=None, device="cpu",
                                 checkpoint_config="tiny"))
    assert first["images"] == _image(alone)["images"]  # the first checkpoint: what a worker serving it alone gives
    evicted = weakref.ref(loaded.base.unet)
    second = _image(loaded, model="second", preview_steps=2)
    assert second["timings"]["model_switch"] >= 0 and second["images"] != first["images"]
    assert evicted() is None and loaded.kept == {}  # MODELS_KEPT=1: the first is gone, memory and all
    alone = load_models(ModelSettings(base=str(other_checkpoint), refiner="tiny", vae=None, device="cpu"))
    assert second["images"] == _image(alone)["images"]  # the same pixels as a worker serving it alone
    back = _image(loaded, model="first")
    assert back["images"] == first["images"] and "model_switch" in back["timings"]


def test_kept_models_switch_back_without_loading_and_share_identical_weights(single_files, other_checkpoint, tmp_path):
    from sdxl_worker.testing.tiny_loras import tiny_lora

    loaded = load_models(_choices(single_files, other_checkpoint, kept=2))
    first_unet = loaded.base.unet
    lora = tmp_path / "fox.safetensors"
    lora.write_bytes(tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1))
    plain = _image(loaded, model="second")
    with_lora = _image(loaded, {"LORA_DIR": str(tmp_path)}, model="second", loras=[{"path": str(lora)}])
    assert with_lora["images"] != plain["images"] and "refiner" in with_lora["timings"]
    kept = loaded.kept["first"].base
    # Only the UNet differs between the two: the text encoders and the VAE are loaded once.
    assert loaded.base.text_encoder is kept.text_encoder and loaded.base.vae is kept.vae
    assert loaded.base.unet is not kept.unet
    assert loaded.refiner.text_encoder_2 is loaded.base.text_encoder_2
    _image(loaded, model="first")
    assert loaded.base.unet is first_unet  # put back, not loaded again
    assert _image(loaded, model="second")["images"] == plain["images"]


def test_a_model_not_served_is_refused_naming_the_choices(single_files, other_checkpoint, models):
    loaded = load_models(_choices(single_files, other_checkpoint, kept=1))
    refused = _image(loaded, model="juggernaut")
    assert refused["error"].startswith("'model' is 'juggernaut', which this worker does not serve; use one of "
                                       "first, second")
    assert "default" in _image(models, model="other")["error"]  # without BASE_MODELS, one model: 'default'


def test_a_checkpoint_that_fails_to_load_fails_its_job_then_is_refused_at_once(tmp_path):
    """Its folder looks right (a model_index.json naming SDXL) but its UNet's weights are gone: the
    first job naming it fails; later ones are refused before anything is dropped or loaded again."""
    import weakref

    from sdxl_worker.engine import switch

    broken = tmp_path / "broken"
    shutil.copytree(ensure_tiny_model() / "base", broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    settings = ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu",
                        choices=(("first", "tiny"), ("broken", str(broken))), kept=1)
    loaded = load_models(settings)
    before = _image(loaded)
    sentence = "'model' 'broken' could not be loaded on this worker (its log says why); use another of first"
    assert _image(loaded, model="broken")["error"].startswith(sentence)
    assert _image(loaded)["images"] == before["images"] and loaded.name == "first"
    unet, loads = weakref.ref(loaded.base.unet), []
    real_load = switch._load
    switch._load = lambda *args: loads.append(args) or real_load(*args)
    try:
        again = _image(loaded, model="broken")
    finally:
        switch._load = real_load
    assert again["error"].startswith(sentence) and loads == []  # refused at once: nothing dropped or loaded
    assert loaded.base.unet is unet()


@pytest.mark.parametrize("entry, problem", [
    ("{tmp}/gone.safetensors", "no such file"),
    ("{tmp}/not-a-checkpoint.safetensors", "not a safetensors file this worker can read"),
    ("{tmp}/lora.safetensors", "not an SDXL checkpoint"),
    ("{tmp}/empty-folder", "not a diffusers pipeline folder"),
    ("{tmp}/sd15-folder", "not an SDXL pipeline"),
    ("someone/not-baked", "HF_HUB_OFFLINE=1"),
])
def test_every_base_models_entry_is_checked_at_start_up(tmp_path, entry, problem):
    from safetensors.torch import save_file

    (tmp_path / "not-a-checkpoint.safetensors").write_bytes(b"<html>log in</html>")
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "sd15-folder").mkdir()
    (tmp_path / "sd15-folder" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    source = entry.format(tmp=tmp_path)
    with pytest.raises(ModelUnavailable) as refused:
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", hub_offline=True,
                                  choices=(("first", "tiny"), ("bad", source))))
    message = str(refused.value)
    assert message.startswith(f"BASE_MODELS bad={source!r}: ") and problem in message
    assert message.endswith(".") and message.count(". ") == 0  # one sentence


def test_a_switch_that_loads_counts_in_the_job_s_work(single_files, other_checkpoint):
    loaded = load_models(_choices(single_files, other_checkpoint, kept=1))
    assert "images" in _image(loaded, {"MAX_JOB_WORK": "300"})  # the model in use: no switch, well within 300
    refused = _image(loaded, {"MAX_JOB_WORK": "300"}, model="second")["error"]
    assert refused.startswith("This job is ") and "300 to load its model" in refused and "MAX_JOB_WORK" in refused
    assert loaded.name == "first"  # refused before anything was loaded


def test_vae_model_serves_every_checkpoint_across_switches(single_files, other_checkpoint):
    shared_vae = str(ensure_tiny_model() / "base" / "vae")  # VAE_MODEL as a folder
    loaded = load_models(ModelSettings(base="tiny", refiner="tiny", vae=shared_vae, device="cpu", kept=1,
                                  choices=(("first", "tiny"), ("second", str(other_checkpoint)))))
    first = _image(loaded)
    assert _image(loaded, model="second")["images"] != first["images"]
    assert loaded.base.vae is loaded.shared_vae and loaded.refiner.vae is loaded.shared_vae
    assert _image(loaded, model="first")["images"] == first["images"]  # loaded again, with VAE_MODEL's VAE
    assert loaded.base.vae is loaded.shared_vae
