"""builder/download_weights.py: which files the image bakes, checked against the real repos' listings."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builder.download_weights import (
    NothingToLoad,
    Wanted,
    files_to_fetch,
    pipeline_components,
    plan,
    wanted_from_env,
)
from tests.helpers import ROOT

LISTINGS = ROOT / "tests" / "fixtures" / "hub"
BASE = "stabilityai/stable-diffusion-xl-base-1.0"
REFINER = "stabilityai/stable-diffusion-xl-refiner-1.0"

# Formats and copies the worker never opens.
FOREIGN = (".onnx", ".onnx_data", ".msgpack", ".bin", ".xml", ".png", ".md", ".jpg", ".gitattributes")


def _planned(env):
    return {item.variable: files for item, files in plan(wanted_from_env(env), LISTINGS)}


def test_default_image_bakes_fp16_base_and_refiner_without_shared_parts():
    planned = _planned({})
    assert planned["BASE_MODEL"] == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/model.fp16.safetensors",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    # The refiner borrows the base's text_encoder_2 and the fp16-fix VAE: neither is baked twice.
    assert planned["REFINER_MODEL"] == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "tokenizer_2/merges.txt",
        "tokenizer_2/special_tokens_map.json",
        "tokenizer_2/tokenizer_config.json",
        "tokenizer_2/vocab.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16.safetensors",
    ]
    assert planned["VAE_MODEL"] == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert planned["TAESD_MODEL"] == ["config.json", "diffusion_pytorch_model.safetensors"]


def test_no_foreign_format_fp32_copy_or_single_file_checkpoint_is_baked():
    for files in _planned({}).values():
        for name in files:
            assert not name.endswith(FOREIGN), name
            assert "/" in name or name in ("model_index.json", "config.json", "diffusion_pytorch_model.safetensors")
            assert not name.startswith(("vae_1_0/", "vae_decoder/", "vae_encoder/", "sd_xl_")), name
            if name.startswith(("unet/", "text_encoder")) and name.endswith(".safetensors"):
                assert ".fp16." in name, name


def test_checkpoint_vae_is_baked_when_asked_for_and_refiner_and_previews_can_be_left_out():
    planned = _planned({"VAE_MODEL": "base", "REFINER_MODEL": "none", "TAESD_MODEL": "none"})
    assert set(planned) == {"BASE_MODEL"}
    assert "vae/diffusion_pytorch_model.fp16.safetensors" in planned["BASE_MODEL"]
    assert "vae/config.json" in planned["BASE_MODEL"]


def test_local_folders_and_the_tiny_model_need_no_download(tmp_path):
    wanted = wanted_from_env({"BASE_MODEL": "tiny", "REFINER_MODEL": str(tmp_path), "TAESD_MODEL": "none"})
    assert wanted == []  # the tiny base uses its own VAE, as the worker loads it
    wanted = wanted_from_env({"BASE_MODEL": "tiny", "REFINER_MODEL": str(tmp_path), "TAESD_MODEL": "none",
                              "VAE_MODEL": "madebyollin/sdxl-vae-fp16-fix"})
    assert wanted == [Wanted("VAE_MODEL", "madebyollin/sdxl-vae-fp16-fix")]


def test_pipeline_components_are_the_classes_named_in_model_index():
    index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline",
        "requires_aesthetics_score": True,
        "text_encoder": [None, None],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    assert pipeline_components(index) == ["text_encoder_2", "unet"]


def test_a_custom_checkpoint_without_fp16_files_gets_its_plain_safetensors_and_shards():
    listing = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_pytorch_model.bin",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bf16.safetensors",
        "my-checkpoint.safetensors",
    ]
    assert files_to_fetch(listing, ["unet", "vae"]) == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]


def test_sharded_fp16_variant_takes_its_own_index_and_shards_only():
    listing = [
        "text_encoder_2/config.json",
        "text_encoder_2/model.safetensors.index.json",
        "text_encoder_2/model-00001-of-00002.safetensors",
        "text_encoder_2/model-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "text_encoder_2/model.fp16-00002-of-00002.safetensors",
    ]
    assert files_to_fetch(listing, ["text_encoder_2"]) == [
        "model_index.json",
        "text_encoder_2/config.json",
        "text_encoder_2/model.fp16-00001-of-00002.safetensors",
        "text_encoder_2/model.fp16-00002-of-00002.safetensors",
        "text_encoder_2/model.safetensors.index.fp16.json",
    ]


def test_weights_only_in_pickle_or_flax_are_refused_with_the_component_named():
    listing = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.bin"]
    with pytest.raises(NothingToLoad, match="'unet'"):
        files_to_fetch(listing, ["unet"])
    with pytest.raises(NothingToLoad):
        files_to_fetch(["config.json", "diffusion_pytorch_model.bin", "taesdxl_decoder.safetensors"])


def test_dry_run_prints_the_plan_offline_and_imports_no_hub_client():
    command = [sys.executable, "builder/download_weights.py", "--dry-run", "--listings", str(LISTINGS)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, check=True)
    assert "BASE_MODEL=stabilityai/stable-diffusion-xl-base-1.0: 16 files (not vae)" in done.stdout
    assert "  unet/diffusion_pytorch_model.fp16.safetensors" in done.stdout
    assert "onnx" not in done.stdout
    probe = "import sys, builder.download_weights; print('huggingface_hub' in sys.modules)"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"


def test_help_names_the_variables():
    done = subprocess.run(
        [sys.executable, "builder/download_weights.py", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert "--dry-run" in done.stdout and "TAESD_MODEL" in done.stdout


# --- a checkpoint from a model site: builder/download_checkpoint.py ---


def test_a_single_file_base_bakes_only_the_configs_it_needs():
    planned = _planned({"BASE_MODEL": "/models/checkpoints/base.safetensors"})
    assert "BASE_MODEL" not in planned  # the file itself comes from BASE_MODEL_URL or a volume
    configs = planned["CHECKPOINT_CONFIG"]
    assert not [name for name in configs if name.endswith(".safetensors")]
    assert {"model_index.json", "unet/config.json", "vae/config.json", "text_encoder_2/config.json",
            "tokenizer/vocab.json", "scheduler/scheduler_config.json"} <= set(configs)
    assert any(name.endswith(".safetensors") for name in planned["REFINER_MODEL"])  # the refiner as before


def _checkpoint_site(tmp_path, data: bytes, secret: str = "site-token-abc123"):
    """A download link that answers only with the right bearer token."""
    from sdxl_worker.testing.servers import Server

    def answer(handler):
        if handler.headers.get("Authorization") != f"Bearer {secret}":
            handler.send_error(401)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return Server({"/api/download/models/1": answer})


def test_base_model_url_is_baked_with_the_token_from_the_build_secret(tmp_path, capsys, monkeypatch):
    from builder import download_checkpoint
    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.testing.checkpoints import write_single_file

    data = write_single_file(ensure_tiny_model() / "base", tmp_path / "source.safetensors").read_bytes()
    secret = tmp_path / "model_token"
    secret.write_text("site-token-abc123\n")
    target = tmp_path / "models" / "checkpoints" / "base.safetensors"
    with _checkpoint_site(tmp_path, data) as site:
        env = {"BASE_MODEL_URL": site.url("/api/download/models/1"), "BASE_MODEL": str(target)}
        with pytest.raises(download_checkpoint.CheckpointError, match="HTTP 401 .*build secret model_token"):
            download_checkpoint.main(env)  # no token
        assert not target.exists()
        monkeypatch.setattr(download_checkpoint, "SECRET_FILE", secret)  # where docker mounts it: /run/secrets/
        assert download_checkpoint.main(env) == 0
    assert target.read_bytes() == data
    assert "site-token-abc123" not in capsys.readouterr().out


@pytest.mark.parametrize("data, refusal", [
    (b"PK\x03\x04 a torch zip checkpoint", "pickle checkpoint"),
    (b"\x80\x02}q\x00 an old pickle", "pickle checkpoint"),
    (b"<html>Please log in</html>", "not a safetensors file"),
])
def test_a_download_that_is_not_safetensors_is_refused_and_left_out(tmp_path, data, refusal):
    from builder import download_checkpoint

    target = tmp_path / "base.safetensors"
    with _checkpoint_site(tmp_path, data) as site:
        with pytest.raises(download_checkpoint.CheckpointError, match=refusal):
            download_checkpoint.download(site.url("/api/download/models/1"), target, "site-token-abc123")
    assert list(tmp_path.iterdir()) == []


def test_base_model_url_needs_a_safetensors_target(tmp_path):
    from builder import download_checkpoint

    with pytest.raises(download_checkpoint.CheckpointError, match="ending in .safetensors"):
        download_checkpoint.download("http://127.0.0.1:9/x", tmp_path / "model.ckpt")


def _tiny_checkpoint(tmp_path) -> bytes:
    from sdxl_worker.engine.tiny import ensure_tiny_model
    from sdxl_worker.testing.checkpoints import write_single_file

    return write_single_file(ensure_tiny_model() / "base", tmp_path / "source.safetensors").read_bytes()


def _redirect(to: str):
    def respond(handler):
        handler.send_response(302)
        handler.send_header("Location", to)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return respond


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_port_gets_no_token_and_the_same_origin_keeps_it(tmp_path, code):
    from builder import download_checkpoint
    from sdxl_worker.testing.servers import Server, answer

    data = _tiny_checkpoint(tmp_path)
    with Server({"/file.safetensors": answer(200, data)}) as storage:
        def to_storage(handler):
            handler.send_response(code)
            handler.send_header("Location", storage.url("/file.safetensors"))
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with Server({"/api/download/models/1": _redirect("/api/download/models/2"),
                     "/api/download/models/2": to_storage}) as site:
            target = tmp_path / "base.safetensors"
            download_checkpoint.download(site.url("/api/download/models/1"), target, "site-token-abc123")
    assert target.read_bytes() == data
    assert [headers.get("Authorization") for _, _, headers in site.calls] == ["Bearer site-token-abc123"] * 2
    assert [headers.get("Authorization") for _, _, headers in storage.calls] == [None]


@pytest.mark.parametrize("url", ["{site}/x?token=hunter2-secret x", "{site}/x?token=hunter2-secret\n",
                                 "http://user:hunter2-secret@127.0.0.1:1/x"])
def test_a_url_is_never_printed_with_its_query_or_user_info(tmp_path, capsys, url):
    from builder import download_checkpoint
    from sdxl_worker.testing.servers import Server, answer

    with Server({"/x": answer(404)}) as site:
        with pytest.raises(download_checkpoint.CheckpointError) as refused:
            download_checkpoint.download(url.format(site=site.base_url), tmp_path / "base.safetensors")
    printed = str(refused.value) + capsys.readouterr().out + capsys.readouterr().err
    assert "hunter2-secret" not in printed and "BASE_MODEL_URL" in printed
    assert str(refused.value).count(".") >= 1 and "\n" not in str(refused.value).strip()  # one sentence


def test_a_body_that_is_not_safetensors_is_refused_from_its_first_bytes(tmp_path):
    """300 MB of a login page: refused after its first bytes, not after the download."""
    from builder import download_checkpoint
    from sdxl_worker.testing.servers import Server

    sent = [0]

    def login_page(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(300 * 2**20))
        handler.end_headers()
        block = b"<html>Please log in</html>".ljust(2**20, b" ")
        for _ in range(300):
            handler.wfile.write(block)
            sent[0] += len(block)

    with Server({"/big": login_page}) as site:
        with pytest.raises(download_checkpoint.CheckpointError, match="not a safetensors file"):
            download_checkpoint.download(site.url("/big"), tmp_path / "base.safetensors")
    assert sent[0] < 64 * 2**20, f"{sent[0] / 2**20:.0f} MB were sent before the refusal"
    assert list(tmp_path.iterdir()) == []


def test_a_header_nested_past_the_recursion_limit_is_one_sentence(tmp_path):
    import struct

    from builder import download_checkpoint
    from sdxl_worker.testing.servers import Server, answer

    header = b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    with Server({"/deep": answer(200, struct.pack("<Q", len(header)) + header)}) as site:
        with pytest.raises(download_checkpoint.CheckpointError, match="its header is not JSON"):
            download_checkpoint.download(site.url("/deep"), tmp_path / "base.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_over_the_size_cap_is_refused(tmp_path):
    from builder import download_checkpoint
    from sdxl_worker import config
    from sdxl_worker.testing.servers import Server, answer

    data = _tiny_checkpoint(tmp_path)
    (tmp_path / "source.safetensors").unlink()

    def undeclared(handler):  # no Content-Length: the body ends when the connection closes
        handler.send_response(200)
        handler.end_headers()
        handler.wfile.write(data)
        handler.close_connection = True

    with Server({"/declared": answer(200, data), "/undeclared": undeclared}) as site:
        for path in ("/declared", "/undeclared"):
            with pytest.raises(download_checkpoint.CheckpointError, match="larger than BASE_MODEL_MAX_GB"):
                download_checkpoint.download(site.url(path), tmp_path / "base.safetensors", max_bytes=len(data) - 1)
            assert list(tmp_path.iterdir()) == []
    assert config.build({}).base_model_max_bytes == 16 * 10**9
    assert config.build({"BASE_MODEL_MAX_GB": "30"}).base_model_max_bytes == 30 * 10**9


# --- the fast presets' weights: PRESETS ---


def test_presets_bake_their_lora_file_or_unet_and_unknown_names_are_refused():
    from builder.download_weights import preset_downloads
    from sdxl_worker.request.presets import PRESETS

    assert preset_downloads(("lightning-4", "turbo-1")) == [
        ("lightning-4", "ByteDance/SDXL-Lightning", ["sdxl_lightning_4step_lora.safetensors"]),
        ("turbo-1", "stabilityai/sdxl-turbo", ["unet/config.json", "unet/*.fp16.safetensors"])]
    assert [name for name, _, _ in preset_downloads(("all",))] == list(PRESETS)
    with pytest.raises(SystemExit, match="'lightning-2' is not a preset; use lightning-4"):
        preset_downloads(("lightning-2",))


def test_the_builder_runs_on_what_the_dockerfile_copies_before_it(tmp_path):
    """Before the libraries are installed, the builder has only the files the Dockerfile copies for it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    before = dockerfile[:dockerfile.index("builder/download_weights.py")]
    for sources, target in re.findall(r"^COPY (?!--from)(.+) (\S+)$", before, flags=re.M):
        for source in sources.split():
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, tmp_path / target, dirs_exist_ok=True)
            else:
                (tmp_path / target).mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, tmp_path / target)
    shutil.copytree(LISTINGS, tmp_path / "listings")
    command = [sys.executable, "-S", "builder/download_weights.py", "--dry-run", "--listings", "listings"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "src", "PRESETS": "lightning-8,lcm-4"})
    assert "PRESETS lightning-8=ByteDance/SDXL-Lightning: sdxl_lightning_8step_lora.safetensors" in done.stdout
    assert "PRESETS lcm-4=latent-consistency/lcm-lora-sdxl" in done.stdout


# --- ControlNets and the IP-Adapter: CONTROLNET_MODELS, IP_ADAPTER_MODEL ---

CONTROL_ENV = {
    "CONTROLNET_MODELS": "canny=diffusers/controlnet-canny-sdxl-1.0,depth=diffusers/controlnet-depth-sdxl-1.0",
    "IP_ADAPTER_MODEL": "h94/IP-Adapter",
}


def test_controlnets_bake_their_config_and_fp16_weights_and_the_ip_adapter_its_file_and_encoder():
    planned = _planned(CONTROL_ENV)
    for name in ("canny", "depth"):
        assert planned[f"CONTROLNET_MODELS {name}"] == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
    # One adapter file of the many in the repository, and the SDXL image encoder beside it.
    assert planned["IP_ADAPTER_MODEL"] == [
        "sdxl_models/image_encoder/config.json",
        "sdxl_models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter_sdxl.safetensors",
    ]
    assert "IP_ADAPTER_MODEL" not in _planned({})  # nothing extra unless asked


def test_an_ip_adapter_weight_that_is_missing_or_pickled_stops_the_build_naming_it():
    with pytest.raises(SystemExit, match=r"IP_ADAPTER_MODEL=h94/IP-Adapter: no file 'sdxl_models/nope.safetensors'"):
        _planned({**CONTROL_ENV, "IP_ADAPTER_WEIGHT": "sdxl_models/nope.safetensors"})
    with pytest.raises(SystemExit, match="not a .safetensors file"):
        _planned({**CONTROL_ENV, "IP_ADAPTER_WEIGHT": "sdxl_models/ip-adapter_sdxl.bin"})


def test_the_files_the_builder_takes_of_a_controlnet_and_an_ip_adapter_are_enough_to_load_them(tmp_path):
    """Copy only what the builder would fetch from tiny repositories (plus files it must leave), then start
    the worker on the copies: it loads both."""
    from builder.download_weights import ip_adapter_files
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.testing.tiny_guides import write_tiny_controlnet, write_tiny_ip_adapter

    def baked(made: Path, choose) -> Path:
        (made / "diffusion_pytorch_model.bin").write_bytes(b"a pickle copy")  # as real repositories hold
        listing = sorted(str(path.relative_to(made)) for path in made.rglob("*") if path.is_file())
        target = tmp_path / "baked" / made.name
        for name in choose(listing):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(made / name, target / name)
        return target

    controlnet = baked(write_tiny_controlnet(tmp_path / "made" / "canny", seed=1), files_to_fetch)
    adapter = baked(write_tiny_ip_adapter(tmp_path / "made" / "ip"),
                    lambda listing: ip_adapter_files(listing, "sdxl_models/ip-adapter_sdxl.safetensors",
                                                     "sdxl_models/image_encoder"))
    assert not list((tmp_path / "baked").rglob("*.bin"))
    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, taesd=None, device="cpu",
                                  controlnets=(("canny", str(controlnet)),), ip_adapter=str(adapter)))
    assert list(models.controlnets) == ["canny"] and models.ip_adapter is not None


def test_a_vit_h_adapter_bakes_the_encoder_ip_adapter_encoder_names():
    planned = _planned({**CONTROL_ENV, "IP_ADAPTER_WEIGHT": "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                        "IP_ADAPTER_ENCODER": "models/image_encoder"})
    assert planned["IP_ADAPTER_MODEL"] == [
        "models/image_encoder/config.json",
        "models/image_encoder/model.safetensors",
        "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
    ]
    with pytest.raises(SystemExit, match=r"no image encoder .* in models/nothing/ \(IP_ADAPTER_ENCODER\)"):
        _planned({**CONTROL_ENV, "IP_ADAPTER_ENCODER": "models/nothing"})


def test_the_depth_model_is_baked_with_its_image_processor_and_loads_from_what_was_baked(tmp_path):
    """DEPTH_MODEL: the model's config and weights and, beside them, the processor's settings (a
    transformers model reads them at load); the tiny Depth Anything copied as the builder would
    take it loads as the worker's depth preprocessor."""
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.testing.tiny_guides import write_tiny_depth_model

    planned = _planned({"DEPTH_MODEL": "depth-anything/Depth-Anything-V2-Small-hf",
                        "POSE_MODEL": "usyd-community/vitpose-base-simple",
                        "POSE_DETECTOR": "PekingU/rtdetr_r50vd_coco_o365"})
    for variable in ("DEPTH_MODEL", "POSE_MODEL", "POSE_DETECTOR"):
        assert planned[variable] == ["config.json", "model.safetensors", "preprocessor_config.json"]
    assert not {"DEPTH_MODEL", "POSE_MODEL", "POSE_DETECTOR"} & set(_planned({}))
    made = write_tiny_depth_model(tmp_path / "made")  # the same file names as the real repository
    baked = tmp_path / "baked"
    baked.mkdir()
    for name in planned["DEPTH_MODEL"]:
        shutil.copy(made / name, baked / name)
    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, taesd=None, device="cpu", depth=str(baked)))
    from PIL import Image

    assert models.depth(Image.new("RGB", (64, 48), "grey")).size == (64, 48)


def test_the_upscaler_bakes_its_one_file_and_loads_from_what_was_baked(tmp_path):
    """UPSCALER_MODEL: the one weight file UPSCALER_WEIGHT names, a .pth as Real-ESRGAN releases them;
    a missing or foreign file stops the build naming it, a file path needs no download; the tiny
    Real-ESRGAN copied as the builder would take it loads as the worker's upscaler."""
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
    from tests.helpers.upscaling import import_spandrel

    assert _planned({"UPSCALER_MODEL": "ai-forever/Real-ESRGAN"})["UPSCALER_MODEL"] == ["RealESRGAN_x2.pth"]
    assert _planned({"UPSCALER_MODEL": "ai-forever/Real-ESRGAN", "UPSCALER_WEIGHT": "RealESRGAN_x4.pth"})[
        "UPSCALER_MODEL"] == ["RealESRGAN_x4.pth"]
    with pytest.raises(SystemExit, match=r"UPSCALER_MODEL=ai-forever/Real-ESRGAN: no file 'x3.pth' in the repository"):
        _planned({"UPSCALER_MODEL": "ai-forever/Real-ESRGAN", "UPSCALER_WEIGHT": "x3.pth"})
    with pytest.raises(SystemExit, match=r"UPSCALER_WEIGHT='README.md' is not a .safetensors or .pth file"):
        _planned({"UPSCALER_MODEL": "ai-forever/Real-ESRGAN", "UPSCALER_WEIGHT": "README.md"})
    assert "UPSCALER_MODEL" not in _planned({"UPSCALER_MODEL": "/volume/4x-model.pth"})
    assert "UPSCALER_MODEL" not in _planned({})

    import_spandrel()
    baked = write_tiny_esrgan(tmp_path / "baked" / "RealESRGAN_x2.pth", "real-esrgan", scale=2)
    models = load_models(ModelSettings(base="tiny", refiner=None, vae=None, taesd=None, device="cpu",
                                       upscaler=str(baked.parent), upscaler_weight="RealESRGAN_x2.pth"))
    from PIL import Image

    assert models.upscaler.scale == 2
    assert models.upscaler(Image.new("RGB", (40, 24), "grey"), (80, 48)).size == (80, 48)
