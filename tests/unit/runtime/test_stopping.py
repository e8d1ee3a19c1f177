"""A job's stop switch (runtime/stopping.py): the sentence each reason gives, the deadline from the job's start."""

from __future__ import annotations

import pytest

from sdxl_worker.runtime.stopping import CANCELLED, SHUTTING_DOWN, TIMED_OUT, JobStopped, Stop


def test_each_reason_is_one_sentence_saying_how_far_the_job_got():
    for reason, sentence in [
        (CANCELLED, "The job was cancelled at step 3 of 10."),
        (SHUTTING_DOWN, "The worker is shutting down (SIGTERM) and stopped the job at step 3 of 10; send it again."),
    ]:
        stop = Stop()
        stop.stop(reason)
        with pytest.raises(JobStopped) as stopped:
            stop.check("at step 3 of 10")
        assert (stopped.value.reason, str(stopped.value)) == (reason, sentence)


def test_the_first_reason_wins_and_a_job_not_stopped_goes_on():
    stop = Stop()
    stop.check("at step 1 of 2")  # nothing happens
    stop.stop(CANCELLED)
    stop.stop(SHUTTING_DOWN)
    with pytest.raises(JobStopped, match="^The job was cancelled at step 1 of 2.$"):
        stop.check()  # where it last was


def test_the_timeout_counts_from_the_jobs_start_not_from_its_wait_in_line():
    now = [100.0]
    stop = Stop(timeout_s=30, clock=lambda: now[0])
    now[0] += 1000  # waited in line for its turn: no time counted
    stop.check("before it started")
    stop.begin()
    now[0] += 29.9
    stop.check("at step 5 of 40")
    now[0] += 0.1
    with pytest.raises(JobStopped) as stopped:
        stop.check("at step 6 of 40")
    assert stopped.value.reason == TIMED_OUT
    assert str(stopped.value) == ("The job ran longer than JOB_TIMEOUT_S=30 s and was stopped at step 6 of 40; "
                                  "ask for fewer steps or images, or raise JOB_TIMEOUT_S.")
