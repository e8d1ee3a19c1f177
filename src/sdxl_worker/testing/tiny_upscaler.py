"""Tiny ESRGAN-family upscalers, built in code and saved as the real files are, for UPSCALER_MODEL.

The architecture is ESRGAN's RRDBNet: a first convolution, residual-in-residual dense blocks (three
dense blocks of five convolutions each, 32 growth channels), a trunk convolution added back, two
nearest-neighbour 2x upsamplings each followed by a convolution, a high-resolution convolution and
the last one to RGB. The weights here are the real key layouts with fewer features (8, not 64) and
one block (not 23):

- ``esrgan``: the original ESRGAN layout (``model.0``, ``model.1.sub.0.RDB1.conv1.0``, ...) of the
  4x files model sites share (8x: one more upsampling), saved as ``.safetensors``;
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


def write_tiny_esrgan(path: Path, layout: str = "esrgan", scale: int = 4, seed: int = 5, channels: int = 3) -> Path:
    """A tiny upscaler file at ``path`` (``.safetensors`` or ``.pth``); ``scale`` 4 or 8 for ``esrgan``,
    1, 2 or 4 for ``real-esrgan``; ``channels`` 3 (RGB) or 1 (a greyscale model)."""
    import torch

    random = torch.Generator().manual_seed(seed)
    unshuffle = {4: 1, 2: 2, 1: 4}[scale] if layout == "real-esrgan" else 1
    upsamplings = {4: 2, 8: 3}[scale] if layout == "esrgan" else 2
    weights = _real_esrgan(random, channels * unshuffle**2, unshuffle, upsamplings, channels)
    if layout == "esrgan":
        weights = _as_esrgan(weights, upsamplings)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(weights, str(path))
    else:
        torch.save({"params_ema": weights}, path)
    return path


def _real_esrgan(random, inputs: int, unshuffle: int, upsamplings: int, channels: int = 3) -> dict:
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
    conv("conv_first", FEATURES, inputs, carry=channels, stride=unshuffle**2)  # unshuffled: channel c is c * s^2
    for block in range(BLOCKS):
        for dense in range(1, 4):
            for index in range(1, 6):
                into = FEATURES + (index - 1) * GROWTH
                conv(f"body.{block}.rdb{dense}.conv{index}", FEATURES if index == 5 else GROWTH, into)
    conv("conv_body", FEATURES, FEATURES)  # inside the residual: the image passes around it
    for name in [f"conv_up{number}" for number in range(1, upsamplings + 1)] + ["conv_hr"]:
        conv(name, FEATURES, FEATURES, carry=3)
    conv("conv_last", channels, FEATURES, carry=channels)
    return weights


def _as_esrgan(weights: dict, upsamplings: int) -> dict:
    """Real-ESRGAN's names in the original ESRGAN layout: the trunk at ``model.1``, each upsampling
    (nearest, conv, activation) three places on, then the high-resolution conv and the last."""
    last = 3 * upsamplings
    renamed = {}
    for name, tensor in weights.items():
        layer, kind = name.rsplit(".", 1)
        if layer.startswith("body."):
            _, block, dense, index = layer.split(".")
            layer = f"model.1.sub.{block}.RDB{dense[3:]}.{index}.0"
        else:
            places = {"conv_first": 0, "conv_hr": last + 2, "conv_last": last + 4,
                      **{f"conv_up{number}": 3 * number for number in range(1, upsamplings + 1)}}
            layer = f"model.1.sub.{BLOCKS}" if layer == "conv_body" else f"model.{places[layer]}"
        renamed[f"{layer}.{kind}"] = tensor.contiguous()
    return renamed


def write_tiny_compact(path: Path, seed: int = 6) -> Path:
    """A tiny Real-ESRGAN Compact (SRVGGNetCompact: a plain stack of convolutions and a pixel
    shuffle, 4x) in its release layout (``body.<n>.weight``, PReLU slopes between): an upscaler
    spandrel reads that is not of the ESRGAN family."""
    import torch
    from safetensors.torch import save_file

    random = torch.Generator().manual_seed(seed)
    features, convs, scale = 8, 2, 4
    weights, index = {}, 0
    for into, out in [(3, features)] + [(features, features)] * convs + [(features, 3 * scale * scale)]:
        weights[f"body.{index}.weight"] = torch.randn(out, into, 3, 3, generator=random) * 0.05
        weights[f"body.{index}.bias"] = torch.zeros(out)
        if out == features:  # a PReLU after every conv but the last
            weights[f"body.{index + 1}.weight"] = torch.full((features,), 0.25)
        index += 2
    save_file(weights, str(path))
    return Path(path)
