"""The IP-Adapter: a reference picture's style or subject, through diffusers' IP-Adapter loading.

Loaded once at start-up (IP_ADAPTER_MODEL, IP_ADAPTER_WEIGHT) with its CLIP image encoder, then
taken off the UNet again: its attention processors, image projection and encoder are kept aside
and put on the UNet in use (the checkpoint's, or a preset's) only for a job that sends
``ip_adapter``. Every other job runs the untouched UNet, so it gives exactly the image it gave
before any IP-Adapter job. The refiner never uses it (it was trained for the base).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)


@dataclass
class IpAdapter:
    image_encoder: object  # CLIPVisionModelWithProjection
    feature_extractor: object  # CLIPImageProcessor
    processors: dict  # cross-attention layer name -> IPAdapterAttnProcessor2_0 (holding to_k_ip / to_v_ip)
    projection: object  # the UNet's encoder_hid_proj while in use (MultiIPAdapterImageProjection)


def load_ip_adapter(base, settings, resolve, unavailable) -> IpAdapter | None:
    """The IP-Adapter of ``settings`` loaded through ``base`` (diffusers' load_ip_adapter), then set aside.
    ``resolve`` and ``unavailable`` are sdxl_worker.engine.models' name rule and error, passed in."""
    if not settings.ip_adapter:
        return None
    from diffusers.models.attention_processor import IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

    from sdxl_worker.config import ip_adapter_encoder_folder
    from sdxl_worker.engine.image_processors import on_pil

    unet, where = base.unet, PurePosixPath(settings.ip_adapter_weight)
    source, encoder = resolve(settings.ip_adapter, ""), ip_adapter_encoder_folder(settings)
    before = dict(unet.attn_processors)
    try:
        # A folder is read as it is; a hub id not baked follows HF_HUB_OFFLINE, like every other model.
        # diffusers reads an encoder path with a "/" from the repository's top, a bare name beside the file.
        base.load_ip_adapter(source, subfolder=str(where.parent), weight_name=where.name, image_encoder_folder=encoder,
                             local_files_only=Path(source).is_dir())
        _check_fits(base, unet)
        parts = IpAdapter(base.image_encoder.eval().requires_grad_(False), on_pil(base.feature_extractor),
                          {name: processor for name, processor in unet.attn_processors.items()
                           if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))},
                          unet.encoder_hid_proj)
        _take_off(unet, before)
    except Exception as error:  # whatever diffusers raises, the start stops in one sentence
        _take_off(unet, before)
        base.register_modules(image_encoder=None, feature_extractor=None)
        raise unavailable(
            f"Could not load IP_ADAPTER_MODEL={settings.ip_adapter!r} with IP_ADAPTER_WEIGHT={settings.ip_adapter_weight!r} "
            f"and its image encoder {encoder!r}: {str(error).splitlines()[0].rstrip('.')}. Bake it into the image "
            f"(--build-arg IP_ADAPTER_MODEL=...), point IP_ADAPTER_MODEL at a folder in that layout, or set "
            f"IP_ADAPTER_ENCODER to the encoder the adapter was trained with."
        ) from None
    base.register_modules(image_encoder=None, feature_extractor=None)
    log.info("IP-Adapter %s (%s) loaded: %d cross-attention layers", settings.ip_adapter, where, len(parts.processors))
    return parts


def _check_fits(base, unet) -> None:
    """The encoder's output must be what the adapter's image projection takes: a mismatch (an
    adapter paired with another encoder) is refused at start-up, not in the first job."""
    import torch

    size = base.image_encoder.config.image_size
    pixels = torch.zeros(1, 3, size, size, device=base.image_encoder.device, dtype=base.image_encoder.dtype)
    with torch.no_grad():
        encoded = base.image_encoder(pixels, output_hidden_states=True)
        for projection in unet.encoder_hid_proj.image_projection_layers:
            plain = type(projection).__name__ == "ImageProjection"  # diffusers' rule for which output it takes
            embeds = encoded.image_embeds if plain else encoded.hidden_states[-2]
            projection(embeds.to(next(projection.parameters()).dtype))


@contextmanager
def applied(ip: IpAdapter, pipe, scale: float):
    """The IP-Adapter on ``pipe``'s UNet and its image encoder on ``pipe`` for the block, at ``scale``."""
    unet = pipe.unet
    before = dict(unet.attn_processors)
    # The projection first: a Plus projection (a resampler) has attention layers of its own, which
    # then count among the UNet's, keeping their own processors.
    unet.encoder_hid_proj = ip.projection
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    unet.set_attn_processor({name: ip.processors.get(name, processor)
                             for name, processor in unet.attn_processors.items()})
    pipe.register_modules(image_encoder=ip.image_encoder, feature_extractor=ip.feature_extractor)
    pipe.set_ip_adapter_scale(scale)
    try:
        yield
    finally:
        _take_off(unet, before)
        pipe.register_modules(image_encoder=None, feature_extractor=None)


def _take_off(unet, processors: dict) -> None:
    """The UNet as it was before the adapter: the projection off first (its own attention layers go
    with it), then the processors it had."""
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None
    unet.set_attn_processor(dict(processors))  # a copy: diffusers empties the dict it is given
