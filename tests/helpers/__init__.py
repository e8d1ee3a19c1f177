"""Helpers shared by the tests: paths, image data URLs, running handler.py, the small jobs."""

import asyncio
import base64
import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def run_handler(*args, **env):
    """``python handler.py ARGS`` in a subprocess, with these environment variables added."""
    return subprocess.run(
        [sys.executable, "handler.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, **env),
    )


def worker_with(models, storage=None, **env):
    """A worker on ``models`` with the settings these environment variables give (the rest default),
    read as start-up reads them: ``worker_with(models, LORA_DIR=str(folder))``."""
    from sdxl_worker import config
    from sdxl_worker.runtime.worker import Worker

    return Worker.build(models, config.load(env), storage)


def bench_script(name: str):
    """A script under bench/ (not a package), loaded as a module so its logic can be tested."""
    path = ROOT / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def collect(handler, job: dict) -> list:
    """Every output of an async generator handler (handler.py's) for this job, in order."""
    async def outputs():
        return [output async for output in handler(job)]

    return asyncio.run(outputs())


def decode(data_url: str) -> Image.Image:
    header, _, payload = data_url.partition(",")
    assert header.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@contextmanager
def moto_server(log_path: Path):
    """moto's S3 server in a subprocess on a free loopback port; yields its URL."""
    port = free_port()
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    urllib.request.urlopen(url + "/moto-api/", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto's server did not start: {Path(log_path).read_text()[-2000:]}") from None
                    time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            server.wait(timeout=30)


def stop_process(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM (the worker's own clean exit), then SIGKILL after ``grace_s``; returns once it is gone."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


FAST = {"prompt": "a lighthouse at dusk", "num_inference_steps": 4, "refiner_inference_steps": 4, "strength": 0.5,
        "width": 256, "height": 256, "seed": 1}


def final(outputs: list) -> dict:
    assert "error" not in outputs[-1], outputs[-1]
    return outputs[-1]


def pixels(output: dict, index: int = 0) -> np.ndarray:
    return np.asarray(decode(output["images"][index]))


def photo(width=300, height=200) -> Image.Image:
    gradient = np.linspace(0, 255, width * height * 3).reshape(height, width, 3).astype(np.uint8)
    return Image.fromarray(gradient)

