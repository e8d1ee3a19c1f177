"""The studio's jobs (studio/jobs.py): events carry what the page needs, intact; a watcher can join
late; a job no page watches is cancelled."""

from __future__ import annotations

import asyncio
import json

from sdxl_worker.studio.jobs import Jobs, kind_of, sse


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
    async def slow(job):
        await asyncio.sleep(30)
        yield {"images": []}

    async def failing(job):
        yield {"error": {"message": "worker exploded", "code": 500}}

    async def scenario():
        jobs = Jobs(slow, unwatched_s=0.2)
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
