"""Schedulers by the names users send, each built fresh per job from the model's own config.

The names and their settings are data in sdxl_worker.request.samplers. Building a new scheduler
for every stage of every job (never mutating the loaded one) is what keeps one job's sampler
from leaking into the next.
"""

from __future__ import annotations

import inspect

import diffusers

from sdxl_worker.request.samplers import SCHEDULERS


def scheduler_class(name: str) -> type:
    """The diffusers class a scheduler name stands for."""
    return getattr(diffusers, SCHEDULERS[name].cls)


def build_scheduler(name: str, model_config: dict):
    """A new scheduler of the named kind, configured from the model's pristine scheduler config.

    Only the settings the class takes are passed: SDXL's config carries PNDM's ``skip_prk_steps``,
    which diffusers would otherwise warn about for every LCM scheduler built (the value is
    ignored either way)."""
    cls, sampler = scheduler_class(name), SCHEDULERS[name]
    takes = set(inspect.signature(cls.__init__).parameters)
    settings = {key: value for key, value in model_config.items() if key in takes or key.startswith("_")}
    return cls.from_config({**settings, **sampler.tweaks})
