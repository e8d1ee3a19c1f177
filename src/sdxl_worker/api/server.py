"""Start the HTTP server: listen at once, load the models meanwhile, stop cleanly on SIGTERM.

RunPod's load balancer measures a worker's cold start from its first answer to ``/ping``, so the
sockets open before anything slow: ``/ping`` says 204 while start-up (sdxl_worker.runtime.startup)
loads the models in a thread, 200 once the worker is built, 503 with start-up's sentence if it
failed (the worker keeps answering that, so the cause is visible, until RunPod replaces it).
PORT_HEALTH, when it differs from PORT, is a second socket of the same server that answers
``/ping`` alone.

SIGTERM (RunPod scaling down, ``docker stop``): the server stops accepting connections, every
running job is stopped within one step and answered 503 "shutting down" (the Runner's own
shutdown, as on the queue path), and the process exits once those answers are sent, within
EXIT_WITHIN_S.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import threading

from sdxl_worker import config
from sdxl_worker.api.app import create_app
from sdxl_worker.api.jobs import Jobs
from sdxl_worker.errors import StartupError

log = logging.getLogger(__name__)


def serve() -> int:
    """Serve until SIGTERM or Ctrl+C; the exit status (2: a setting the server cannot start with)."""
    from sdxl_worker.runtime import startup

    try:
        settings, job_settings, runtime = config.server(), config.jobs(), config.runtime()
    except config.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=runtime.log_level, format=startup.LOG_FORMAT)
    jobs = Jobs(job_settings.concurrency, settings.queue)
    app = create_app(jobs, settings.api_key, health_port=settings.health_port if settings.health_port != settings.port
                     else None)
    try:
        sockets = [_listen(settings.host, port) for port in dict.fromkeys((settings.port, settings.health_port))]
    except OSError as error:
        print(f"error: cannot listen on {settings.host} port {error.filename or settings.port}: {error.strerror}",
              file=sys.stderr)
        return 2
    server = _Server(app, jobs)
    threading.Thread(target=_load, args=(jobs, server), name="start-up", daemon=True).start()
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    log.info("HTTP server on http://%s:%d (health: /ping on port %d); loading the models", shown, settings.port,
             settings.health_port)
    asyncio.run(server.serve(sockets=sockets))
    from sdxl_worker.runtime.serve import _exit_process

    _exit_process()  # job threads and a start-up still loading end with the process
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        error.filename = str(port)
        raise


def _load(jobs: Jobs, server: "_Server") -> None:
    """Start-up in this thread; the server's loop learns the outcome."""
    from sdxl_worker.runtime import startup
    from sdxl_worker.runtime.serve import Runner

    try:
        worker = startup.load()
    except StartupError as error:
        log.error("%s", error)
        server.call(jobs.fail, str(error))
        return
    settings = worker.settings.jobs

    def runner(on_progress):
        return Runner(worker, settings.timeout_s, settings.concurrency, on_progress=on_progress,
                      exit_process=lambda: None)  # the server exits once the answers are sent

    server.call(jobs.ready, worker, runner)
    log.info("ready: /ping answers 200")


def _uvicorn_config(app):
    import uvicorn

    from sdxl_worker.runtime.serve import EXIT_WITHIN_S

    return uvicorn.Config(app, log_config=None, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=EXIT_WITHIN_S, lifespan="off")


class _Server:
    """uvicorn's server, with SIGTERM stopping the running jobs before the connections close."""

    def __init__(self, app, jobs: Jobs):
        import uvicorn

        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):  # a signal handler: hand the work to the loop
                outer.call(jobs.stop)
                if self.should_exit:
                    self.force_exit = True  # a second signal: stop waiting for the jobs' answers
                self.should_exit = True

        self.jobs, self.loop = jobs, None
        self.server = Server(_uvicorn_config(app))
        self._started = threading.Event()

    async def serve(self, sockets) -> None:
        self.loop = asyncio.get_running_loop()
        self._started.set()
        await self.server.serve(sockets=sockets)

    def call(self, function, *args) -> None:
        """Run ``function(*args)`` in the server's loop, from any thread."""
        self._started.wait()
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:  # the loop has ended: the process is exiting
            pass
