"""RunPod fitness checks (runtime/fitness.py): pass on a healthy worker, one sentence each when not."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from sdxl_worker.config import StorageSettings
from sdxl_worker.delivery.storage import Storage
from sdxl_worker.runtime import fitness
from tests.helpers import free_port

SECRET = "fitness-secret-never-shown-31a"


def worker_with(models, storage=None):
    return SimpleNamespace(models=models, storage=storage)


def test_every_check_passes_on_the_loaded_tiny_model(models):
    for check in fitness.checks(worker_with(models)):
        check()


def test_a_model_off_its_device_fails_naming_it(models):
    on_meta = torch.nn.Linear(2, 2, device="meta")
    pipe = SimpleNamespace(unet=on_meta, vae=None, text_encoder=None, text_encoder_2=None)
    with pytest.raises(RuntimeError, match=r"The base unet is on meta, not on cpu"):
        fitness.models_on_device(replace(models, base=pipe, refiner=None))


def test_a_scheduler_whose_class_does_not_import_fails(models, monkeypatch):
    from sdxl_worker.engine import schedulers

    real = schedulers.scheduler_class

    def without_scipy(name):
        if name == "KLMS":
            raise ImportError("LMSDiscreteScheduler requires the scipy library but it was not found")
        return real(name)

    monkeypatch.setattr(schedulers, "scheduler_class", without_scipy)
    with pytest.raises(RuntimeError, match="'KLMS' does not import \\(LMSDiscreteScheduler requires the scipy"):
        fitness.checks(worker_with(models))[1]()


def test_storage_that_does_not_answer_fails_without_its_secret(models):
    settings = StorageSettings(endpoint_url=f"http://127.0.0.1:{free_port()}", access_key_id="AKIAFITNESS000000001",
                               secret_access_key=SECRET, bucket="gone", attempts=1, connect_timeout_s=1)
    with pytest.raises(RuntimeError) as failed:
        fitness.checks(worker_with(models, Storage(settings)))[2]()
    assert "does not answer" in str(failed.value) and "BUCKET_" in str(failed.value)
    assert SECRET not in str(failed.value)
