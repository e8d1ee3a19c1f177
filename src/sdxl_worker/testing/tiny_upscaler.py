"""Tiny ESRGAN-family upscalers, built in code and saved as the real files are, for UPSCALER_MODEL.

The architecture is ESRGAN's RRDBNet: a first convolution, residual-in-residual dense blocks (three
dense blocks of five convolutions each, 32 growth channels), a trunk convolution added back, two
nearest-neighbour 2x upsamplings each followed by a convolution, a high-resolution convolution and
the last one to RGB. The weights here are the real key layouts with fewer features (8, not 64) and
one block (not 23):

- ``esrgan``: the original ESRGAN layout (``model.0``, ``model.1.sub.0.RDB1.conv1.0``, ...) of the
  4x files model sites share, saved as ``.safetensors``;
- ``real-esrgan``: Real-ESRGAN's (``conv_first``, ``body.0.rdb1.conv1``, ``conv_up1``, ...) under
  ``params_ema``, saved as ``.pth`` like its releases; its 2x model sees the image pixel-unshuffled
  by 2 (12 input channels) and upsamples 4x, so 2x in all; ``scale=1`` unshuffles by 4 (a 1x
  restoration model, not an upscaler).

Random weights would give a black or grey image, which hides a wrong channel order or a wrong
size: so each convolution carries the image's three channels through (an identity kernel at the
centre) plus small random weights, and the output is the input upscaled with a random texture.
"""

from __future__ import annotations

from pathlib import Path

FEATURES, GROWTH, BLOCKS = 8, 32, 1


def write_tiny_esrgan(path: Path, layout: str = "esrgan", scale: int = 4, seed: int = 5) -> Path:
    """A tiny upscaler file at ``path`` (``.safetensors`` or ``.pth``); ``scale`` 4 for ``esrgan``,
    1, 2 or 4 for ``real-esrgan``."""
    import torch

    random = torch.Generator().manual_seed(seed)
    unshuffle = {4: 1, 2: 2, 1: 4}[scale] if layout == "real-esrgan" else 1
    weights = _real_esrgan(random, 3 * unshuffle**2, unshuffle)
    if layout == "esrgan":
        if scale != 4:
            raise ValueError("the tiny ESRGAN-layout upscaler is 4x")
        weights = _as_esrgan(weights)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save({"params_ema": weights}, path)
    return path


def _real_esrgan(random, inputs: int, unshuffle: int) -> dict:
    import torch

    def conv(name: str, out: int, into: int, carry: int = 0, stride: int = 1) -> None:
        """A 3x3 convolution, small and random, carrying input channel ``c * stride`` to output ``c``
        for the first ``carry`` channels."""
        weight = torch.randn(out, into, 3, 3, generator=random) * 0.05
        for channel in range(carry):
            weight[channel, channel * stride, 1, 1] += 1
        weights[f"{name}.weight"] = weight
        weights[f"{name}.bias"] = torch.randn(out, generator=random) * 0.01

    weights: dict = {}
    conv("conv_first", FEATURES, inputs, carry=3, stride=unshuffle**2)  # unshuffled: channel c is c * s^2
    for block in range(BLOCKS):
        for dense in range(1, 4):
            for index in range(1, 6):
                into = FEATURES + (index - 1) * GROWTH
                conv(f"body.{block}.rdb{dense}.conv{index}", FEATURES if index == 5 else GROWTH, into)
    conv("conv_body", FEATURES, FEATURES)  # inside the residual: the image passes around it
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        conv(name, FEATURES, FEATURES, carry=3)
    conv("conv_last", 3, FEATURES, carry=3)
    return weights


def _as_esrgan(weights: dict) -> dict:
    """Real-ESRGAN's names in the original ESRGAN layout (a 4x model: two upsamplings)."""
    renamed = {}
    for name, tensor in weights.items():
        layer, kind = name.rsplit(".", 1)
        if layer.startswith("body."):
            _, block, dense, index = layer.split(".")
            layer = f"model.1.sub.{block}.RDB{dense[3:]}.{index}.0"
        else:
            layer = {"conv_first": "model.0", "conv_body": f"model.1.sub.{BLOCKS}", "conv_up1": "model.3",
                     "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}[layer]
        renamed[f"{layer}.{kind}"] = tensor.contiguous()
    return renamed
