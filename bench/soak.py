"""Soak: many consecutive tiny-model jobs, valid and hostile mixed, through the real run_job.

Prints resident memory, threads, open file descriptors and temp files after a warm-up and at
the end, and exits 1 when memory grew more than 5 % or anything was left behind.

    python bench/soak.py                 300 jobs (a few minutes on 2 CPU cores)
    python bench/soak.py --jobs 40       the short version the test suite runs

Images are served by a real HTTP server in a separate process (so its threads and sockets are
not counted against the worker); the worker opts in to private URLs to reach it, and an
out-of-GPU-memory failure is raised from inside the UNet every few jobs to exercise recovery.
"""

from __future__ import annotations

import argparse
import base64
import gc
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MAX_GROWTH = 0.05
VALID_KINDS = ("txt2img", "img2img data URL", "img2img URL", "refine URL")
VALID = {"prompt": "a red cube", "width": 256, "height": 256, "num_inference_steps": 1, "refine": "no_refiner"}


def png(size=(64, 64), color="red") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def serve() -> None:
    """The image server (run as a subprocess): prints its port, serves until killed."""
    from sdxl_worker.testing.servers import Server, body, stall

    routes = {"/cat.png": body(png(), "image/png"), "/page.png": body(b"<html>no</html>", "image/png")}
    server = Server(routes)
    routes["/slow.png"] = stall(server.release)
    with server:
        print(server.port, flush=True)
        threading.Event().wait()


def jobs(port: int, valid_every: int) -> list[tuple[str, dict]]:
    """One cycle of (name, input); a valid generation every ``valid_every`` entries."""
    url = f"http://127.0.0.1:{port}"
    picture = "data:image/png;base64," + base64.b64encode(png((256, 256), "blue")).decode()
    from sdxl_worker.testing.files import png_declaring

    hostile = [
        ("bad width", {"prompt": "a", "width": 1001}),
        ("bool steps", {"prompt": "a", "num_inference_steps": True}),
        ("unknown key", {"prompt": "a", "num_image": 2}),
        ("huge prompt", {"prompt": "x" * 200_000}),
        ("file scheme", {"prompt": "a", "image": "file:///etc/passwd"}),
        ("refused port", {"prompt": "a", "image": "http://127.0.0.1:1/a.png"}),
        ("garbage base64", {"prompt": "a", "image": "!!!" * 100}),
        ("bomb", {"prompt": "a", "image": base64.b64encode(png_declaring(90_000, 90_000)).decode()}),
        ("not an image", {"prompt": "a", "image": f"{url}/page.png"}),
        ("404", {"prompt": "a", "image_url": f"{url}/missing.png"}),
        ("slow server", {"prompt": "a", "image": f"{url}/slow.png"}),
        ("out of memory", dict(VALID, prompt="OOM")),
        ("no input", None),
    ]
    valid = [
        ("txt2img", VALID),
        # img2img runs strength x steps: 2 x 0.5 = 1 step
        ("img2img data URL", dict(VALID, image=picture, num_inference_steps=2, prompt_strength=0.5)),
        ("img2img URL", dict(VALID, image=f"{url}/cat.png", num_inference_steps=2, prompt_strength=0.5)),
        ("refine URL", dict(VALID, image_url=f"{url}/cat.png", refine="base_image_refiner",
                            refiner_inference_steps=2, strength=0.5)),
    ]
    cycle, hostile_left = [], list(hostile)
    while valid:
        for _ in range(valid_every - 1):
            if hostile_left:
                cycle.append(hostile_left.pop(0))
        cycle.append(valid.pop(0))
    return cycle + hostile_left


def resources(private_tmp: Path) -> dict:
    gc.collect()
    status = Path("/proc/self/status").read_text()
    rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
    return {
        "rss_mb": rss_kb / 1024,
        "threads": len(os.listdir("/proc/self/task")),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "temp_files": sum(1 for _ in private_tmp.rglob("*")),
    }


def soak(models, count: int = 300, warmup_cycles: int = 2, valid_every: int = 3, out=print) -> bool:
    """Run ``count`` jobs after warm-up; print the table; True when nothing grew or leaked."""
    import torch

    from sdxl_worker import config
    from sdxl_worker.runtime.job import run_job
    from sdxl_worker.runtime.worker import Worker

    # The hostile server is on this machine; its stalls end in 0.3 s.
    worker = Worker.build(models, config.load({"ALLOW_PRIVATE_URLS": "1", "FETCH_READ_TIMEOUT": "0.3"}))
    private_tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    saved_tmp, tempfile.tempdir = tempfile.tempdir, str(private_tmp)
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    unet, real_forward = models.base.unet, models.base.unet.forward
    patched_before = unet.__dict__.get("forward")  # a test's monkeypatch may have left one
    try:
        port = int(server.stdout.readline())
        cycle = jobs(port, valid_every)
        valid_names = {name for name, inputs in cycle if inputs is not None and name in VALID_KINDS}

        def forward(*args, **kwargs):  # the "OOM" job fails inside the UNet, as on a full GPU
            if current[0] == "out of memory":
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return real_forward(*args, **kwargs)

        current = [""]
        unet.forward = forward
        outcomes = {"ok": 0, "refused": 0, "internal": 0}

        def run(index: int) -> None:
            name, inputs = cycle[index % len(cycle)]
            current[0] = name
            outputs = list(run_job(worker, {"id": f"soak-{index}", "input": inputs}))
            assert len(outputs) == 1, f"{name}: {len(outputs)} outputs"
            if "images" in outputs[0]:
                outcomes["ok"] += 1
            elif name in valid_names:
                raise AssertionError(f"the valid job {name!r} failed: {outputs[0]['error']}")
            elif "internal error" in outputs[0]["error"]:
                outcomes["internal"] += 1
            else:
                outcomes["refused"] += 1

        for index in range(warmup_cycles * len(cycle)):
            run(index)
        start = resources(private_tmp)
        started = time.perf_counter()
        outcomes.update(ok=0, refused=0, internal=0)
        for index in range(count):
            run(index)
        seconds = time.perf_counter() - started
        end = resources(private_tmp)
    finally:
        if patched_before is None:
            unet.__dict__.pop("forward", None)
        else:
            unet.forward = patched_before
        server.kill()
        server.wait()
        server.stdout.close()
        tempfile.tempdir = saved_tmp
        shutil.rmtree(private_tmp, ignore_errors=True)

    growth = end["rss_mb"] / start["rss_mb"] - 1
    out(f"{count} jobs in {seconds:.1f} s: {outcomes['ok']} generated, {outcomes['refused']} refused, "
        f"{outcomes['internal']} internal errors")
    out("| measure | after warm-up | at end | change |")
    out("| --- | --- | --- | --- |")
    for key in start:
        change = f"{growth:+.2%}" if key == "rss_mb" else f"{end[key] - start[key]:+d}"
        out(f"| {key} | {start[key]:.1f} | {end[key]:.1f} | {change} |" if key == "rss_mb"
            else f"| {key} | {start[key]} | {end[key]} | {change} |")
    problems = []
    if growth > MAX_GROWTH:
        problems.append(f"resident memory grew {growth:.1%} (limit {MAX_GROWTH:.0%})")
    for key in ("threads", "open_fds", "temp_files"):
        if end[key] > start[key]:
            problems.append(f"{key} grew from {start[key]} to {end[key]}")
    if outcomes["internal"]:
        problems.append(f"{outcomes['internal']} jobs hit internal errors")
    out("PASS" if not problems else "FAIL: " + "; ".join(problems))
    return not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=300, help="jobs measured after warm-up (default 300)")
    parser.add_argument("--warmup-cycles", type=int, default=2, help="passes over every kind of job first (default 2)")
    parser.add_argument("--valid-every", type=int, default=3, help="one valid generation every N jobs (default 3)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve()
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import logging

    logging.basicConfig(level=logging.ERROR)  # the table is the output, not each refusal
    from sdxl_worker.config import ModelSettings
    from sdxl_worker.engine.models import load_models

    models = load_models(ModelSettings(base="tiny", refiner="tiny", vae=None, device="cpu"))
    return 0 if soak(models, args.jobs, args.warmup_cycles, args.valid_every) else 1


if __name__ == "__main__":
    sys.exit(main())
