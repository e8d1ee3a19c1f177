"""LoRAs on the models for one job (engine/lora_layers.py): placed on what they fit, gone after, and
a file that fits nothing named by its first misfit layer. What a LoRA job draws, in every naming
the model sites use, is in tests/scenarios/test_loras.py."""

import pytest
import torch
from safetensors.torch import save

from sdxl_worker.engine.lora_layers import (
    LoraFile,
    _layer_label,
    _misfit,
    _module_and_half,
    applied,
    leftover_layers,
)
from sdxl_worker.errors import InputError
from sdxl_worker.testing.tiny_loras import tiny_lora


def _file(tmp_path, data: bytes, name="style.safetensors", scale=1.0, index=0) -> LoraFile:
    path = tmp_path / name
    path.write_bytes(data)
    return LoraFile(path, scale, f"'{name}'", index)


@pytest.mark.parametrize("key, found", [
    ("down_blocks.1.attentions.0.proj_in.lora.down.weight", ("down_blocks.1.attentions.0.proj_in", "down")),
    ("mid_block.attentions.0.proj_out.lora_B.weight", ("mid_block.attentions.0.proj_out", "up")),
    ("a.attn1.processor.to_out_lora.up.weight", ("a.attn1.to_out.0", "up")),
    ("text_model.encoder.layers.0.self_attn.to_k_lora.down.weight",
     ("text_model.encoder.layers.0.self_attn.k_proj", "down")),
    ("b.to_q.lora_linear_layer.down.weight", ("b.to_q", "down")),
    ("b.to_q.lora_magnitude_vector", ("b.to_q", "magnitude")),
    ("b.to_q.hada_w1_a", None), ("b.to_q.alpha", None),
])
def test_each_naming_of_a_lora_layer_gives_its_module_and_half(key, found):
    assert _module_and_half(key) == found


def test_a_misfit_names_the_first_layer_that_does_not_fit_and_why():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU())
    fits = {"0.lora.down.weight": torch.ones(2, 8), "0.lora.up.weight": torch.ones(4, 2),
            "0.lora_magnitude_vector": torch.ones(4)}
    assert _misfit(model, fits, "unet") == ()
    assert _misfit(model, {"0.lora.down.weight": torch.ones(2, 9)}, "unet") == \
        ("unet.0.lora.down.weight", "takes 9 inputs where the model's layer takes 8")
    assert _misfit(model, {"0.lora.up.weight": torch.ones(5, 2)}, "unet") == \
        ("unet.0.lora.up.weight", "gives 5 outputs where the model's layer gives 4")
    assert _misfit(model, {"0.lora_magnitude_vector": torch.ones(3)}, "unet") == \
        ("unet.0.lora_magnitude_vector", "has 3 outputs where the model's layer has 4")
    assert _misfit(model, {"0.lora.down.weight": torch.ones(8)}, "unet") == ("unet.0.lora.down.weight", "is not a matrix")
    assert _misfit(model, {"7.lora.down.weight": torch.ones(2, 8)}, "unet") == \
        ("unet.7.lora.down.weight", "names no layer of the model's unet")
    assert _misfit(model, {"1.lora.down.weight": torch.ones(2, 8)}, "unet") == \
        ("unet.1.lora.down.weight", "is on a layer a LoRA cannot adapt")
    assert _misfit(model, {"0.hada_w1_a": torch.ones(2, 8)}, "unet") == \
        ("unet.0.hada_w1_a", "is not a LoRA weight this worker knows")


def test_a_layer_is_named_in_messages_only_when_it_is_plainly_a_module_path():
    assert _layer_label("unet.down_blocks.0.lora.down.weight") == "'unet.down_blocks.0.lora.down.weight'"
    assert _layer_label("unet.<script>") == "(a name of 13 characters)"
    assert _layer_label("a" * 161) == "(a name of 161 characters)"


def test_a_lora_is_on_the_models_during_the_job_and_gone_after(models, tmp_path):
    lora = _file(tmp_path, tiny_lora("base", ["to_q", "to_k"], seed=1, text_encoders=True))
    with applied(models, [lora]):
        during = leftover_layers(models)
    assert any(name.startswith("unet.") for name in during)
    assert any(name.startswith("text_encoder.") for name in during)
    assert not any(name.startswith("refiner.unet.") for name in during)  # the refiner's UNet has other widths
    assert leftover_layers(models) == []


def test_a_refiner_lora_goes_to_the_refiner_only(models, tmp_path):
    # Its cross-attention widths are the refiner's: it fits the refiner's UNet and not the base's.
    with applied(models, [_file(tmp_path, tiny_lora("refiner", ["to_q", "to_k", "to_v", "to_out.0"], seed=2))]):
        during = leftover_layers(models)
    assert during and all(name.startswith("refiner.unet.") for name in during)
    assert leftover_layers(models) == []


def test_a_file_that_fits_nothing_is_refused_and_nothing_stays_loaded(models, tmp_path):
    good = _file(tmp_path, tiny_lora("base", ["to_q"], seed=1))
    layer = "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q"
    other = _file(tmp_path, save({f"{layer}.lora.down.weight": torch.ones(4, 320),
                                  f"{layer}.lora.up.weight": torch.ones(64, 4)}), "other.safetensors", index=1)
    with pytest.raises(InputError) as refused, applied(models, [good, other]):
        pass
    assert str(refused.value).startswith("LoRA 'other.safetensors' in 'loras[1]' does not fit this worker's SDXL "
                                         "model: its layer '")
    assert str(refused.value).endswith(" (a LoRA for another model?).")
    unreadable = _file(tmp_path, b"not safetensors" * 10, "broken.safetensors", index=2)
    with pytest.raises(InputError) as refused, applied(models, [unreadable]):
        pass
    assert str(refused.value) == ("LoRA 'broken.safetensors': 'loras[2].path' is not a LoRA file this worker can "
                                  "read (.safetensors).")
    assert leftover_layers(models) == []


def test_no_loras_leave_the_models_alone(models):
    with applied(models, []):
        assert leftover_layers(models) == []
