"""RunPod entry point: the door between runpod and the worker package (src/sdxl_worker/).

    python handler.py                   run test_input.json locally, save images under output/
    python handler.py --test_input '{"input": {...}}'
    python handler.py --rp_serve_api    runpod's local HTTP API (/run, /runsync, /stream, /status)
    python handler.py --serve           the HTTP server on PORT: RunPod load balancing, the OpenAI Images API
                                        (also when SERVE=http; docs/http.md)
    python handler.py --studio          the studio page on http://127.0.0.1:8080/ (--port, --host)
    python handler.py --studio --endpoint ENDPOINT_ID    the page, jobs on a RunPod endpoint
    on RunPod                           the serverless worker

It wires runpod to the package and nothing else: start-up is sdxl_worker.runtime.startup,
one job is sdxl_worker.runtime.job.run_job, run for runpod's loop by sdxl_worker.runtime.serve.
"""

import os
import signal
import sys

from sdxl_worker.runtime import startup


def main() -> None:
    if "--studio" in sys.argv:
        sys.exit(studio(sys.argv[1:]))
    if "--serve" in sys.argv or _serve_setting() == "http":
        from sdxl_worker.api.server import serve

        sys.exit(serve())
    worker = startup.start()
    jobs = worker.settings.jobs
    config = runpod_config(worker, timeout_s=jobs.timeout_s, concurrency=jobs.concurrency,
                           mode=worker.settings.runtime.handler_mode)
    if _serving():
        import runpod

        from sdxl_worker.runtime import fitness

        for check in fitness.checks(worker):  # run by runpod on RunPod only, before the first job
            runpod.serverless.register_fitness_check(check)
        runpod.serverless.start(config)
    else:
        from sdxl_worker.runtime.local import run_local

        sys.exit(run_local(config["handler"], sys.argv[1:]))


def studio(argv: list[str]) -> int:
    """The studio page (sdxl_worker.studio): jobs on this worker's models, or on a RunPod endpoint."""
    from sdxl_worker import config
    from sdxl_worker.studio import app, guard

    args = app.parse(argv)
    settings = config.studio()
    login = settings.login
    if args.login_file:
        try:
            login = open(args.login_file, encoding="utf-8").read().strip() or None
        except OSError as error:
            print(f"error: --login-file {args.login_file} cannot be read ({error.strerror}).", file=sys.stderr)
            return 2
    problem = guard.check_login(args.host, login)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    gate = guard.Guard(hosts=guard.own_host_names(args.host, settings.hosts), login=login)
    if args.endpoint:
        from sdxl_worker.studio.endpoint import Endpoint, EndpointError

        try:
            source = Endpoint(args.endpoint, settings.api_key, settings.endpoint_base_url)
        except EndpointError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        where = f"RunPod endpoint {args.endpoint}"
        page = app.create_app(source, where, guard=gate, api={"kind": "endpoint", "url": source.url})
    else:
        worker = startup.start()
        jobs = worker.settings.jobs

        def local_source(on_progress):
            return runpod_config(worker, jobs.timeout_s, jobs.concurrency, on_progress=on_progress)["handler"]

        where = "this machine"
        page = app.create_app(local_source, where, wants_progress=True, guard=gate)
    app.serve(page, args.host, args.port, where)
    return 0


def runpod_config(worker, timeout_s: float | None = None, concurrency: int = 1,
                  on_progress=None, mode: str = "stream") -> dict:
    """The config for runpod.serverless.start: the handler running jobs on ``worker``, and its hooks.

    Args:
        worker: what jobs run on (sdxl_worker.runtime.worker.Worker, built by start-up).
        timeout_s: JOB_TIMEOUT_S; a job running longer is stopped within one step (None: no limit).
        concurrency: CONCURRENCY, the jobs runpod may hand over at once.
        on_progress: where progress goes; None: RunPod's progress_update when on RunPod, else nowhere.
        mode: HANDLER_MODE, ``stream`` or ``single`` (below).

    - ``handler``, by ``mode`` (HANDLER_MODE): ``stream``, an async generator awaiting each job's
      outputs from sdxl_worker.runtime.serve.Runner (previews, then the result, which runpod
      aggregates into the output list; a result too large for a /stream chunk is announced by a
      small chunk first, so a stream never ends in silence); ``single``, an async function whose
      return value is the output itself, worker-sdxl's shape (previews refused). Either way
      runpod's loop keeps taking stop signals while a job denoises, and cancelling the job's task
      stops it within one step.
    - ``concurrency_modifier`` is the first thing runpod's job loop calls, in its event loop, after
      runpod installed its own SIGTERM handler: there the worker puts its own in front (every
      running job answered "shutting down", then exit within 10 s), and chains runpod's.
    - runpod 1.12 ignores a ``refresh_worker`` key in what a handler gives; it reads
      ``config["refresh_worker"]`` after each job (rp_job.handle_job then stops the pod). So the
      handler sets it there, only when run_job reports a poisoned CUDA context.
    """
    from sdxl_worker.delivery.size_guard import result_notice
    from sdxl_worker.runtime.serve import Runner

    config = {}

    def report_progress(job: dict, progress: dict) -> None:
        import runpod.serverless

        runpod.serverless.progress_update(job, progress)

    if on_progress is None and _on_runpod():
        on_progress = report_progress
    runner = Runner(worker, timeout_s, concurrency, on_progress=on_progress,
                    pending=_jobs_runpod_holds)

    async def streamed(job):
        async for output in runner.run(job):
            if output.pop("refresh_worker", False):
                config["refresh_worker"] = True
            notice = result_notice(output)
            if notice is not None:
                yield notice
            yield output

    async def single(job):
        asks = (job.get("input") or {}).get("preview_steps") if isinstance(job, dict) else None
        if isinstance(asks, (int, float)) and not isinstance(asks, bool) and asks > 0:
            return {"error": "'preview_steps' needs a streaming worker: this one runs with HANDLER_MODE=single, "
                             "which returns the result alone; leave 'preview_steps' out, or set HANDLER_MODE=stream."}
        result = None
        async for output in runner.run(job):
            if output.pop("refresh_worker", False):
                config["refresh_worker"] = True
            result = output
        return result

    def concurrency_modifier(current: int) -> int:
        _stop_jobs_on_sigterm(runner)
        return concurrency

    if mode == "single":
        config.update(handler=single)
    else:
        config.update(handler=streamed, return_aggregate_stream=True)
    config.update(concurrency_modifier=concurrency_modifier, runner=runner)
    return config


def _stop_jobs_on_sigterm(runner) -> None:
    """Put runner.shut_down in front of whatever handles SIGTERM now (runpod's), once.

    Through the event loop (``add_signal_handler``), not ``signal.signal``: a Python signal
    handler runs between any two bytecodes of the main thread, where stopping a job could take a
    lock that same thread already holds; the loop runs its callback between tasks instead.
    """
    import asyncio

    if getattr(runner, "stops_on_sigterm", False):
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm():
        runner.shut_down()
        if callable(previous):
            previous(signal.SIGTERM, None)  # runpod's: stop taking jobs, drain the queue

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    except (RuntimeError, ValueError):  # no loop here, or not the main thread: runpod's local API
        return
    runner.stops_on_sigterm = True


def _jobs_runpod_holds() -> int:
    """Jobs runpod took from the queue and has not answered yet, started or not (its JobsProgress)."""
    from runpod.serverless.modules.worker_state import JobsProgress

    return JobsProgress().get_job_count()


def _serve_setting() -> str:
    """SERVE: ``queue`` or ``http``; a wrong value stops the start with its sentence."""
    from sdxl_worker import config

    try:
        return config.server().mode
    except config.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _serving() -> bool:
    """On RunPod, or asked for runpod's local API; otherwise a local test run."""
    return "--rp_serve_api" in sys.argv or _on_runpod()


def _on_runpod() -> bool:
    """RunPod's own variables say so. Elsewhere runpod would post progress to a placeholder URL."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB") or os.environ.get("RUNPOD_POD_ID"))


if __name__ == "__main__":
    main()
