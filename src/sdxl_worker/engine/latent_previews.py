"""Live previews: the model's current estimate of the clean image, made cheap enough to stream.

Pure functions, no pipeline: ``clean_estimate`` recovers x0 from one scheduler step,
``preview_image`` turns an in-loop SDXL latent into a small picture, by the linear
latent-to-RGB projection or, when loaded, TAESDXL (``AutoencoderTiny``). Encoding it for the
stream is delivery's job (sdxl_worker.delivery.previews).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

# SDXL in-loop latent (already x 0.13025) -> RGB in [-1, 1]; rows are latent channels 0-3, columns R, G, B.
# Fitted factors as ComfyUI ships them (REFERENCE.md section 4).
LATENT_RGB_FACTORS = torch.tensor(
    [
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]
)
LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])
_FACTORS, _BIAS = LATENT_RGB_FACTORS.numpy(), LATENT_RGB_BIAS.numpy()


def clean_estimate(scheduler, step_output, model_output, timestep, sample) -> torch.Tensor:
    """x0, the model's estimate of the finished latent, after ``scheduler.step`` returned ``step_output``.

    Euler, Euler-a, LMS and DDIM return it; DPM-Solver++ keeps it as its converted model output;
    for the rest (PNDM) it follows from the model output at the alphas of ``timestep``. Never
    the noisy latent: that is what the predecessor showed, a blur of noise until the last steps.
    """
    returned = getattr(step_output, "pred_original_sample", None)
    if returned is None and isinstance(step_output, tuple) and len(step_output) > 1:
        returned = step_output[1]
    if returned is not None:
        return returned
    config = scheduler.config
    if getattr(config, "algorithm_type", "").endswith("dpmsolver++") and getattr(scheduler, "model_outputs", None):
        return scheduler.model_outputs[-1]  # dpmsolver++ converts every model output to x0 first
    alpha = _alphas_on(scheduler, sample.device)[int(timestep)]
    sample32, output32 = sample.float(), model_output.float()
    if config.prediction_type == "epsilon":
        x0 = (sample32 - (1 - alpha).sqrt() * output32) / alpha.sqrt()
    elif config.prediction_type == "v_prediction":
        x0 = alpha.sqrt() * sample32 - (1 - alpha).sqrt() * output32
    else:  # "sample": the model predicts x0 itself
        x0 = output32
    return x0.to(sample.dtype)


def _alphas_on(scheduler, device) -> torch.Tensor:
    """The scheduler's alphas_cumprod on ``device`` in fp32, copied once per job's scheduler, not per
    step (a per-step host-to-GPU copy waits for the GPU)."""
    cached = getattr(scheduler, "_sdxl_worker_alphas", None)
    if cached is None or cached.device != torch.device(device):
        cached = scheduler.alphas_cumprod.to(device, torch.float32)
        scheduler._sdxl_worker_alphas = cached
    return cached


def linear_rgb(latent: torch.Tensor) -> Image.Image:
    """One in-loop latent (4, h, w) -> an RGB image at latent resolution (h, w), by the fitted projection."""
    # numpy, channel by channel: single-threaded elementwise work, which on a busy CPU beats
    # waking torch's or BLAS's thread pools for a 4x3 product (bench/previews.py).
    channels = latent.detach().to("cpu", torch.float32).numpy()
    rgb = _BIAS + sum(channel[..., None] * factors for channel, factors in zip(channels, _FACTORS))
    pixels = (np.clip(rgb, -1, 1) + 1) * 127.5 + 0.5
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def taesd_rgb(decoder, latent: torch.Tensor, longest: int | None = None) -> Image.Image:
    """One in-loop latent (4, h, w) -> RGB by TAESDXL (scaling factor 1: no unscaling).

    With ``longest``, a latent that would decode to more than twice that many pixels is first
    area-averaged down to one that decodes to about twice it: a 256-px preview of a 1024x1024
    job decodes a 64x64 latent, a quarter of the work, then downscales.
    """
    parameter = next(decoder.parameters())
    with torch.inference_mode():
        latent = latent[None].to(parameter.device, parameter.dtype)
        if longest is not None and 8 * max(latent.shape[-2:]) > 2 * longest:
            scale = 2 * longest / (8 * max(latent.shape[-2:]))
            size = [max(1, round(side * scale)) for side in latent.shape[-2:]]
            latent = torch.nn.functional.interpolate(latent, size=size, mode="area")
        decoded = decoder.decode(latent, return_dict=False)[0][0]
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    return Image.fromarray(pixels.cpu().numpy(), "RGB")


def preview_dimensions(width: int, height: int, longest: int) -> tuple[int, int]:
    """``longest`` on the longer side, the aspect ratio kept: 1024x768 at 256 gives 256x192."""
    scale = longest / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def preview_image(latent: torch.Tensor, size: int, decoder=None) -> Image.Image:
    """One in-loop latent (4, h, w) -> a preview picture, ``size`` pixels on its longer side."""
    image = taesd_rgb(decoder, latent, size) if decoder is not None else linear_rgb(latent)
    # The image is h*8 x w*8 pixels whichever way it was decoded: size it from that.
    target = preview_dimensions(latent.shape[-1] * 8, latent.shape[-2] * 8, size)
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR)
    return image


def load_preview_decoder(name: str | None, device: str, dtype):
    """TAESDXL from a hub id or folder, or None (linear previews) when unset or unloadable."""
    if not name:
        return None
    from diffusers import AutoencoderTiny

    try:
        decoder = AutoencoderTiny.from_pretrained(name, dtype=dtype).to(device)
    except (OSError, ValueError) as error:
        log.warning("TAESD_MODEL=%r could not be loaded (%s); previews use the linear projection.",
                    name, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None
    decoder.eval()
    decoder.requires_grad_(False)
    return decoder
