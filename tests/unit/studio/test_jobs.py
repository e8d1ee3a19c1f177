"""The studio's jobs (studio/jobs.py): events carry what the page needs, intact; a watcher can join
late; a job no page watches is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import pytest

from sdxl_worker.studio.jobs import Busy, Jobs, Limits, for_the_page, kind_of, sse


def test_events_name_what_came_and_keep_a_seed_of_19_digits_whole():
    assert [kind_of(o) for o in ({"preview": "data:", "step": 2}, {"step": 3, "total_steps": 9, "stage": "base"},
                                 {"images": []}, {"error": "x"}, {"status": "IN_QUEUE"})] == [
        "preview", "progress", "result", "error", "status"]
    seed = 9_007_199_254_740_993  # 2^53 + 1: a browser's JSON.parse would make it ...992
    text = sse({"event": "result", "data": {"seeds": [seed, 5], "seed": seed, "ok": True}}).decode()
    assert text.startswith("event: result\ndata: ") and text.endswith("\n\n")
    data = json.loads(text.split("data: ", 1)[1])
    assert data == {"seeds": [str(seed), 5], "seed": str(seed), "ok": True}


def test_a_late_watcher_gets_the_latest_preview_then_what_follows_and_cancel_ends_the_job():
    async def source(job):
        yield {"preview": "data:a", "step": 1, "total_steps": 3, "stage": "base"}
        yield {"preview": "data:b", "step": 2, "total_steps": 3, "stage": "base"}
        await asyncio.sleep(30)  # a long last step: the page's Cancel arrives here
        yield {"images": ["data:c"], "seed": 1}

    async def scenario():
        jobs = Jobs(source)
        job = jobs.start({"prompt": "a"})
        await asyncio.sleep(0.05)
        seen = []
        async for event in jobs.watch(job.id):
            seen.append((event["event"], event["data"].get("preview")))
            if event["event"] == "preview":
                assert jobs.cancel(job.id)
        assert not jobs.cancel(job.id)  # already over
        # A step report from the worker's thread after the cancel: the job stays ended.
        jobs.progress({"id": job.id}, {"step": 3, "total_steps": 3, "stage": "base"})
        await asyncio.sleep(0.05)
        assert job.ended and job.events[-1]["event"] == "cancelled"
        return seen

    assert asyncio.run(scenario()) == [("preview", "data:b"), ("cancelled", None)]


def test_a_job_no_page_watches_is_cancelled_and_an_error_object_becomes_text():
    async def failing(job):
        yield {"error": {"message": "worker exploded", "code": 500}}

    async def scenario():
        jobs = Jobs(_slow, unwatched_s=0.2)
        unwatched = jobs.start({"prompt": "a"})
        await asyncio.sleep(0.5)
        jobs.source = failing
        failed = jobs.start({"prompt": "b"})
        events = [event async for event in jobs.watch(failed.id)]
        return unwatched.events[-1]["event"], events[-1]

    ended, failure = asyncio.run(scenario())
    assert ended == "cancelled"
    assert failure["event"] == "error" and json.loads(failure["data"]["error"]) == {"message": "worker exploded",
                                                                                    "code": 500}


async def _slow(job):
    """A source whose job runs until it is cancelled (its one step takes 30 s)."""
    await asyncio.sleep(30)
    yield {"images": []}


def _run(scenario, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(scenario(), timeout))


def _outputs(*outputs, then=None):
    """A source yielding ``outputs``, then raising ``then`` (an exception) if given; it records each job."""
    seen = []

    async def source(job):
        seen.append(job)
        for output in outputs:
            yield output
        if then is not None:
            raise then
    source.seen = seen
    return source


async def _events_of(jobs: Jobs, job_id: str) -> list:
    return [event async for event in jobs.watch(job_id)]


@pytest.mark.parametrize("output, kind", [
    ({"error": "x", "step": 1}, "error"), ({"preview": "data:", "images": []}, "preview"), ({"images": []}, "result"),
    ({"result": "the result is on its way"}, "notice"), ({"status": "IN_QUEUE"}, "status"),
    ({"status": "IN_PROGRESS", "step": 2}, "progress"), ({"step": 2, "total_steps": 9}, "progress"), ({}, "progress"),
])
def test_each_output_is_one_kind_of_event(output, kind):
    assert kind_of(output) == kind


def test_integers_past_2_to_the_53_reach_the_page_as_text():
    assert for_the_page({"a": [2**53 - 1, 2**53, -(2**53)], "b": True}) == \
        {"a": [2**53 - 1, str(2**53), str(-(2**53))], "b": True}


def test_a_job_runs_its_input_under_a_random_id_and_numbers_its_events():
    source = _outputs({"status": "IN_QUEUE"}, {"step": 1, "total_steps": 2}, {"images": ["data:x"], "seed": 3})

    async def scenario():
        jobs = Jobs(source)
        job = jobs.start({"prompt": "a fox"}, size=1234)
        job.started -= 1.25  # as if it started a second and a quarter ago
        events = await _events_of(jobs, job.id)
        return jobs, job, events

    jobs, job, events = _run(scenario)
    assert len(job.id) == 22 and job.size == 1234  # 16 random bytes, URL-safe
    assert source.seen == [{"id": job.id, "input": {"prompt": "a fox"}}]
    assert [(event["event"], event["number"]) for event in events] == [("status", 1), ("progress", 2), ("result", 3)]
    seconds = events[-1]["data"].pop("seconds")
    assert events[-1]["data"] == {"images": ["data:x"], "seed": 3}
    assert 1.25 <= seconds < 2 and seconds == round(seconds, 3)  # since the job started, to the millisecond
    assert jobs.open() == [] and jobs.streams == 0 and job.watchers == 0


@pytest.mark.parametrize("source, event, data", [
    (_outputs({"step": 1}), "error", {"error": "The job ended without a result."}),
    (_outputs(then=RuntimeError("the endpoint is unreachable")), "error", {"error": "the endpoint is unreachable"}),
    (_outputs(then=ValueError()), "error", {"error": "ValueError"}),
    (_outputs({"error": {"message": "x" * 600}}), "error", {"error": ('{"message": "' + "x" * 600)[:500]}),
    (_outputs({"images": []}, {"step": 9}), "result", {"images": []}),  # nothing after the end
])
def test_how_each_job_ends(source, event, data):
    async def scenario():
        jobs = Jobs(source)
        job = jobs.start({})
        return await _events_of(jobs, job.id)

    last = _run(scenario)[-1]
    assert last["event"] == event and {key: value for key, value in last["data"].items() if key != "seconds"} == data


def test_a_cancelled_job_says_so_and_only_a_running_job_can_be_cancelled():
    async def scenario():
        jobs = Jobs(_slow)
        job = jobs.start({})
        await asyncio.sleep(0)
        assert not jobs.cancel("no-such-job")
        assert jobs.cancel(job.id)
        events = await _events_of(jobs, job.id)
        assert not jobs.cancel(job.id)
        quick = Jobs(_outputs({"images": []}))
        done = quick.start({})
        await _events_of(quick, done.id)
        return events, quick.cancel(done.id)

    events, cancelled_after_end = _run(scenario)
    assert events[-1]["event"] == "cancelled" and events[-1]["data"]["message"] == "Cancelled."
    assert cancelled_after_end is False


def test_step_reports_from_another_thread_become_progress_events():
    async def scenario():
        jobs = Jobs(_slow)
        jobs.progress({"id": "before-any-job"}, {"step": 1})  # no loop yet: ignored
        job = jobs.start({})
        thread = threading.Thread(target=jobs.progress, args=({"id": job.id}, {"step": 4, "total_steps": 9}))
        thread.start()
        thread.join()
        jobs.progress({"id": "another"}, {"step": 1})
        jobs.progress({}, {"step": 1})
        for _ in range(100):
            if job.events:
                break
            await asyncio.sleep(0.01)
        jobs.cancel(job.id)
        return job.events[0]

    first = _run(scenario)
    assert first["event"] == "progress" and first["number"] == 1
    assert {key: value for key, value in first["data"].items() if key != "seconds"} == {"step": 4, "total_steps": 9}


def test_the_caps_on_jobs_and_their_bytes_say_which_was_reached():
    async def scenario():
        jobs = Jobs(_slow, limits=Limits(jobs=2, held_bytes=100, streams=1))
        first = jobs.start({}, size=60)
        jobs.room_for(40)  # exactly the cap: room
        with pytest.raises(Busy) as busy:
            jobs.room_for(41)
        assert str(busy.value) == ("The jobs queued here already hold close to 100 bytes of input images, this "
                                   "studio's limit; wait for one to end, or send smaller images.")
        jobs.arriving = 10
        with pytest.raises(Busy):
            jobs.room_for(31)  # bodies still arriving count too
        jobs.arriving = 0
        jobs.start({}, size=0)
        with pytest.raises(Busy) as busy:
            jobs.start({})
        assert str(busy.value) == ("This studio already has 2 jobs queued or running, its limit; wait for one to "
                                   "end or cancel one.")
        jobs.cancel(first.id)  # before its task ever ran: it still ends, and gives its place back
        await asyncio.sleep(0.01)
        assert len(jobs.open()) == 1 and first.events[-1]["event"] == "cancelled"
        assert first.events[-1]["data"]["message"] == "Cancelled."
        jobs.start({})  # a place freed by the cancel
        for job in jobs.open():
            jobs.cancel(job.id)

    _run(scenario)


def test_the_cap_on_event_streams_holds_and_each_stream_gives_its_place_back():
    async def slow(job):
        yield {"step": 1}
        await asyncio.sleep(30)
        yield {"images": []}

    async def scenario():
        jobs = Jobs(slow, limits=Limits(streams=1))
        job = jobs.start({})
        await asyncio.sleep(0.01)
        first, second = jobs.watch(job.id), jobs.watch(job.id)  # both asked before either began
        await first.__anext__()
        with_second = [event async for event in second]  # past the cap: ends at once, with one error event
        with pytest.raises(Busy) as busy:
            jobs.watch(job.id)
        await first.aclose()
        assert jobs.streams == 0 and job.watchers == 0
        jobs.watch(job.id)  # a place again
        jobs.cancel(job.id)
        return with_second, str(busy.value)

    with_second, refusal = _run(scenario)
    limit = "This studio already has 1 event streams open, its limit; close other studio tabs and reload."
    assert with_second == [{"event": "error", "data": {"error": limit}, "number": 0}]
    assert refusal == limit


def test_a_watched_job_is_not_cancelled_and_an_unwatched_one_is_after_its_delay():
    async def scenario():
        jobs = Jobs(_slow, unwatched_s=0.05)
        watched = jobs.start({})
        stream = jobs.watch(watched.id)
        waiting = asyncio.ensure_future(stream.__anext__())  # the page holds the stream open
        await asyncio.sleep(0.3)
        still_running = not watched.ended
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await stream.aclose()
        await asyncio.sleep(0.3)  # unwatched now: cancelled at the next look
        return still_running, watched.events[-1]["event"] if watched.events else None

    assert _run(scenario) == (True, "cancelled")


def test_only_the_last_20_finished_jobs_are_kept():
    async def scenario():
        jobs = Jobs(_outputs({"images": []}))
        made = []
        for _ in range(22):
            made.append(jobs.start({}))
            await _events_of(jobs, made[-1].id)
        return [job.id for job in made], list(jobs.jobs)

    made, kept = _run(scenario)
    assert kept == made[2:]


def test_two_pages_watching_one_job_count_as_two_streams_and_two_watchers():
    async def slow(job):
        yield {"step": 1}
        await asyncio.sleep(30)
        yield {"images": []}

    async def scenario():
        jobs = Jobs(slow)
        job = jobs.start({})
        await asyncio.sleep(0.01)
        first, second = jobs.watch(job.id), jobs.watch(job.id)
        await first.__anext__()
        await second.__anext__()
        both = (jobs.streams, job.watchers)
        await first.aclose()
        one = (jobs.streams, job.watchers)
        await second.aclose()
        jobs.cancel(job.id)
        return both, one

    assert _run(scenario) == ((2, 2), (1, 1))


def test_a_source_that_fails_is_logged_with_the_job_and_the_reason(caplog):
    async def unreachable(job):
        raise ConnectionError("the endpoint refused the connection")
        yield  # an async generator

    async def scenario():
        jobs = Jobs(unreachable)
        job = jobs.start({})
        await asyncio.sleep(0.05)
        return job

    with caplog.at_level("WARNING", logger="sdxl_worker.studio.jobs"):
        job = _run(scenario)
    assert [record.getMessage() for record in caplog.records if record.name == "sdxl_worker.studio.jobs"] == [
        f"studio job {job.id} failed: the endpoint refused the connection"]
    assert job.events[-1]["data"]["error"] == "the endpoint refused the connection"
