"""The upscaling model (engine/upscaler.py): tiles that meet without seams, its work counted, and every
file it cannot use refused at start-up in one sentence naming UPSCALER_MODEL."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_worker.engine.upscaler import load_upscaler
from sdxl_worker.errors import StartupError
from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
from tests.helpers.spandrel_import import import_spandrel


@pytest.fixture(scope="module", autouse=True)
def spandrel():
    return import_spandrel()


def load(source, weight="RealESRGAN_x2.pth"):
    return load_upscaler(str(source), weight, "cpu", torch.float32, lambda name, part: name)


def refusal(source, weight="RealESRGAN_x2.pth") -> str:
    with pytest.raises(StartupError) as raised:
        load(source, weight)
    return str(raised.value)


def test_an_image_larger_than_a_tile_comes_out_as_the_whole_image_would(tmp_path, spandrel):
    """700x300 is two tiles of 512 across: each tile sees 32 pixels of its neighbour, more than the
    tiny model's reach, so the seam cannot be seen (at most one level of rounding)."""
    file = write_tiny_esrgan(tmp_path / "4x.safetensors", "esrgan", scale=4)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 700, 3), dtype=np.uint8))
    tiled = np.asarray(load(file)(image, (2800, 1200))).astype(int)
    whole = spandrel.ModelLoader().load_from_file(file)(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None] / 255)
    whole = (whole[0].permute(1, 2, 0).numpy() * 255).round().astype(int)
    assert tiled.shape == whole.shape == (1200, 2800, 3)
    assert np.abs(tiled - whole).max() <= 1
    assert np.abs(tiled[:, 2040:2056] - whole[:, 2040:2056]).max() <= 1  # around the seam at 512 x 4


def test_the_work_is_the_model_s_operations_per_pixel(tmp_path):
    """The tiny ESRGAN x4 (8 features, 32 growth channels, one block), multiply-adds per input pixel:
    first conv 9x3x8 = 216; three dense blocks of 9x(8x32 + 40x32 + 72x32 + 104x32 + 136x8) = 74,304;
    the trunk conv 576; at 2x and 4x the size (4 and 16 pixels a pixel) the two upsampling convs
    576x4 + 576x16, the high-resolution conv 576x16 and the last 216x16. Two operations each."""
    multiply_adds = 216 + 3 * 74_304 + 576 + 576 * 4 + 576 * 16 + 576 * 16 + 216 * 16
    assert load(write_tiny_esrgan(tmp_path / "4x.safetensors", "esrgan", scale=4)).flops_per_pixel == 2 * multiply_adds


def test_a_1x_model_is_refused_as_no_upscaler(tmp_path):
    file = write_tiny_esrgan(tmp_path / "1x.pth", "real-esrgan", scale=1)
    assert refusal(file) == (
        f"UPSCALER_MODEL='{file}' is a 1x Restoration model (ESRGAN), not an upscaler of RGB images by 2x or more; "
        "use an ESRGAN-family 2x or 4x model (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN with "
        "UPSCALER_WEIGHT=RealESRGAN_x2.pth).")


def test_a_file_of_no_known_architecture_is_one_sentence(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    message = refusal(tmp_path / "other.safetensors")
    assert message.startswith(f"Could not load UPSCALER_MODEL='{tmp_path / 'other.safetensors'}': ")
    assert message.endswith("Bake it into the image (--build-arg UPSCALER_MODEL), point UPSCALER_MODEL at a "
                            ".safetensors or .pth file, or leave it unset.")
    assert "\n" not in message


class Payload:
    """Unpickled, it would write a file: what a hostile .pth does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def test_a_pth_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran.txt"
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "hook": Payload(marker)}, tmp_path / "evil.pth")
    message = refusal(tmp_path / "evil.pth")
    assert "exec' is forbidden" in message  # spandrel's restricted unpickler: tensors and dicts only
    assert not marker.exists()


def test_a_folder_without_the_weight_and_a_weight_of_another_type_name_the_fix(tmp_path):
    assert refusal(tmp_path) == (
        f"Could not load UPSCALER_MODEL='{tmp_path}' with UPSCALER_WEIGHT='RealESRGAN_x2.pth': no file "
        "'RealESRGAN_x2.pth' in it. Bake it into the image (--build-arg UPSCALER_MODEL), point UPSCALER_MODEL at a "
        ".safetensors or .pth file, or leave it unset.")
    assert refusal(tmp_path, "model.bin") == (
        "UPSCALER_WEIGHT='model.bin' is not a .safetensors or .pth file; name the upscaler's weight file inside "
        "UPSCALER_MODEL (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN with UPSCALER_WEIGHT=RealESRGAN_x2.pth).")
    write_tiny_esrgan(tmp_path / "RealESRGAN_x2.pth", "real-esrgan", scale=2)
    assert load(tmp_path).scale == 2


def test_a_hub_id_not_baked_is_refused_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    message = refusal("someone/upscalers", "4x.pth")
    assert message.startswith("Could not load UPSCALER_MODEL='someone/upscalers' with UPSCALER_WEIGHT='4x.pth': ")


def test_without_spandrel_the_start_says_what_to_install(tmp_path, monkeypatch):
    file = write_tiny_esrgan(tmp_path / "x2.pth", "real-esrgan", scale=2)
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel raises ImportError
    assert refusal(file).startswith("UPSCALER_MODEL needs the spandrel library, which cannot be imported here (")
    assert refusal(file).endswith("install requirements-upscaler.txt with torchvision built for this torch (the "
                                  "Docker image has both), or leave UPSCALER_MODEL unset.")


def test_unset_is_none_and_a_missing_path_stops_the_start_before_any_library():
    from sdxl_worker import config

    assert config.load({}).models.upscaler is None
    assert config.load({"UPSCALER_MODEL": "none"}).models.upscaler is None
    settings = config.load({"UPSCALER_MODEL": "/nowhere/4x.pth"}).models
    assert any(line.startswith("Could not load UPSCALER_MODEL='/nowhere/4x.pth' (the local folder): no such file")
               for line in config.missing_model_paths(settings))
