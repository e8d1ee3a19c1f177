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
from sdxl_worker.testing.tiny_upscaler import write_tiny_compact, write_tiny_esrgan
from tests.helpers.upscaling import import_spandrel, reference_upscale


@pytest.fixture(scope="module", autouse=True)
def spandrel():
    return import_spandrel()


def load(source, weight="RealESRGAN_x2.pth"):
    return load_upscaler(str(source), weight, "cpu", torch.float32, lambda name, part: name)


def refusal(source, weight="RealESRGAN_x2.pth") -> str:
    with pytest.raises(StartupError) as raised:
        load(source, weight)
    return str(raised.value)


def test_an_image_larger_than_a_tile_comes_out_as_the_whole_image_would(tmp_path, monkeypatch):
    """With tiles of 128 (512 in the worker; smaller here to be quick), 300x170 is six tiles, three
    across and two down, the last ones partial: each sees 32 pixels of its neighbours, more than the
    tiny model's reach, so no seam can be seen (at most one level of rounding)."""
    from sdxl_worker.engine import upscaler

    monkeypatch.setattr(upscaler, "TILE", 128)
    file = write_tiny_esrgan(tmp_path / "4x.safetensors", "esrgan", scale=4)
    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (170, 300, 3), dtype=np.uint8))
    tiled = np.asarray(load(file)(image, (1200, 680))).astype(int)
    whole = np.asarray(reference_upscale(file, image)).astype(int)
    assert tiled.shape == whole.shape == (680, 1200, 3)
    assert np.abs(tiled - whole).max() <= 1
    assert np.abs(tiled[:, 504:520] - whole[:, 504:520]).max() <= 1  # around the seam at 128 x 4 across
    assert np.abs(tiled[504:520] - whole[504:520]).max() <= 1  # and down


def test_the_pixels_the_model_sees_are_its_tiles_with_their_margins():
    from sdxl_worker.engine.upscaler import pixels_seen

    assert pixels_seen(512, 384) == 512 * 384  # one tile: no margins
    assert pixels_seen(1024, 1024) == 1088 * 1088  # 2 x 2 tiles: 32 more on each side of the seam
    assert pixels_seen(1632, 600) == (1632 + 3 * 64) * (600 + 64)  # 4 tiles across (3 seams), 2 down


def test_the_work_is_the_model_s_operations_per_pixel(tmp_path):
    """The tiny ESRGAN x4 (8 features, 32 growth channels, one block), multiply-adds per input pixel:
    first conv 9x3x8 = 216; three dense blocks of 9x(8x32 + 40x32 + 72x32 + 104x32 + 136x8) = 74,304;
    the trunk conv 576; at 2x and 4x the size (4 and 16 pixels a pixel) the two upsampling convs
    576x4 + 576x16, the high-resolution conv 576x16 and the last 216x16. Two operations each."""
    multiply_adds = 216 + 3 * 74_304 + 576 + 576 * 4 + 576 * 16 + 576 * 16 + 216 * 16
    assert load(write_tiny_esrgan(tmp_path / "4x.safetensors", "esrgan", scale=4)).flops_per_pixel == 2 * multiply_adds


FAMILY_ONLY = ("the hires pass runs ESRGAN-family upscalers of RGB images by 2x or 4x (ESRGAN, Real-ESRGAN, "
               "BSRGAN files); use one (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN with UPSCALER_WEIGHT=RealESRGAN_x2.pth).")


@pytest.mark.parametrize("made, what", [
    (lambda folder: write_tiny_esrgan(folder / "1x.pth", "real-esrgan", scale=1), "a 1x Restoration model (ESRGAN)"),
    (lambda folder: write_tiny_esrgan(folder / "8x.safetensors", "esrgan", scale=8), "a 8x SR model (ESRGAN)"),
    (lambda folder: write_tiny_compact(folder / "compact.safetensors"), "a 4x SR model (RealESRGAN Compact)"),
    (lambda folder: write_tiny_esrgan(folder / "grey.safetensors", "esrgan", scale=4, channels=1),
     "a 4x SR model (ESRGAN) of 1-channel images"),
])
def test_a_model_that_is_not_a_2x_or_4x_esrgan_is_refused(tmp_path, made, what):
    """A 1x restoration model, an 8x (a 1600-pixel image would be 12,800 pixels a side), an upscaler
    of another architecture (whose tiling needs differ) and one of greyscale images stop the start."""
    file = made(tmp_path)
    assert refusal(file) == f"UPSCALER_MODEL='{file}' is {what}; {FAMILY_ONLY}"


def test_files_that_are_not_such_a_model_are_one_sentence_saying_so(tmp_path):
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(4, 4)}, str(tmp_path / "other.safetensors"))
    assert refusal(tmp_path / "other.safetensors") == (
        f"UPSCALER_MODEL='{tmp_path / 'other.safetensors'}' is not a model spandrel can build (UnsupportedModelError); "
        "use an ESRGAN-family 2x or 4x file (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN "
        "with UPSCALER_WEIGHT=RealESRGAN_x2.pth).")
    (tmp_path / "empty.pth").write_bytes(b"")
    assert refusal(tmp_path / "empty.pth") == (
        f"UPSCALER_MODEL='{tmp_path / 'empty.pth'}' cannot be read as weights (EOFError); use an ESRGAN-family 2x or "
        "4x .safetensors or .pth file (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN with UPSCALER_WEIGHT=RealESRGAN_x2.pth).")
    (tmp_path / "a.pth").mkdir()
    assert refusal(tmp_path / "a.pth").startswith(f"Could not load UPSCALER_MODEL='{tmp_path / 'a.pth'}': ")
    (tmp_path / "model.ckpt").write_bytes(b"x")
    assert refusal(tmp_path / "model.ckpt") == (
        f"UPSCALER_MODEL='{tmp_path / 'model.ckpt'}' is a file, but not a .safetensors or .pth one; convert it, "
        "or name a folder or hub id holding one with UPSCALER_WEIGHT.")


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
    assert message.startswith(f"UPSCALER_MODEL='{tmp_path / 'evil.pth'}' cannot be read as weights (UnpicklingError: ")
    assert "exec" in message and "\n" not in message  # the global it refused, named
    assert not marker.exists()


class Scripted(torch.nn.Module):
    """A TorchScript module whose loading runs its own code (it prints)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        print("SCRIPTED CODE RAN")
        self.weight, self.training = state[0], state[1]

    def forward(self, x):
        return x


@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive")
def test_a_torchscript_file_named_pth_is_refused_before_its_code_runs(tmp_path, capfd):
    torch.jit.script(Scripted()).save(str(tmp_path / "model.pth"))
    message = refusal(tmp_path / "model.pth")
    assert message.startswith(f"UPSCALER_MODEL='{tmp_path / 'model.pth'}' cannot be read as weights (")
    assert "TorchScript" in message
    assert "SCRIPTED CODE RAN" not in capfd.readouterr().out


def test_a_folder_without_the_weight_and_a_weight_of_another_type_name_the_fix(tmp_path):
    assert refusal(tmp_path) == (
        f"Could not load UPSCALER_MODEL='{tmp_path}' with UPSCALER_WEIGHT='RealESRGAN_x2.pth': no file "
        "'RealESRGAN_x2.pth' in it. Bake it into the image (--build-arg UPSCALER_MODEL), point UPSCALER_MODEL at a "
        ".safetensors or .pth file, or leave it unset.")
    assert refusal(tmp_path, "model.bin") == (
        "UPSCALER_WEIGHT='model.bin' is not a .safetensors or .pth file; name the upscaler's weight file inside "
        "UPSCALER_MODEL (e.g. UPSCALER_MODEL=ai-forever/Real-ESRGAN with UPSCALER_WEIGHT=RealESRGAN_x2.pth).")
    write_tiny_esrgan(tmp_path / "outside.pth", "real-esrgan", scale=2)
    (tmp_path / "inner").mkdir()
    for weight in ("../outside.pth", str(tmp_path / "outside.pth")):  # the file is there, but not inside
        assert refusal(tmp_path / "inner", weight).startswith(
            f"UPSCALER_WEIGHT={weight!r} is not a path inside UPSCALER_MODEL; ")
    write_tiny_esrgan(tmp_path / "RealESRGAN_x2.pth", "real-esrgan", scale=2)
    assert load(tmp_path).scale == 2


def test_a_hub_id_not_baked_is_refused_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    message = refusal("someone/upscalers", "4x.pth")
    assert message.startswith("Could not load UPSCALER_MODEL='someone/upscalers' with UPSCALER_WEIGHT='4x.pth': ")
    # Baked: the hub id's snapshot folder holds the file; another file of it is asked of the hub (offline: refused).
    snapshot = tmp_path / "snapshot"
    write_tiny_esrgan(snapshot / "x2.pth", "real-esrgan", scale=2)
    baked = load_upscaler("someone/upscalers", "x2.pth", "cpu", torch.float32, lambda name, part: str(snapshot))
    assert baked.scale == 2
    with pytest.raises(StartupError, match=r"^Could not load UPSCALER_MODEL='someone/upscalers' with "
                                           r"UPSCALER_WEIGHT='x4.pth': \w+Error"):
        load_upscaler("someone/upscalers", "x4.pth", "cpu", torch.float32, lambda name, part: str(snapshot))


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
