"""The threads work runs in (runtime/threads.py): the one denoise thread and the job threads.

How jobs use them under load (cancellations, stuck uploads, timeouts) is in test_job_order.py and
test_serve.py; here, each kind of thread pool on its own."""

import threading
import uuid

import pytest

from sdxl_worker.runtime.threads import JobThreads, LongLivedThreads

WAIT_S = 10


def test_long_lived_threads_run_work_in_order_in_the_same_named_thread():
    threads = LongLivedThreads("denoise")
    names, order = [], []
    futures = [threads.submit(lambda n=n: (names.append(threading.current_thread().name), order.append(n), n)[2])
               for n in range(5)]
    assert [future.result(WAIT_S) for future in futures] == [0, 1, 2, 3, 4]
    assert order == [0, 1, 2, 3, 4]
    assert set(names) == {"denoise-0"}
    assert threading.current_thread().name not in names


def test_a_failure_in_work_reaches_whoever_waits_and_the_thread_goes_on():
    threads = LongLivedThreads("denoise")
    failed = threads.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.result(WAIT_S)
    assert threads.submit(lambda: "next").result(WAIT_S) == "next"


def test_work_cancelled_before_it_starts_never_runs():
    threads = LongLivedThreads("denoise")
    release, ran = threading.Event(), []
    blocker = threads.submit(release.wait)
    cancelled = threads.submit(lambda: ran.append("cancelled"))
    assert cancelled.cancel()
    release.set()
    blocker.result(WAIT_S)
    assert threads.submit(lambda: "after").result(WAIT_S) == "after"
    assert ran == []


def test_a_job_thread_is_made_for_each_piece_of_work_while_the_others_are_busy():
    threads = JobThreads("job", keep=1)
    release = threading.Event()
    started = [threading.Event() for _ in range(3)]
    futures = [threads.submit(lambda n=n: (started[n].set(), release.wait(WAIT_S))) for n in range(3)]
    for event in started:
        assert event.wait(WAIT_S)  # all three run at once: none waits for a thread
    assert (threads.alive, threads.busy) == (3, 3)
    release.set()
    for future in futures:
        future.result(WAIT_S)
    _wait_for(lambda: threads.busy == 0 and threads.alive == 1)  # two end, `keep` stays idle


def test_an_idle_job_thread_is_reused_instead_of_making_a_new_one():
    threads = JobThreads("job", keep=2)
    first = threads.submit(lambda: threading.current_thread().name).result(WAIT_S)
    _wait_for(lambda: threads.busy == 0)
    second = threads.submit(lambda: threading.current_thread().name).result(WAIT_S)
    assert first == second == "job-0"
    _wait_for(lambda: threads.busy == 0)
    assert threads.alive == 1


def test_with_keep_zero_no_thread_outlives_its_work():
    threads = JobThreads("job", keep=0)
    assert threads.submit(lambda: 7).result(WAIT_S) == 7
    _wait_for(lambda: threads.alive == 0 and threads.busy == 0)


def test_a_failing_job_still_frees_its_thread():
    threads = JobThreads("job", keep=1)
    with pytest.raises(KeyError):
        threads.submit(lambda: {}["missing"]).result(WAIT_S)
    _wait_for(lambda: threads.busy == 0 and threads.alive == 1)
    assert threads.submit(lambda: "ok").result(WAIT_S) == "ok"


def test_when_no_thread_can_be_started_nothing_is_counted(monkeypatch):
    threads = JobThreads("job", keep=1)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(RuntimeError):
        threads.submit(lambda: None)
    assert (threads.alive, threads.busy) == (0, 0)


def _wait_for(condition) -> None:
    """The thread's own bookkeeping ends just after the future is set: wait for it, with a deadline."""
    done = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return
        done.wait(0.01)
    assert condition()


def _named(prefix: str) -> list:
    return [thread for thread in threading.enumerate() if thread.name.startswith(prefix + "-")]


def test_one_long_lived_thread_by_default_and_every_thread_is_a_daemon():
    name = f"denoise-once-{uuid.uuid4().hex[:8]}"  # its own: a long-lived thread outlives the test
    threads = LongLivedThreads(name)
    for _ in range(3):
        threads.submit(lambda: None).result(WAIT_S)
    made = _named(name)
    assert [thread.name for thread in made] == [f"{name}-0"] and made[0].daemon
    jobs = JobThreads("job-once")
    release = threading.Event()
    running = [jobs.submit(release.wait) for _ in range(2)]
    assert all(thread.daemon for thread in _named("job-once"))  # a worker told to exit does not wait for them
    assert jobs.alive == 2
    release.set()
    for work in running:
        work.result(WAIT_S)
    _wait_for(lambda: jobs.alive == 1)
    assert (jobs.alive, jobs.busy) == (1, 0)  # one idle thread kept by default, the other ended
