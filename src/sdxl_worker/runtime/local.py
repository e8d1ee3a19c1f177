"""`python handler.py` outside RunPod: run one job through the real generator and save the images.

runpod's own local mode never iterates a generator handler; this does (or awaits the single
handler of HANDLER_MODE=single), writes the images to files and prints the job's output as JSON
with each image replaced by the path it was written to: everything else (seeds, timings,
warnings) as the API returns it, instead of walls of base64.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
from pathlib import Path


def run_local(handler, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="handler.py", description="Run one job locally.")
    parser.add_argument("--test_input", help="the job as JSON: {\"input\": {...}}; default: test_input.json")
    parser.add_argument("--output_dir", default="output", help="where the images are written (default: output/)")
    args, _ = parser.parse_known_args(argv)
    job = json.loads(args.test_input) if args.test_input else json.loads(Path("test_input.json").read_text())
    job.setdefault("id", "local-test")

    final = asyncio.run(_last_output(handler, job))
    if final is None or "error" in final:
        print(f"error: {final.get('error') if final else 'the handler yielded nothing'}")
        return 1

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = dict(final)
    shown["images"] = []
    for index, (image, seed) in enumerate(zip(final["images"], final["seeds"])):
        path = out / f"{job['id']}-{index}-{seed}.png"
        if image.startswith("data:"):
            header, _, payload = image.partition(",")
            suffix = header.split("/")[1].split(";")[0]
            path = path.with_suffix("." + ("jpg" if suffix == "jpeg" else suffix))
            path.write_bytes(base64.b64decode(payload))
            shown["images"].append(str(path))
        else:
            shown["images"].append(image)  # a presigned URL: storage holds the file
    shown["image_url"] = shown["images"][0]
    print(json.dumps(shown, indent=2))
    return 0


async def _last_output(handler, job: dict) -> dict | None:
    """Run the handler to its end, printing a line per preview; its last output."""
    if not inspect.isasyncgenfunction(handler):  # HANDLER_MODE=single: the output itself
        return await handler(job)
    final = None
    async for update in handler(job):
        if "preview" in update:
            print(f"preview: {update.get('stage')} step {update.get('step')}/{update.get('total_steps')}")
        elif "result" in update and "images" not in update:  # the notice before a large result
            continue
        final = update
    return final
