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
from pathlib import PurePosixPath


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

    unet, where = base.unet, PurePosixPath(settings.ip_adapter_weight)
    before = dict(unet.attn_processors)
    try:
        base.load_ip_adapter(resolve(settings.ip_adapter, ""), subfolder=str(where.parent), weight_name=where.name,
                             local_files_only=True)
    except (OSError, ValueError, KeyError) as error:
        raise unavailable(
            f"Could not load IP_ADAPTER_MODEL={settings.ip_adapter!r} with IP_ADAPTER_WEIGHT={settings.ip_adapter_weight!r}: "
            f"{str(error).splitlines()[0].rstrip('.')}. Bake it into the image (--build-arg IP_ADAPTER_MODEL=...) or "
            f"point IP_ADAPTER_MODEL at a folder holding that file and an image_encoder folder beside it."
        ) from None
    parts = IpAdapter(base.image_encoder.eval().requires_grad_(False), base.feature_extractor,
                      {name: processor for name, processor in unet.attn_processors.items()
                       if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0))},
                      unet.encoder_hid_proj)
    _take_off(unet, before)
    base.register_modules(image_encoder=None, feature_extractor=None)
    log.info("IP-Adapter %s (%s) loaded: %d cross-attention layers", settings.ip_adapter, where, len(parts.processors))
    return parts


@contextmanager
def applied(ip: IpAdapter, pipe, scale: float):
    """The IP-Adapter on ``pipe``'s UNet and its image encoder on ``pipe`` for the block, at ``scale``."""
    unet = pipe.unet
    before = dict(unet.attn_processors)
    unet.set_attn_processor({name: ip.processors.get(name, processor) for name, processor in before.items()})
    unet.encoder_hid_proj = ip.projection
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    pipe.register_modules(image_encoder=ip.image_encoder, feature_extractor=ip.feature_extractor)
    pipe.set_ip_adapter_scale(scale)
    try:
        yield
    finally:
        _take_off(unet, before)
        pipe.register_modules(image_encoder=None, feature_extractor=None)


def _take_off(unet, processors: dict) -> None:
    unet.set_attn_processor(dict(processors))  # a copy: diffusers empties the dict it is given
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None
