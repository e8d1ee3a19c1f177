"""What the HTTP server adds per job, and how soon the first preview reaches a client, on the tiny model.

    OMP_NUM_THREADS=2 python bench/http_overhead.py [rounds]

(Not bench/http.py, as issue 33 named it: a script folder holding http.py shadows the standard
library's http package for every other script run from it.)

One process: the server (sdxl_worker.api, on uvicorn in a thread, on loopback) and the client
(httpx). Each round runs the same small job four ways, interleaved (the machine is shared and
noisy, so each round compares neighbours): ``run_job`` called directly (the job code, as the
queue worker's Runner calls it), ``POST /v1/jobs`` (JSON answer), ``POST /v1/images/generations``
(OpenAI's shape) and ``POST /v1/jobs`` as Server-Sent Events. The time counted is from the call to
the decoded answer in the caller's hands. The first-preview rows time the same job with
``preview_steps: 1``: to run_job's first preview, and to the first ``preview`` event over SSE.
The goal (issue 33): at most 5 ms extra per job.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time

import torch

JOB = {"prompt": "a lighthouse at dusk", "width": 256, "height": 256, "num_inference_steps": 4, "seed": 7,
       "refine": "no_refiner"}


def main(rounds: int) -> int:
    import httpx
    import uvicorn

    from sdxl_worker import config
    from sdxl_worker.api.app import create_app
    from sdxl_worker.api.jobs import Jobs
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models
    from sdxl_worker.runtime.job import _models_in_use, run_job
    from sdxl_worker.runtime.serve import Runner
    from sdxl_worker.runtime.stopping import CANCELLED, Stop
    from sdxl_worker.runtime.worker import Worker

    models = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))
    worker = Worker.build(models, config.load())
    jobs = Jobs(1, 2)
    jobs.ready(worker, lambda on_progress: Runner(worker, None, 1, on_progress=on_progress))
    server = uvicorn.Server(uvicorn.Config(create_app(jobs), host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    url = "http://127.0.0.1:%d" % server.servers[0].sockets[0].getsockname()[1]
    client = httpx.Client(base_url=url, timeout=60)

    def direct(job=JOB, first_preview=False):
        """The answer; with ``first_preview``, the milliseconds to the first preview (the job then
        stopped, as a client going away stops it)."""
        started, stop = time.perf_counter(), Stop()
        for output in run_job(worker, {"id": "bench", "input": job}, None, stop):
            if first_preview and "preview" in output and not stop.stopped:
                at = (time.perf_counter() - started) * 1000
                stop.stop(CANCELLED)
        return at if first_preview else output

    def native():
        return client.post("/v1/jobs", json={"input": JOB}).json()

    def openai():
        return client.post("/v1/images/generations", json={
            "prompt": JOB["prompt"], "size": "256x256", **{k: v for k, v in JOB.items() if k not in
                                                           ("prompt", "width", "height")}}).json()

    def events(job=JOB, first_preview=False):
        started = time.perf_counter()
        with client.stream("POST", "/v1/jobs", json={"input": job}, headers={"Accept": "text/event-stream"}) as answer:
            kind = None
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and first_preview and kind == "preview":
                    return (time.perf_counter() - started) * 1000  # closing the stream stops the job
                elif line.startswith("data: ") and kind == "result":
                    return json.loads(line[6:])

    previewed = {**JOB, "preview_steps": 1}
    ways = {"run_job, direct": direct, "POST /v1/jobs": native, "POST /v1/images/generations": openai,
            "POST /v1/jobs, SSE": events,
            "first preview: run_job": lambda: direct(previewed, True),
            "first preview: SSE event": lambda: events(previewed, True)}
    for run in ways.values():  # warm-up, and the answers agree
        run()
    same = direct()["images"][0] == native()["images"][0] == events()["images"][0]
    def settle() -> None:
        """Until no job is left on the server (a stream closed at its first preview stops its job
        in the background) and the models are free, so each way starts from the same quiet."""
        while jobs.runner.running or jobs.admitted or _models_in_use.locked():
            time.sleep(0.002)

    times = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            settle()
            started = time.perf_counter()
            answer = run()
            times[name].append(answer if name.startswith("first") else (time.perf_counter() - started) * 1000)
    server.should_exit = True

    def row(name: str, against: str) -> str:
        ms = statistics.median(times[name])
        extra = statistics.median(a - b for a, b in zip(times[name], times[against]))
        return f"| {name} | {ms:.1f} | {extra:+.1f} | {ms / statistics.median(times[against]):.3f}x |"

    print(f"tiny model, CPU, 256x256, 4 steps, base only, {rounds} interleaved rounds "
          f"(torch threads {torch.get_num_threads()}); same images every way: {'yes' if same else 'NO'}")
    print("| path | median ms | extra ms (median of pairs) | ratio |")
    print("| --- | --- | --- | --- |")
    for name in ("run_job, direct", "POST /v1/jobs", "POST /v1/images/generations", "POST /v1/jobs, SSE"):
        print(row(name, "run_job, direct"))
    print(row("first preview: run_job", "first preview: run_job"))
    print(row("first preview: SSE event", "first preview: run_job"))
    return 0 if same else 1


if __name__ == "__main__":
    code = main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
    sys.stdout.flush()
    os._exit(code)  # the server's threads end with the process
