"""Cold start: a helper process reads what the start-up needs into the page cache, ahead of need.

A worker's start is two long waits: Python importing torch, diffusers and transformers (seconds
of CPU and thousands of small file reads), then the weights (one long read of 11.5 GB). The
helper makes them overlap: it reads the *start files* first (every Python file the imports open
and the parts of the shared libraries they touch: about 0.3 GB, a second or less), then the
weights, while this process imports from memory. Then load_models finds the weights in memory too.

It is a process, not a thread: a thread in the importing process needs the GIL between its
thousands of small reads and waits for it at each one, and its big reads queue ahead of the
imports' small ones. The helper runs at the lowest CPU priority, and reads the weights in Linux's
idle I/O class, so whatever the start still reads itself goes first.

The start files are a list recorded once per Python environment, at image build time:

    python -m sdxl_worker.runtime.start_files [PATH]

PATH defaults to START_FILES, else share/sdxl-worker/start-files.txt under the environment's
prefix. Without a list the helper reads the weights only. PREFETCH=0 turns the helper off.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Prefetch:
    """What start() did: the helper process (None when there is none) and a line for the log."""

    helper: subprocess.Popen | None
    summary: str


def start(runtime, models) -> Prefetch:
    """Start the helper; call it first thing, before the heavy imports. There is none when
    PREFETCH=0 or there is nothing to read. The weights are left out when they would not fit in
    free memory (they would evict each other, and the start files). ``runtime`` and ``models``:
    the RuntimeSettings (PREFETCH, START_FILES) and ModelSettings (which weights) of sdxl_worker.config."""
    from sdxl_worker.engine.models import weight_files  # light: no torch

    if not runtime.prefetch:
        return Prefetch(None, "off (PREFETCH=0)")
    weights = weight_files(models)
    size, free = sum(f.stat().st_size for f in weights), available_memory()
    notes = [] if weights else ["no baked weight files: the tiny model, or a hub id not in the cache"]
    if weights and size * 1.2 > free:
        weights = []
        notes.append(f"the weights ({size / 1e9:.2f} GB) left out: {free / 1e9:.2f} GB of memory free")
    start_files = runtime.start_files
    listed = start_files.is_file()
    if not listed:
        notes.append(f"no start-files list at {start_files}; python -m sdxl_worker.runtime.start_files makes one")
    if not weights and not listed:
        return Prefetch(None, "nothing to read (" + "; ".join(notes) + ")")
    reads = ([f"the start files listed in {start_files}"] if listed else []) + (
        [f"{size / 1e9:.2f} GB of weights"] if weights else []
    )
    summary = "a helper process reads " + ", then ".join(reads) + "".join(f" ({note})" for note in notes)
    try:
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, "--read", str(start_files), *map(str, weights)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
    except OSError as error:  # an optimisation only: without it the start reads the files itself
        return Prefetch(None, f"no helper ({error})")
    # Reap it when it ends, so no zombie is left behind in a long-lived worker.
    threading.Thread(target=helper.wait, name="prefetch-helper", daemon=True).start()
    return Prefetch(helper, summary)


def available_memory() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- the helper process: standard library only (it runs with -I -S, before anything else) ------


def read(start_files: Path, weights: list[str]) -> int:
    """Read the start files, then the weights, into the page cache; return the bytes read."""
    try:
        os.nice(19)
    except OSError:
        pass
    try:
        listed = start_files.read_text().splitlines()
    except OSError:
        listed = []
    total = _read_files(listed)
    _idle_disk_priority()
    return total + _read_files(weights)


def _read_files(entries: list[str]) -> int:
    """Read each entry, a whole file (``path``) or a part of one (``path<TAB>offset<TAB>length``).
    sendfile to /dev/null pulls the pages into the cache without copying them to this process:
    a fraction of a second of CPU for 11 GB. Files that are gone are skipped."""
    total = 0
    with open(os.devnull, "wb") as sink:
        for entry in entries:
            path, *part = entry.split("\t")
            try:
                source = open(path, "rb")  # noqa: SIM115  (closed below, skipped when missing)
            except OSError:
                continue
            with source:
                size = os.fstat(source.fileno()).st_size
                done, end = (int(part[0]), min(size, int(part[0]) + int(part[1]))) if part else (0, size)
                while done < end:
                    sent = os.sendfile(sink.fileno(), source.fileno(), done, min(end - done, 1 << 30))
                    if sent <= 0:
                        break
                    done += sent
                    total += sent
    return total


def _idle_disk_priority() -> None:
    """Put this process in Linux's idle I/O class (ioprio_set), where the kernel allows it."""
    try:
        import ctypes
        import platform

        number = {"x86_64": 251, "aarch64": 30}.get(platform.machine())
        if number is not None:
            idle_class, who_process, this_process = 3, 1, 0
            ctypes.CDLL(None, use_errno=True).syscall(number, who_process, this_process, idle_class << 13)
    except Exception:  # an optimisation only: without it the reads still happen
        pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["--read"] and len(argv) >= 2:
        read(Path(argv[1]), argv[2:])
        return 0
    print("usage: prefetch.py --read START_FILES [WEIGHT ...]  (the helper; handler.py starts it)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
