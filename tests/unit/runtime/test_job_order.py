"""Submits, cancels, timeouts, SIGTERM stops and stuck uploads in any order (hypothesis's stateful
testing) against the real Runner, with fast fake work: every job gets exactly one answer, the
threads alive are the jobs in them plus at most CONCURRENCY idle ones, and an idle worker starts
the next job at once. The same for the studio's job list on top of it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sdxl_worker.runtime import serve
from sdxl_worker.runtime.serve import Runner
from sdxl_worker.runtime.stopping import SHUTTING_DOWN, JobStopped

TIMEOUT_S = 10.0  # on the machine's fake clock


class Control:
    def __init__(self, stuck: bool):
        self.stuck = stuck  # ignores its Stop, as an upload that hangs does
        self.finish = threading.Event()
        self.started = threading.Event()
        self.ended = threading.Event()
        self.started_at: float | None = None


class FakeWork:
    """run_job's stand-in: a job that waits until the machine lets it finish, checking its Stop the
    way run_job does between steps (a stuck one does not), then answers once."""

    def __init__(self, clock):
        self.controls: dict[str, Control] = {}
        self.clock = clock

    def __call__(self, worker, job, on_progress, stop):
        control = self.controls[job["id"]]
        control.started_at = self.clock()
        control.started.set()
        try:
            while not control.finish.wait(0.002):
                if not control.stuck:
                    stop.check("at step 1 of 1")
            yield {"images": [job["id"]]}
        except JobStopped as stopped:
            yield {"error": str(stopped)}
        finally:
            control.ended.set()


async def answers(runner, job):
    return [output async for output in runner.run(job)]


class Settle:
    """Runs the machine's loop until nothing moves: tasks, threads and turns stay the same a while."""

    def __init__(self, loop):
        self.loop = loop

    def __call__(self, snapshot, quiet: int = 4) -> None:
        same, last = 0, None
        give_up = time.monotonic() + 10
        while same < quiet:
            assert time.monotonic() < give_up, "the worker never came to rest"
            self.loop.run_until_complete(asyncio.sleep(0.004))
            now = snapshot()
            same = same + 1 if now == last else 0
            last = now


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(serve, "_POLL_S", 0.002)
    monkeypatch.setattr(serve, "STOP_GRACE_S", 0.05)


class RunnerMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.now = [0.0]
        self.work = FakeWork(lambda: self.now[0])
        self.concurrency = 2
        self.runner = Runner(None, timeout_s=TIMEOUT_S, concurrency=self.concurrency, run_job=self.work,
                             clock=lambda: self.now[0], exit_process=lambda: None)
        self.loop = asyncio.new_event_loop()
        self.settle = Settle(self.loop)
        self.tasks: dict[str, asyncio.Task] = {}
        self.cancelled: set[str] = set()
        self.stopped_waiting: set[str] = set()  # SIGTERM-stopped before their work started
        self.numbers = iter(range(10**6))

    def snapshot(self):
        return (tuple(sorted(name for name, task in self.tasks.items() if task.done())),
                self.runner.threads.alive, self.runner.threads.busy, self.runner.turns.running,
                self.runner.turns.waiting,
                tuple(sorted(name for name, c in self.work.controls.items() if c.started.is_set())),
                tuple(sorted(name for name, c in self.work.controls.items() if c.ended.is_set())))

    def open_jobs(self):
        return sorted(name for name, task in self.tasks.items() if not task.done())

    def working(self):
        return [name for name in self.open_jobs() if self.work.controls[name].started.is_set()]

    @rule(stuck=st.booleans())
    def submit(self, stuck):
        name = f"job-{next(self.numbers)}"
        self.work.controls[name] = Control(stuck)
        self.tasks[name] = self.loop.create_task(answers(self.runner, {"id": name, "input": {}}))
        self.settle(self.snapshot)

    @precondition(lambda self: self.open_jobs())
    @rule(data=st.data())
    def cancel(self, data):
        name = data.draw(st.sampled_from(self.open_jobs()))
        self.tasks[name].cancel()
        self.cancelled.add(name)
        self.settle(self.snapshot)

    @precondition(lambda self: any(not c.finish.is_set() for c in self.work.controls.values()))
    @rule(data=st.data())
    def finish(self, data):
        name = data.draw(st.sampled_from(sorted(n for n, c in self.work.controls.items() if not c.finish.is_set())))
        self.work.controls[name].finish.set()
        self.settle(self.snapshot)

    @rule(seconds=st.sampled_from([1.0, 6.0, 11.0]))
    def time_passes(self, seconds):
        self.now[0] += seconds
        self.settle(self.snapshot)

    @precondition(lambda self: self.runner.running)
    @rule(data=st.data())
    def sigterm_stops_one(self, data):
        names = {job_id: stop for stop, job_id in list(self.runner.running.items())}
        name = data.draw(st.sampled_from(sorted(names)))
        if not self.work.controls[name].started.is_set():
            self.stopped_waiting.add(name)
        names[name].stop(SHUTTING_DOWN)
        self.settle(self.snapshot)

    @invariant()
    def threads_are_the_jobs_in_them_plus_a_few_idle(self):
        threads = self.runner.threads
        in_work = [c for c in self.work.controls.values() if c.started.is_set() and not c.ended.is_set()]
        assert threads.busy == len(in_work)
        assert 0 <= threads.alive - threads.busy <= self.concurrency

    @invariant()
    def an_idle_worker_starts_the_next_job_at_once(self):
        turns = self.runner.turns
        assert turns.running <= self.concurrency
        if turns.waiting:
            assert turns.running == self.concurrency, "a job waits while a turn is free"
        # A turn is held by every job whose work started and whose answer is not yet given, and
        # at most also by answered jobs whose thread still works (for STOP_GRACE_S at most).
        still_working = [name for name, task in self.tasks.items() if task.done()
                         and self.work.controls[name].started.is_set() and not self.work.controls[name].ended.is_set()]
        assert len(self.working()) <= turns.running <= len(self.working()) + len(still_working)

    @invariant()
    def every_job_gets_exactly_one_answer(self):
        for name, task in self.tasks.items():
            if not task.done():
                continue
            if task.cancelled():
                assert name in self.cancelled
                continue
            outputs = task.result()
            assert len(outputs) == 1, outputs
            answer = outputs[0]
            assert ("images" in answer) != ("error" in answer)
            if name in self.stopped_waiting:
                assert answer["error"].endswith("stopped the job before it started; send it again.")
            if "timed out" in answer.get("error", "") or "JOB_TIMEOUT_S" in answer.get("error", ""):
                control = self.work.controls[name]
                assert control.started_at is not None and self.now[0] - control.started_at >= TIMEOUT_S

    def teardown(self):
        for control in self.work.controls.values():
            control.finish.set()
        for task in self.tasks.values():
            task.cancel()
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.loop.close()


RunnerMachine.TestCase.settings = settings(max_examples=8, stateful_step_count=14, deadline=None,
                                           suppress_health_check=list(HealthCheck))
test_runner_in_any_order = RunnerMachine.TestCase


class StudioMachine(RunnerMachine):
    """The same sequences through the studio's job list (its Start and Cancel) on the same Runner."""

    def __init__(self):
        super().__init__()
        from sdxl_worker.studio.jobs import Jobs, Limits

        self.jobs = Jobs(self.runner.run, unwatched_s=3600, limits=Limits(jobs=100))
        self.names: dict[str, str] = {}  # the studio's job id -> the fake work's name

    def snapshot(self):
        ended = tuple(sorted(job_id for job_id, job in self.jobs.jobs.items() if job.ended))
        return super().snapshot() + (ended,)

    def open_jobs(self):
        return sorted(self.names[job.id] for job in self.jobs.open())

    @rule(stuck=st.booleans())
    def submit(self, stuck):
        async def start():
            return self.jobs.start({"prompt": "x"})

        job = self.loop.run_until_complete(start())
        name = job.id  # the studio's job id is the job id the work sees
        self.names[name] = name
        self.work.controls[name] = Control(stuck)
        self.tasks[name] = job.task
        self.settle(self.snapshot)

    @precondition(lambda self: self.open_jobs())
    @rule(data=st.data())
    def cancel(self, data):
        name = data.draw(st.sampled_from(self.open_jobs()))
        assert self.jobs.cancel(name)
        self.cancelled.add(name)
        self.settle(self.snapshot)

    @invariant()
    def every_job_gets_exactly_one_answer(self):
        for name, job in self.jobs.jobs.items():
            ends = [event["event"] for event in job.events if event["event"] in ("result", "error", "cancelled")]
            assert len(ends) == (1 if job.ended else 0)
            if job.ended and ends[0] == "cancelled":
                assert name in self.cancelled
            if name in self.stopped_waiting and job.ended and ends[0] == "error":
                assert job.events[-1]["data"]["error"].endswith("stopped the job before it started; send it again.")
        assert len(self.jobs.open()) == len([task for task in self.tasks.values() if not task.done()])


StudioMachine.TestCase.settings = settings(max_examples=6, stateful_step_count=14, deadline=None,
                                           suppress_health_check=list(HealthCheck))
test_studio_jobs_in_any_order = StudioMachine.TestCase


def test_a_cancelled_job_still_reading_its_inputs_does_not_run_beside_the_next(monkeypatch):
    """Validation and downloads do not see the Stop at once: the cancelled job keeps its turn until
    its thread ends (or STOP_GRACE_S), so CONCURRENCY=1 means one job's work at a time."""
    monkeypatch.setattr(serve, "STOP_GRACE_S", 5.0)
    at_once, most, lock = [0], [0], threading.Lock()

    def slow_inputs(worker, job, on_progress, stop):
        with lock:
            at_once[0] += 1
            most[0] = max(most[0], at_once[0])
        time.sleep(0.4)  # reading a large body: no Stop check in here
        with lock:
            at_once[0] -= 1
        yield {"images": [job["id"]]}

    runner = Runner(None, run_job=slow_inputs)

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first", "input": {}}))
        await asyncio.sleep(0.1)
        first.cancel()
        started = time.monotonic()
        second = await answers(runner, {"id": "second", "input": {}})
        return second, time.monotonic() - started

    second, seconds = asyncio.run(scenario())
    assert second == [{"images": ["second"]}]
    assert most[0] == 1, "the next job's work ran beside the cancelled one's"
    assert seconds < 2  # it waited for the cancelled thread to end, not for the grace
