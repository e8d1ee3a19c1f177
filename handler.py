"""RunPod entry point: the door between runpod and the worker package (src/sdxl_worker/).

    python handler.py                   run test_input.json locally, save images under output/
    python handler.py --test_input '{"input": {...}}'
    python handler.py --rp_serve_api    runpod's local HTTP API (/run, /runsync, /stream, /status)
    on RunPod                           the serverless worker

It wires runpod to the package and nothing else: start-up is sdxl_worker.runtime.startup,
one job is sdxl_worker.runtime.job.run_job.
"""

import os
import sys

from sdxl_worker.runtime import startup


def main() -> None:
    worker = startup.start()
    config = runpod_config(worker.models, worker.storage)
    if _serving():
        import runpod

        runpod.serverless.start(config)
    else:
        from sdxl_worker.runtime.local import run_local

        sys.exit(run_local(config["handler"], sys.argv[1:]))


def runpod_config(models, storage=None) -> dict:
    """The config for runpod.serverless.start: the handler, and where it asks to be replaced.

    runpod 1.12 ignores a ``refresh_worker`` key in what a generator handler yields; it reads
    ``config["refresh_worker"]`` after each job (rp_job.handle_job then stops the pod, and
    rp_scale kills the worker). So the handler sets it there, only when run_job reports a
    poisoned CUDA context, before yielding the job's error.
    """
    from sdxl_worker.runtime.job import run_job

    config = {"return_aggregate_stream": True}
    on_runpod = _on_runpod()

    def report_progress(job: dict, progress: dict) -> None:
        import runpod.serverless

        runpod.serverless.progress_update(job, progress)

    def handler(job):
        for output in run_job(models, job, storage, on_progress=report_progress if on_runpod else None):
            if output.pop("refresh_worker", False):
                config["refresh_worker"] = True
            yield output

    config["handler"] = handler
    return config


def _serving() -> bool:
    """On RunPod, or asked for runpod's local API; otherwise a local test run."""
    return "--rp_serve_api" in sys.argv or _on_runpod()


def _on_runpod() -> bool:
    """RunPod's own variables say so. Elsewhere runpod would post progress to a placeholder URL."""
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB") or os.environ.get("RUNPOD_POD_ID"))


if __name__ == "__main__":
    main()
