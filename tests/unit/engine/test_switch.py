"""A checkpoint per job (engine/switch.py): the names a worker serves, what a switch costs, the
refusal for a broken checkpoint, which weights two checkpoints share. Switching under real jobs
(pixels, memory, a checkpoint that fails to load) is in tests/scenarios/test_checkpoints.py."""

from types import SimpleNamespace

import torch

from sdxl_worker.config import ModelSettings
from sdxl_worker.engine.switch import (
    _same_weights,
    broken_model_sentence,
    model_names,
    model_sources,
    switch_work,
)

SETTINGS = ModelSettings(base="/models/sdxl", choices=(("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
                                                       ("juggernaut", "/models/juggernaut"),
                                                       ("anime", "/models/anime.safetensors")))


def test_the_first_checkpoint_is_what_base_model_loaded_and_the_rest_by_name():
    assert model_sources(SETTINGS) == {"sdxl": "/models/sdxl", "juggernaut": "/models/juggernaut",
                                       "anime": "/models/anime.safetensors"}
    assert model_names(SimpleNamespace(settings=SETTINGS, name="sdxl")) == ("sdxl", "juggernaut", "anime")
    assert model_names(SimpleNamespace(settings=None, name="only")) == ("only",)


def test_a_switch_costs_300_units_only_when_the_checkpoint_must_be_loaded():
    models = SimpleNamespace(settings=SETTINGS, name="juggernaut", kept={"sdxl": object()})
    assert switch_work(models, "juggernaut") == 0  # in use
    assert switch_work(models, None) == 0  # the first, kept loaded
    assert switch_work(models, "sdxl") == 0
    assert switch_work(models, "anime") == 300


def test_a_checkpoint_that_failed_to_load_is_refused_naming_the_others():
    assert broken_model_sentence(("sdxl", "juggernaut", "anime"), {"anime": "no file"}, "anime") == (
        "'model' 'anime' could not be loaded on this worker (its log says why); use another of sdxl, juggernaut, "
        "or fix BASE_MODELS.")


def test_components_are_shared_only_when_every_weight_is_equal():
    torch.manual_seed(0)
    one = torch.nn.Linear(4, 3)
    same = torch.nn.Linear(4, 3)
    same.load_state_dict(one.state_dict())
    assert _same_weights(one, one) and _same_weights(one, same)
    changed = torch.nn.Linear(4, 3)
    changed.load_state_dict(one.state_dict())
    with torch.no_grad():
        changed.weight[0, 0] += 1e-3
    assert not _same_weights(one, changed)
    assert not _same_weights(one, torch.nn.Linear(4, 2))  # another shape
    assert not _same_weights(one, torch.nn.Conv1d(4, 3, 1))  # another kind of layer
    assert not _same_weights(one, None) and not _same_weights(None, one)
