"""Recovery: out of GPU memory frees memory and the next job runs; a poisoned CUDA context makes
runpod (its real job code) replace the worker; a user error never does.

The failures are raised deliberately from inside the real pipeline: the UNet's forward is
replaced for one job, so everything around it (pipeline, callbacks, run_job) is the real path.
"""

import asyncio
import weakref

import pytest
import torch
from runpod.serverless.modules import rp_job, rp_scale

import handler
from sdxl_worker.runtime.job import run_job
from tests.helpers import worker_with

JOB = {"prompt": "a red cube", "width": 256, "height": 256, "num_inference_steps": 2, "refine": "no_refiner",
       "seed": 1}


def failing_unet(error: BaseException, held: list):
    """A UNet forward that takes a block of memory, as a real one would, then fails."""

    def forward(*args, **kwargs):
        block = torch.zeros(1024, 1024)
        held.append(weakref.ref(block))
        raise error

    return forward


def test_out_of_memory_fails_the_job_frees_memory_and_the_next_job_runs(models, monkeypatch):
    held, emptied = [], []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # as on a GPU worker
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    with monkeypatch.context() as patch:
        patch.setattr(models.base.unet, "forward",
                      failing_unet(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), held))
        outputs = []
        for output in run_job(worker_with(models), {"id": "job-oom", "input": JOB}):
            # By the time the user hears of it, what the failed job held is already released.
            assert held and held[0]() is None
            outputs.append(output)
    assert len(outputs) == 1 and set(outputs[0]) == {"error"}
    message = outputs[0]["error"]
    assert "out of memory" in message and "smaller" in message and "num_images" in message
    assert "job-oom" in message and "Traceback" not in message
    assert emptied == [True]

    after = list(run_job(worker_with(models), {"id": "job-after", "input": JOB}))
    assert len(after) == 1 and "images" in after[0]


@pytest.mark.parametrize("error", [
    torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
    RuntimeError("CUDA error: device-side assert triggered\nCompile with `TORCH_USE_CUDA_DSA`"),
])
def test_a_poisoned_cuda_context_asks_for_a_new_worker(models, monkeypatch, error):
    monkeypatch.setattr(models.base.unet, "forward", failing_unet(error, []))
    outputs = list(run_job(worker_with(models), {"id": "job-bad", "input": JOB}))
    assert outputs == [{"error": outputs[0]["error"], "refresh_worker": True}]
    assert "job-bad" in outputs[0]["error"] and "CUDA" not in outputs[0]["error"]


def test_an_ordinary_internal_error_keeps_the_worker(models, monkeypatch):
    monkeypatch.setattr(models.base.unet, "forward", failing_unet(RuntimeError("shapes do not match"), []))
    outputs = list(run_job(worker_with(models), {"id": "job-x", "input": JOB}))
    assert outputs == [{"error": "The worker hit an internal error on job job-x; the details are in the worker's log."}]


def runpod_result(config: dict, job: dict, monkeypatch) -> dict:
    """What runpod 1.12's own job code sends back for ``job`` (the network calls captured)."""
    sent = []

    async def send_result(session, job_data, job, is_stream=False):
        sent.append(job_data)

    async def stream_result(session, job_data, job):
        pass

    monkeypatch.setattr(rp_job, "send_result", send_result)
    monkeypatch.setattr(rp_job, "stream_result", stream_result)
    asyncio.run(rp_job.handle_job(None, config, job))
    assert len(sent) == 1
    return sent[0]


def test_runpod_stops_the_worker_only_for_a_poisoned_context(models, monkeypatch):
    config = handler.runpod_config(worker_with(models))
    assert runpod_result(config, {"id": "ok", "input": JOB}, monkeypatch).get("stopPod") is None
    user_error = runpod_result(config, {"id": "bad-input", "input": {"prompt": "a", "width": True}}, monkeypatch)
    assert "'width'" in user_error["error"] and "stopPod" not in user_error
    assert "refresh_worker" not in config

    with monkeypatch.context() as patch:
        patch.setattr(models.base.unet, "forward",
                      failing_unet(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), []))
        poisoned = runpod_result(config, {"id": "gpu-gone", "input": JOB}, monkeypatch)
    assert poisoned["stopPod"] is True and "gpu-gone" in poisoned["error"]
    assert config["refresh_worker"] is True  # rp_scale reads this after the job and kills the worker


def worker_stops_after(config: dict, job: dict, monkeypatch) -> bool:
    """Whether runpod's job scaler shuts the worker down after running ``job`` (results captured)."""
    async def send_result(session, job_data, job, is_stream=False):
        pass

    async def stream_result(session, job_data, job):
        pass

    monkeypatch.setattr(rp_job, "send_result", send_result)
    monkeypatch.setattr(rp_job, "stream_result", stream_result)

    async def scenario():
        scaler = rp_scale.JobScaler(config)
        await scaler.jobs_queue.put(job)  # as its job-taking loop would
        await scaler.jobs_queue.get()
        scaler.job_progress.add(job)
        await scaler.handle_job(None, job)
        return scaler._shutdown_event.is_set()

    return asyncio.run(scenario())


def test_runpods_scaler_shuts_the_worker_down_only_after_a_poisoned_job(models, monkeypatch):
    config = handler.runpod_config(worker_with(models))
    assert not worker_stops_after(config, {"id": "fine", "input": {"prompt": "a", "width": 1}}, monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(models.base.unet, "forward",
                      failing_unet(RuntimeError("CUDA error: unspecified launch failure"), []))
        assert worker_stops_after(config, {"id": "gone", "input": JOB}, monkeypatch)
