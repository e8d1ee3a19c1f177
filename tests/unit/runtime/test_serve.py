"""The Runner (runtime/serve.py) on fake work: what a job's caller gets back, when a job's turn
passes on, how JOB_TIMEOUT_S, a stuck job and SIGTERM are answered, and when the worker exits.

The same rules on the tiny model (the denoising ends within a step) are in
tests/scenarios/test_stops.py; submits, cancels and stops in any order in test_job_order.py."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from sdxl_worker.runtime import serve
from sdxl_worker.runtime.serve import Runner, _Turn
from sdxl_worker.runtime.stopping import JobStopped, Stop
from sdxl_worker.runtime.turns import Turns

TIMED_OUT_AT_STEP_2 = ("The job ran longer than JOB_TIMEOUT_S=30 s and was stopped at step 2 of 5; "
                       "ask for fewer steps or images, or raise JOB_TIMEOUT_S.")


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(serve, "_POLL_S", 0.005)


@pytest.fixture(autouse=True)
def no_real_exit(monkeypatch):
    """Every Runner here is given its own exit; the process's own would end the test run."""
    def exit_process():
        raise AssertionError("the process's own exit was called")

    monkeypatch.setattr(serve, "_exit_process", exit_process)


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "sdxl_worker.runtime.serve" and record.levelno == logging.WARNING]


class Work:
    """run_job's stand-in. Each job yields a preview, then waits until ``finish`` is set, checking its
    Stop every few milliseconds as run_job does between steps ("at step 2 of 5"), unless ``stuck``
    (a hung upload: after one check it ignores the Stop until released)."""

    def __init__(self, stuck: bool = False):
        self.stuck = stuck
        self.finish, self.release = threading.Event(), threading.Event()
        self.working = threading.Event()  # past its first check: from here a stuck one ignores its Stop
        self.calls: list[tuple] = []
        self.threads: list[str] = []  # the name of the thread each job ran in
        self.started: list[str] = []
        self.ended: list[str] = []
        self.running_now = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self, worker, job, on_progress, stop):
        self.calls.append((worker, job, on_progress, stop))
        self.threads.append(threading.current_thread().name)
        with self._lock:
            self.started.append(job.get("id"))
            self.running_now += 1
            self.most_at_once = max(self.most_at_once, self.running_now)
        try:
            yield {"preview": job.get("id")}
            stop.check("at step 2 of 5")
            self.working.set()
            while not self.finish.wait(0.003):
                if self.stuck:
                    if self.release.wait(0.003):
                        break
                    continue
                stop.check("at step 2 of 5")
            yield {"images": [job.get("id")]}
        except JobStopped as stopped:
            yield {"error": str(stopped)}
        finally:
            with self._lock:
                self.running_now -= 1
                self.ended.append(job.get("id"))


async def answers(runner: Runner, job: dict) -> list:
    return [output async for output in runner.run(job)]


async def until(condition, timeout: float = 10) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "waited in vain"
        await asyncio.sleep(0.002)


def wait_until(condition, timeout: float = 10) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "waited in vain"
        time.sleep(0.002)


# What the caller gets back


def test_a_job_hands_over_its_outputs_in_order_and_counts_as_running_until_answered():
    work = Work()
    progress = object()
    runner = Runner("the worker", on_progress=progress, run_job=work)

    async def scenario():
        task = asyncio.create_task(answers(runner, {"id": "job-1", "input": {"prompt": "a"}}))
        await until(lambda: work.started)
        running = list(runner.running.values())
        work.finish.set()
        outputs = await task
        await asyncio.sleep(0)  # the task's done callback
        return running, outputs

    running, outputs = asyncio.run(scenario())
    assert running == ["job-1"]
    assert outputs == [{"preview": "job-1"}, {"images": ["job-1"]}]
    assert runner.running == {}
    worker, job, on_progress, stop = work.calls[0]
    assert (worker, job, on_progress) == ("the worker", {"id": "job-1", "input": {"prompt": "a"}}, progress)
    assert isinstance(stop, Stop) and stop.timeout_s is None


def test_a_job_without_an_id_is_counted_as_local():
    work = Work()
    runner = Runner(None, run_job=work)

    async def scenario():
        task = asyncio.create_task(answers(runner, {"input": {}}))
        await until(lambda: work.calls)
        running = list(runner.running.values())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return running

    assert asyncio.run(scenario()) == ["local"]


def test_one_job_runs_at_a_time_by_default_and_the_next_starts_when_it_is_answered():
    work = Work()
    runner = Runner(None, run_job=work)

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first"}))
        second = asyncio.create_task(answers(runner, {"id": "second"}))
        await until(lambda: work.started)
        await asyncio.sleep(0.05)
        waiting = (list(work.started), runner.turns.waiting)
        work.finish.set()
        return waiting, await first, await second

    waiting, first, second = asyncio.run(scenario())
    assert waiting == (["first"], 1)
    assert first[-1] == {"images": ["first"]} and second[-1] == {"images": ["second"]}
    assert work.most_at_once == 1


def test_concurrency_two_runs_two_jobs_at_once_and_keeps_two_threads():
    work = Work()
    runner = Runner(None, concurrency=2, run_job=work)

    async def scenario():
        tasks = [asyncio.create_task(answers(runner, {"id": f"job-{n}"})) for n in range(3)]
        await until(lambda: len(work.started) == 2)
        await asyncio.sleep(0.05)
        two = sorted(work.started)
        work.finish.set()
        await asyncio.gather(*tasks)
        return two

    assert asyncio.run(scenario()) == ["job-0", "job-1"]
    assert work.most_at_once == 2
    assert all(name.startswith("job-") for name in work.threads), work.threads  # "job-N" in a thread dump
    wait_until(lambda: runner.threads.busy == 0)
    assert runner.threads.alive == 2 and runner.turns.running == 0


def test_a_job_cancelled_in_line_never_starts_and_the_line_moves_on():
    work = Work()
    runner = Runner(None, run_job=work)

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first"}))
        queued = asyncio.create_task(answers(runner, {"id": "queued"}))
        last = asyncio.create_task(answers(runner, {"id": "last"}))
        await until(lambda: runner.turns.waiting == 2)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        work.finish.set()
        return await first, await last

    first, last = asyncio.run(scenario())
    assert work.started == ["first", "last"]
    assert last == [{"preview": "last"}, {"images": ["last"]}]


def test_a_job_stopped_in_line_is_answered_at_once_while_the_job_ahead_runs_on():
    work = Work()
    runner = Runner(None, run_job=work)

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first"}))
        queued = asyncio.create_task(answers(runner, {"id": "queued"}))
        await until(lambda: runner.turns.waiting == 1)
        stops = {job_id: stop for stop, job_id in runner.running.items()}
        stops["queued"].stop("shutting down")  # as SIGTERM does, for one job
        answer = await asyncio.wait_for(queued, 5)
        ahead_still_running = not first.done()
        work.finish.set()
        await first
        return answer, ahead_still_running

    answer, ahead_still_running = asyncio.run(scenario())
    assert answer == [{"error": "The worker is shutting down (SIGTERM) and stopped the job before it started; "
                                "send it again."}]
    assert ahead_still_running and work.started == ["first"]


def test_a_cancelled_running_job_stops_at_its_next_check_and_gives_its_turn_to_the_next():
    work = Work()
    runner = Runner(None, run_job=work)

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first"}))
        await until(lambda: work.started)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await until(lambda: work.ended)
        stop = work.calls[0][3]
        second = asyncio.create_task(answers(runner, {"id": "second"}))
        await until(lambda: len(work.started) == 2)
        work.finish.set()
        return stop, await second

    stop, second = asyncio.run(scenario())
    assert (stop.reason, stop.message()) == ("cancelled", "The job was cancelled at step 2 of 5.")
    assert second[-1] == {"images": ["second"]}


def test_a_cancel_that_arrives_with_an_output_still_stops_the_job(monkeypatch):
    """An output and a cancel handled in the same turn of the loop: asyncio.wait_for (before Python
    3.12) hands back the output and drops the cancel, and the job ran on to its end."""
    monkeypatch.setattr(serve, "_POLL_S", 5.0)  # the job's task waits for its output, no poll in between
    loop_and_task, gate, both_queued = {}, threading.Event(), threading.Event()

    def work(worker, job, on_progress, stop):
        gate.wait(5)
        yield {"preview": job["id"]}  # handed to the loop ...
        loop_and_task["loop"].call_soon_threadsafe(loop_and_task["task"].cancel)  # ... and the cancel after it
        both_queued.set()
        give_up = time.monotonic() + 5
        while not stop.stopped and time.monotonic() < give_up:
            time.sleep(0.005)
        yield {"images": [job["id"]]} if not stop.stopped else {"error": stop.message()}

    runner = Runner(None, run_job=work)

    async def scenario():
        loop_and_task["loop"] = asyncio.get_running_loop()
        task = loop_and_task["task"] = asyncio.create_task(answers(runner, {"id": "cancelled"}))
        await until(lambda: runner.threads.busy == 1)
        await asyncio.sleep(0.05)  # the task waits for the job's first output
        gate.set()
        assert both_queued.wait(5)  # the loop is held here: it finds the output and the cancel together
        await asyncio.gather(task, return_exceptions=True)
        return task

    task = asyncio.run(scenario())
    assert task.cancelled(), f"the cancel was lost: {task.result()}"


# JOB_TIMEOUT_S


def test_the_timeout_counts_from_the_jobs_turn_not_from_its_wait_in_line():
    now = [0.0]
    work = Work()
    runner = Runner(None, timeout_s=30, run_job=work, clock=lambda: now[0])

    async def scenario():
        first = asyncio.create_task(answers(runner, {"id": "first"}))
        second = asyncio.create_task(answers(runner, {"id": "second"}))
        await until(lambda: work.started)
        now[0] = 29.0  # the first job near its limit, the second still in line
        await asyncio.sleep(0.05)
        first_done = work.finish.is_set()
        work.finish.set()
        first_outputs = await first
        await until(lambda: len(work.started) == 2)
        deadline = work.calls[1][3].deadline
        return first_done, first_outputs, await second, deadline

    first_done, first, second, deadline = asyncio.run(scenario())
    assert first_done is False and first[-1] == {"images": ["first"]}
    assert second[-1] == {"images": ["second"]}, "the second job's 29 s in line did not count"
    assert deadline == 59.0  # its turn came at 29 s


def test_a_job_past_its_deadline_is_answered_with_the_limit_and_how_far_it_got():
    now = [0.0]
    work = Work()
    runner = Runner(None, timeout_s=30, run_job=work, clock=lambda: now[0])

    async def scenario():
        task = asyncio.create_task(answers(runner, {"id": "slow"}))
        await until(lambda: work.started)
        now[0] = 29.99
        await asyncio.sleep(0.05)
        early = task.done()
        now[0] = 30.0
        return early, await task

    early, outputs = asyncio.run(scenario())
    assert early is False
    assert outputs == [{"preview": "slow"}, {"error": TIMED_OUT_AT_STEP_2}]


def test_a_stuck_job_past_its_deadline_is_answered_for_it_after_the_grace_and_the_next_starts_at_once(
        monkeypatch, caplog):
    monkeypatch.setattr(serve, "STOP_GRACE_S", 0.3)
    now = [0.0]
    stuck, quick = Work(stuck=True), Work()
    quick.finish.set()
    runner = Runner(None, timeout_s=30, run_job=lambda w, job, p, s: (stuck if job["id"] == "stuck" else quick)(w, job, p, s),
                    clock=lambda: now[0])

    async def scenario():
        task = asyncio.create_task(answers(runner, {"id": "stuck"}))
        await until(stuck.working.is_set)
        now[0] = 30.0  # its deadline to the tick: the Runner stops it (a stuck job does not look)
        stopped = time.monotonic()
        outputs = await task
        answered_after = time.monotonic() - stopped
        assert runner.turns.running == 0, "its turn passed on at once: it had its grace already"
        after = await asyncio.wait_for(answers(runner, {"id": "next"}), 5)
        return outputs, answered_after, after

    try:
        with caplog.at_level(logging.WARNING, logger="sdxl_worker.runtime.serve"):
            outputs, answered_after, after = asyncio.run(scenario())
        assert outputs == [{"preview": "stuck"}, {"error": TIMED_OUT_AT_STEP_2}]
        assert 0.3 <= answered_after < 3
        assert after == [{"preview": "next"}, {"images": ["next"]}], "the next job ran while the stuck one hung"
        wait_until(lambda: runner.threads.busy == 1)
        assert stuck.ended == [], "the stuck job's thread is left to finish"
        assert warnings_of(caplog) == [
            "job stuck did not stop within 0.3 s (at step 2 of 5); answered, its thread left to finish"]
    finally:
        stuck.release.set()
    wait_until(lambda: stuck.ended == ["stuck"])


# A job's turn (_Turn)


def working_turn(turns: Turns, grace_s: float | None = None) -> _Turn:
    """A job's turn, granted, with its thread started."""
    async def ask():
        return turns.ask()

    turn = _Turn(turns, asyncio.run(ask()))
    if grace_s is not None:
        turn.grace_s = grace_s
    turn.thread_started()
    return turn


def test_a_turn_passes_on_when_the_job_is_answered_and_its_thread_has_ended():
    turns = Turns(1)
    turn = working_turn(turns)
    assert turn.grace_s == 2.0, "STOP_GRACE_S"
    turn.thread_ended()
    assert turns.running == 1, "not answered yet"
    turn.answered()
    assert turns.running == 0


def test_a_turn_answered_while_its_thread_works_passes_on_when_the_thread_ends_or_after_the_grace():
    turns = Turns(1)
    ends_first = working_turn(turns, grace_s=5.0)
    ends_first.answered()
    assert turns.running == 1, "its thread still works"
    ends_first.thread_ended()
    assert turns.running == 0, "passed on as the thread ended, not 5 s later"

    grace_first = working_turn(turns, grace_s=0.5)
    answered = time.monotonic()
    grace_first.answered()
    assert turns.running == 1
    wait_until(lambda: turns.running == 0, timeout=5)
    assert time.monotonic() - answered >= 0.5
    grace_first.thread_ended()  # given back once only
    assert turns.running == 0

    no_grace = working_turn(turns, grace_s=0)  # a job answered for its stuck thread had its grace already
    no_grace.answered()
    assert turns.running == 0
    no_grace.thread_ended()
    assert turns.running == 0


# SIGTERM


def test_sigterm_answers_every_running_and_waiting_job_then_exits_once(caplog):
    work = Work()
    exits = []
    runner = Runner(None, concurrency=2, run_job=work, exit_process=lambda: exits.append(time.monotonic()))

    async def scenario():
        tasks = [asyncio.create_task(answers(runner, {"id": f"job-{n}"})) for n in range(3)]
        await until(lambda: len(work.started) == 2)
        await until(lambda: runner.turns.waiting == 1)
        with caplog.at_level(logging.WARNING, logger="sdxl_worker.runtime.serve"):
            runner.shut_down()
            runner.shut_down()  # runpod may signal twice: one stop, one exit
        outputs = await asyncio.gather(*tasks)
        late = await answers(runner, {"id": "late"})
        return outputs, late

    outputs, late = asyncio.run(scenario())
    answered = {o[0].get("preview", "in line"): o[-1]["error"] for o in outputs}
    assert answered == {
        "job-0": "The worker is shutting down (SIGTERM) and stopped the job at step 2 of 5; send it again.",
        "job-1": "The worker is shutting down (SIGTERM) and stopped the job at step 2 of 5; send it again.",
        "in line": "The worker is shutting down (SIGTERM) and stopped the job before it started; send it again.",
    }
    assert late == [{"error": "The worker is shutting down (SIGTERM) and stopped the job before it started; "
                              "send it again."}]
    assert sorted(work.started) == ["job-0", "job-1"], "neither the waiting job nor the late one started"
    wait_until(lambda: exits, timeout=5)
    time.sleep(0.2)
    assert len(exits) == 1
    assert warnings_of(caplog) == ["SIGTERM: stopping 3 running job(s), then exiting"]


def test_after_sigterm_the_worker_exits_once_its_jobs_are_answered_not_before():
    work = Work(stuck=True)
    exits = []
    runner = Runner(None, run_job=work, exit_process=lambda: exits.append(time.monotonic()))
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(answers(runner, {"id": "upload"}))
        loop.run_until_complete(until(work.working.is_set))
        runner.shut_down()
        loop.run_until_complete(asyncio.sleep(0.3))
        assert exits == [] and not task.done(), "its answer is still awaited"
        work.release.set()
        outputs = loop.run_until_complete(task)
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        work.release.set()
        loop.close()
    assert outputs[-1] == {"images": ["upload"]}, "it finished its upload within the grace"
    wait_until(lambda: exits, timeout=5)


def test_after_sigterm_the_worker_waits_for_jobs_runpod_took_but_has_not_handed_over(caplog):
    pending, exits = [1], []
    runner = Runner(worker=None, exit_process=lambda: exits.append(time.monotonic()), pending=lambda: pending[0])
    with caplog.at_level(logging.INFO, logger="sdxl_worker.runtime.serve"):
        runner.shut_down()
        waiting = [thread for thread in threading.enumerate() if thread.name == "shutdown"]
        assert len(waiting) == 1 and waiting[0].daemon, "a daemon thread named shutdown waits to exit"
        time.sleep(0.3)
        assert exits == [], "a job taken just before SIGTERM is still to be answered"
        pending[0] = 0  # runpod handed it over, the Runner answered it "shutting down", runpod posted that
        wait_until(lambda: exits, timeout=5)
    assert len(exits) == 1
    assert "every job answered; exiting" in caplog.text


def test_after_sigterm_jobs_that_never_answer_do_not_keep_the_worker_alive(monkeypatch, caplog):
    """RunPod kills a worker 10 s after SIGTERM; the worker gives up waiting at 8 s and exits itself."""
    assert serve.EXIT_WITHIN_S == 8.0
    monkeypatch.setattr(serve, "EXIT_WITHIN_S", 1.0)  # the same rule, sooner
    work = Work(stuck=True)
    exits = []
    runner = Runner(worker=None, concurrency=2, run_job=work, exit_process=lambda: exits.append(time.monotonic()))
    loop = asyncio.new_event_loop()
    try:
        tasks = [loop.create_task(answers(runner, {"id": name})) for name in ("upload-a", "upload-b")]
        loop.run_until_complete(until(lambda: len(work.started) == 2))
        loop.run_until_complete(asyncio.sleep(0.05))
        with caplog.at_level(logging.WARNING, logger="sdxl_worker.runtime.serve"):
            signalled = time.monotonic()
            runner.shut_down()  # their uploads hang, and the loop that would answer for them is busy
            wait_until(lambda: exits, timeout=10)
    finally:
        work.release.set()
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()
    assert len(exits) == 1, "the worker waited past its limit"
    assert 1.0 <= exits[0] - signalled < 3
    assert warnings_of(caplog)[-1] == "exiting after 1 s with jobs unanswered: upload-a, upload-b; runpod holds 0"


def test_after_sigterm_a_job_runpod_never_hands_over_does_not_keep_the_worker_alive(monkeypatch, caplog):
    monkeypatch.setattr(serve, "EXIT_WITHIN_S", 0.5)
    exits = []
    runner = Runner(worker=None, exit_process=lambda: exits.append(time.monotonic()), pending=lambda: 1)
    with caplog.at_level(logging.WARNING, logger="sdxl_worker.runtime.serve"):
        runner.shut_down()
        wait_until(lambda: exits, timeout=10)
    assert warnings_of(caplog)[-1] == "exiting after 0.5 s with jobs unanswered: none here; runpod holds 1"
