"""The IP-Adapter (engine/ip_adapter.py): loaded once and set aside, put on the UNet only for a job that
sends ip_adapter, at its scale, and taken off after. What it draws is in tests/scenarios/test_control.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.ip_adapter import applied, load_ip_adapter
from sdxl_worker.engine.models import load_models
from sdxl_worker.testing.tiny_guides import write_tiny_ip_adapter


def test_an_ip_adapter_with_an_encoder_it_was_not_made_for_stops_the_start_in_one_sentence(tmp_path):
    from sdxl_worker.engine.models import ModelUnavailable

    adapter = write_tiny_ip_adapter(tmp_path / "mismatched", encoder_width=16)
    with pytest.raises(ModelUnavailable) as refused:
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", ip_adapter=str(adapter)))
    message = str(refused.value)
    assert message.startswith(f"Could not load IP_ADAPTER_MODEL={str(adapter)!r}") and "IP_ADAPTER_ENCODER" in message
    with pytest.raises(ModelUnavailable, match="IP_ADAPTER_WEIGHT='nope/ip.safetensors'"):
        load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", ip_adapter=str(adapter),
                             ip_adapter_weight="nope/ip.safetensors"))


@pytest.fixture(scope="module")
def adapted(tmp_path_factory):
    folder = write_tiny_ip_adapter(tmp_path_factory.mktemp("ip") / "adapter")
    return load_models(ModelSettings(base="tiny", refiner=None, vae=None, device="cpu", ip_adapter=str(folder)))


def test_after_loading_the_adapter_is_set_aside_and_the_unet_is_plain(adapted):
    unet = adapted.base.unet
    assert unet.encoder_hid_proj is None and adapted.base.image_encoder is None
    assert not any("IPAdapter" in type(p).__name__ for p in unet.attn_processors.values())
    assert len(adapted.ip_adapter.processors) == sum(1 for name in unet.attn_processors if "attn2" in name)


def test_applied_puts_it_on_the_unet_at_the_jobs_scale_and_takes_it_off_after(adapted):
    ip, pipe = adapted.ip_adapter, adapted.base
    before = dict(pipe.unet.attn_processors)
    with applied(ip, pipe, 0.3):
        processors = pipe.unet.attn_processors
        assert pipe.unet.encoder_hid_proj is ip.projection and pipe.image_encoder is ip.image_encoder
        adapter_ones = [p for p in processors.values() if "IPAdapter" in type(p).__name__]
        assert len(adapter_ones) == len(ip.processors) and all(p.scale == [0.3] for p in adapter_ones)
    assert pipe.unet.attn_processors == before
    assert pipe.unet.encoder_hid_proj is None and pipe.image_encoder is None
    assert pipe.unet.config.encoder_hid_dim_type is None


def test_a_failure_inside_the_job_still_takes_it_off(adapted):
    pipe = adapted.base
    with pytest.raises(RuntimeError), applied(adapted.ip_adapter, pipe, 1.0):
        raise RuntimeError("the job failed")
    assert pipe.unet.encoder_hid_proj is None and pipe.image_encoder is None


def test_no_adapter_is_loaded_unless_configured():
    assert load_ip_adapter(None, SimpleNamespace(ip_adapter=None), None, None) is None
