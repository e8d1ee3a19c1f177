"""A job stopped on the tiny model, through the Runner (runtime/serve.py) as runpod's loop drives it:
a cancel, JOB_TIMEOUT_S and SIGTERM end the denoising within a step, a stuck upload or a job
waiting for the models does not hold up the next job. The Runner's own rules, on fake work, are in
tests/unit/runtime/test_serve.py."""

import asyncio
import os
import signal
import time

import pytest

import handler
from sdxl_worker.engine import generate
from sdxl_worker.runtime.serve import Runner
from sdxl_worker.runtime.stopping import SHUTTING_DOWN
from tests.helpers import FAST, worker_with

LONG = {**FAST, "refine": "no_refiner", "num_inference_steps": 200, "width": 768, "height": 768}


def steps_seen(monkeypatch) -> list:
    """The steps the pipelines run from now on, as (stage, step) (the UNet's calls, counted in the step callback)."""
    seen, real = [], generate._callback

    def counting(on_step, stage, scheduler, *rest):
        def counted(stage_, step, kwargs):
            seen.append((stage_, step))
            if on_step is not None:
                on_step(stage_, step, kwargs)
        return real(counted, stage, scheduler, *rest)

    monkeypatch.setattr(generate, "_callback", counting)
    return seen


async def until(condition, timeout: float = 60) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "waited in vain"
        await asyncio.sleep(0.01)


async def outputs_of(runner: Runner, job: dict) -> list:
    return [output async for output in runner.run(job)]


def test_a_cancelled_task_stops_the_denoising_within_a_step(models, monkeypatch):
    seen = steps_seen(monkeypatch)
    runner = Runner(worker_with(models))

    async def scenario():
        task = asyncio.create_task(outputs_of(runner, {"id": "cancel-me", "input": LONG}))
        await until(lambda: len(seen) >= 2)  # the loop is free while the job denoises
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped_at = len(seen)
        return stopped_at, await outputs_of(runner, {"id": "next", "input": {**FAST, "refine": "no_refiner"}})

    stopped_at, after = asyncio.run(scenario())
    assert "images" in after[-1], "the next job runs at once"
    assert stopped_at < 10 and len(seen) - 4 <= stopped_at + 1  # the next job's 4 steps, and at most one more


def test_a_cancel_during_the_hires_pass_stops_it_within_a_step(models, monkeypatch):
    seen = steps_seen(monkeypatch)
    runner = Runner(worker_with(models))
    second_pass = {**FAST, "refine": "no_refiner", "num_inference_steps": 2, "width": 256, "height": 256,
                   "hires": {"scale": 2, "steps": 100, "strength": 1}}

    def hires_steps() -> int:
        return sum(stage == "hires" for stage, _ in seen)

    async def scenario():
        task = asyncio.create_task(outputs_of(runner, {"id": "cancel-hires", "input": second_pass}))
        await until(lambda: hires_steps() >= 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stopped_at = hires_steps()
        after = await outputs_of(runner, {"id": "next", "input": {**FAST, "refine": "no_refiner"}})
        return stopped_at, after

    stopped_at, after = asyncio.run(scenario())
    assert "images" in after[-1], "the next job runs at once"
    assert stopped_at < 10 and hires_steps() <= stopped_at + 1  # of 100 second-pass steps, at most one more


def test_a_cancel_while_the_model_upscales_stops_before_the_next_tile(models, monkeypatch, tmp_path):
    from dataclasses import replace

    import torch

    from sdxl_worker.engine.upscaler import load_upscaler
    from sdxl_worker.testing.tiny_upscaler import write_tiny_esrgan
    from tests.helpers.upscaling import import_spandrel

    import_spandrel()
    upscaler = load_upscaler(str(write_tiny_esrgan(tmp_path / "x2.pth", "real-esrgan", scale=2)), "", "cpu",
                             torch.float32, None)
    tiles, seen = [], steps_seen(monkeypatch)

    class Slow:  # the model, each tile taking half a second more: the cancel lands inside the first
        scale = upscaler.scale

        def __call__(self, pixels, model=upscaler.descriptor):
            tiles.append(pixels.shape)
            time.sleep(0.5)
            return model(pixels)

    upscaler.descriptor = Slow()
    runner = Runner(worker_with(replace(models, upscaler=upscaler)))
    big = {**FAST, "refine": "no_refiner", "num_inference_steps": 1, "width": 1024, "height": 1024,
           "hires": {"scale": 1.25, "steps": 4, "upscaler": "model"}}  # 1024x1024: four tiles of 512

    async def scenario():
        task = asyncio.create_task(outputs_of(runner, {"id": "cancel-upscale", "input": big}))
        await until(lambda: len(tiles) >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await outputs_of(runner, {"id": "next", "input": {**FAST, "refine": "no_refiner"}})

    after = asyncio.run(scenario())
    assert "images" in after[-1], "the next job runs at once"
    assert len(tiles) == 1, "no tile after the cancel"
    assert not [stage for stage, _ in seen if stage == "hires"]


def test_job_timeout_ends_a_long_job_with_an_error_naming_the_limit(models, monkeypatch):
    # The job's clock moves only when the test says, so a loaded machine cannot time out the quick job.
    now = [0.0]
    seen = steps_seen(monkeypatch)
    runner = Runner(worker_with(models), timeout_s=1.0, clock=lambda: now[0])

    async def scenario():
        task = asyncio.create_task(outputs_of(runner, {"id": "slow", "input": LONG}))
        await until(lambda: len(seen) >= 2)
        now[0] += 1.0  # the job's second second begins: past JOB_TIMEOUT_S
        return await task

    outputs = asyncio.run(scenario())
    assert len(outputs) == 1
    message = outputs[0]["error"]
    assert message.startswith("The job ran longer than JOB_TIMEOUT_S=1 s and was stopped at step ")
    assert message.endswith(" of 200; ask for fewer steps or images, or raise JOB_TIMEOUT_S.")
    assert len(seen) < 10  # stopped within a step or so of its deadline, not after 200
    assert "images" in asyncio.run(outputs_of(runner, {"id": "quick", "input": FAST}))[-1]


@pytest.fixture
def runpods_sigterm_handler():
    """A stand-in for the SIGTERM handler runpod's JobScaler installs; the real one is restored after."""
    calls, original = [], signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda number, frame: calls.append(number))
    yield calls
    signal.signal(signal.SIGTERM, original)


def test_sigterm_answers_running_jobs_then_exits(models, runpods_sigterm_handler):
    exits = []
    runner = Runner(worker_with(models), exit_process=lambda: exits.append(time.monotonic()))

    async def scenario():
        handler._stop_jobs_on_sigterm(runner)  # what the concurrency_modifier does in runpod's loop
        handler._stop_jobs_on_sigterm(runner)  # once only: runpod calls the modifier before every job take
        task = asyncio.create_task(outputs_of(runner, {"id": "at-sigterm", "input": LONG}))
        await until(lambda: runner.running)
        await asyncio.sleep(0.5)  # denoising by now
        os.kill(os.getpid(), signal.SIGTERM)
        signalled = time.monotonic()
        outputs = await task
        late = await outputs_of(runner, {"id": "too-late", "input": FAST})
        return signalled, outputs, late

    signalled, outputs, late = asyncio.run(scenario())
    assert runpods_sigterm_handler == [signal.SIGTERM], "runpod's own handler still runs: it stops taking jobs"
    assert len(outputs) == 1 and "shutting down" in outputs[0]["error"] and "at step" in outputs[0]["error"]
    assert len(late) == 1 and "shutting down" in late[0]["error"]  # a job taken after SIGTERM is not started
    deadline = time.monotonic() + 5
    while not exits and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(exits) == 1 and exits[0] - signalled < 8


class HangingStorage:
    """A bucket whose uploads never finish until released: storage that accepts and never answers."""

    def __init__(self):
        import threading

        self.release, self.entered = threading.Event(), threading.Event()

    def key(self, job_id, index, extension):
        return f"{job_id}/{index}.{extension}"

    def upload(self, key, data, content_type):
        self.entered.set()
        self.release.wait(60)
        raise RuntimeError("released")


def test_a_job_stuck_in_its_upload_is_answered_and_the_next_job_runs_at_once(models):
    storage = HangingStorage()
    runner = Runner(worker_with(models, storage), timeout_s=None)

    async def scenario():
        task = asyncio.create_task(outputs_of(runner, {"id": "stuck", "input": {**FAST, "upload": True}}))
        await until(storage.entered.is_set)
        next(iter(runner.running)).stop(SHUTTING_DOWN)  # as SIGTERM does
        stopped = time.monotonic()
        outputs = await task
        answered = time.monotonic() - stopped
        after = await outputs_of(runner, {"id": "next", "input": {**FAST, "refine": "no_refiner", "upload": False}})
        return outputs, answered, after, runner.threads.alive

    try:
        outputs, answered, after, threads = asyncio.run(scenario())
    finally:
        storage.release.set()
    assert len(outputs) == 1 and "shutting down" in outputs[0]["error"] and "before delivery" in outputs[0]["error"]
    assert answered < 5, f"answered {answered:.1f} s after the stop"
    assert "images" in after[-1]  # while the stuck upload still hangs
    assert threads == 2, "the stuck job keeps its thread, the next job ran in another"
    until_retired = time.monotonic() + 10
    while runner.threads.alive != 1 and time.monotonic() < until_retired:
        time.sleep(0.05)
    assert runner.threads.alive == 1, "the stuck thread ends once its upload does"


def test_a_job_waiting_for_the_models_stops_at_once(models):
    from sdxl_worker.runtime import job as jobs

    runner = Runner(worker_with(models), concurrency=2)

    async def scenario():
        jobs._models_in_use.acquire()  # another job holds the models
        try:
            task = asyncio.create_task(outputs_of(runner, {"id": "waiting", "input": FAST}))
            await until(lambda: runner.running)
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # busy while its thread still waits for the models
                if runner.threads.busy == 0:
                    break
                await asyncio.sleep(0.05)
            threads = runner.threads.busy
        finally:
            jobs._models_in_use.release()
        return threads, await outputs_of(runner, {"id": "after", "input": {**FAST, "refine": "no_refiner"}})

    threads, after = asyncio.run(scenario())
    assert threads == 0, "the cancelled job's thread stopped waiting for the models"
    assert "images" in after[-1]


@pytest.mark.parametrize("timeout_s", [None, 5.0])
def test_cancelling_a_running_job_and_two_queued_ones_leaves_the_worker_ready_for_the_next(models, timeout_s):
    """The hole of issue 28: each cancel of a job that never started cost the pool a thread, and the
    next job never started (or, with JOB_TIMEOUT_S, was answered "stopped before it started")."""
    runner = Runner(worker_with(models), timeout_s=timeout_s)

    async def scenario():
        long_one = asyncio.create_task(outputs_of(runner, {"id": "long", "input": LONG}))
        await until(lambda: runner.threads.busy == 1)
        queued = [asyncio.create_task(outputs_of(runner, {"id": f"queued-{n}", "input": FAST})) for n in (1, 2)]
        await asyncio.sleep(0.3)
        for task in (long_one, *queued):
            task.cancel()
        await asyncio.gather(long_one, *queued, return_exceptions=True)
        await asyncio.sleep(1.5)  # the stopped jobs' threads have ended their work: the worker is idle
        started = time.monotonic()
        after = [await asyncio.wait_for(outputs_of(runner, {"id": f"after-{n}", "input": {**FAST, "refine": "no_refiner"}}),
                                        30) for n in (1, 2)]  # a wedged worker fails here, not hangs
        return after, time.monotonic() - started

    after, seconds = asyncio.run(scenario())
    assert ["images" in outputs[-1] for outputs in after] == [True, True], after
    assert seconds < 20
    give_up = time.monotonic() + 5  # the last job's thread hands over its answer, then counts itself idle
    while runner.threads.busy and time.monotonic() < give_up:
        time.sleep(0.01)
    assert runner.threads.busy == 0 and runner.threads.alive == 1 and runner.turns.running == 0
