"""Run one job on this worker and watch it form: saves each live preview, then the final images.

Standard library only. On a RunPod endpoint (POST /run, then poll /stream/{id}):

    RUNPOD_API_KEY=... python examples/client.py --endpoint ENDPOINT_ID \\
        --input '{"prompt": "a lighthouse at dusk", "preview_steps": 5}' --out out/

On the local API (`python handler.py --rp_serve_api`), whose /run only stores the job and whose
/stream/{id} runs it and answers once, with every chunk:

    python examples/client.py --local http://localhost:8000 --input '{"prompt": "a fox", "preview_steps": 2}'
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

RUNPOD_API = "https://api.runpod.ai/v2"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
EXTENSIONS = {"image/jpeg": "jpg", "image/webp": "webp", "image/png": "png"}


def call(url: str, body: dict | None = None, api_key: str | None = None, method: str = "POST") -> dict:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    # A POST without a body sends none (Content-Length: 0). The local API's /stream reads no body
    # and closes the connection after its reply: unread bytes left behind make the kernel reset
    # the connection, and the reply can be lost on the way.
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def save(image: str, path_without_extension: Path) -> Path:
    """A data URL or an http(s) URL (S3 delivery) to a file; the extension follows the type."""
    if image.startswith("data:"):
        header, _, payload = image.partition(",")
        mime = header[5:].split(";")[0]
        data = base64.b64decode(payload)
    else:
        with urllib.request.urlopen(image, timeout=120) as response:
            mime, data = response.headers.get_content_type(), response.read()
    path = path_without_extension.with_suffix("." + EXTENSIONS.get(mime, "bin"))
    path.write_bytes(data)
    return path


def show(chunk: dict, out: Path) -> bool:
    """Handle one streamed output; True when it was the last one (final payload or error)."""
    if "preview" in chunk:
        path = save(chunk["preview"], out / f"preview-{chunk['step']:03d}")
        print(f"step {chunk['step']}/{chunk['total_steps']} ({chunk['stage']}): {path}")
        return False
    if "error" in chunk:
        print(f"error: {chunk['error']}", file=sys.stderr)
        return True
    for index, image in enumerate(chunk.get("images", [])):
        print(f"image {index} (seed {chunk['seeds'][index]}): {save(image, out / f'image-{index}')}")
    print(f"timings (ms): {chunk.get('timings')}")
    return True


def run(base: str, job_input: dict, out: Path, api_key: str | None, local: bool, poll_seconds: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    job = call(f"{base}/run", {"input": job_input}, api_key)
    print(f"job {job['id']}: {job.get('status')}")
    failed = False
    while True:
        # RunPod answers /stream with the chunks since the last call; the local API runs the job
        # inside this one POST and answers with all of them.
        reply = call(f"{base}/stream/{job['id']}", api_key=api_key, method="POST" if local else "GET")
        for item in reply.get("stream", []):
            output = item.get("output", item)
            for chunk in output if isinstance(output, list) else [output]:
                failed |= "error" in chunk
                show(chunk, out)
        status = reply.get("status")
        if status in FINISHED:
            if status != "COMPLETED":
                print(f"job {job['id']}: {status} {reply.get('error', '')}", file=sys.stderr)
            return 0 if status == "COMPLETED" and not failed else 1
        time.sleep(poll_seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--endpoint", help="RunPod serverless endpoint id")
    where.add_argument("--local", metavar="URL", help="the local API, e.g. http://localhost:8000")
    parser.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"), help="default: $RUNPOD_API_KEY")
    parser.add_argument("--input", required=True, help="the job input as JSON, or @file.json")
    parser.add_argument("--out", default="output/client", help="folder for previews and images")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between /stream polls on RunPod")
    args = parser.parse_args(argv)
    text = Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input
    if args.endpoint and not args.api_key:
        parser.error("--api-key (or RUNPOD_API_KEY) is needed for a RunPod endpoint")
    base = f"{RUNPOD_API}/{args.endpoint}" if args.endpoint else args.local.rstrip("/")
    return run(base, json.loads(text), Path(args.out), args.api_key, bool(args.local), args.poll)


if __name__ == "__main__":
    sys.exit(main())
