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

    python -m src.prefetch --record [PATH]

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


def start_files_path(env=os.environ) -> Path:
    """Where the list of start files for this Python environment lives."""
    return Path(env.get("START_FILES") or Path(sys.prefix) / "share" / "sdxl-worker" / "start-files.txt")


@dataclass
class Prefetch:
    """What start() did: the helper process (None when there is none) and a line for the log."""

    helper: subprocess.Popen | None
    summary: str


def start(env=os.environ) -> Prefetch:
    """Start the helper; call it first thing, before the heavy imports. There is none when
    PREFETCH=0 or there is nothing to read. The weights are left out when they would not fit in
    free memory (they would evict each other, and the start files)."""
    if env.get("PREFETCH", "1") == "0":
        return Prefetch(None, "off (PREFETCH=0)")
    from src.models import Settings, weight_files  # light: no torch

    weights = weight_files(Settings.from_env(env, device="any"))
    size, free = sum(f.stat().st_size for f in weights), available_memory()
    notes = [] if weights else ["no baked weight files: the tiny model, or a hub id not in the cache"]
    if weights and size * 1.2 > free:
        weights = []
        notes.append(f"the weights ({size / 1e9:.2f} GB) left out: {free / 1e9:.2f} GB of memory free")
    start_files = start_files_path(env)
    listed = start_files.is_file()
    if not listed:
        notes.append(f"no start-files list at {start_files}; python -m src.prefetch --record makes one")
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


# --- recording the start files ------------------------------------------------------------------


def record(path: Path) -> list[str]:
    """Go through the worker's start in this process and write down what it reads: the parts of
    the shared libraries it touched, then every file Python opened (its audit hook sees each
    open), in that order. Weights are not loaded; they are listed at start from the settings."""
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str):
            opened.append(os.path.abspath(args[0]))

    sys.addaudithook(watch)
    os.environ["PREFETCH"] = "0"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # handler.py's folder
    import handler  # noqa: F401  (the worker's own first imports)
    from src.models import import_libraries

    import_libraries()  # what load_models imports
    import runpod.serverless  # noqa: F401  (what serving imports after loading)

    from src.job import run_job  # noqa: F401

    # Libraries first: the first import (torch) needs the biggest of them.
    entries, seen = touched_parts_of_mapped_files(), set()
    for name in opened:
        if name not in seen and _worth_reading(name):
            seen.add(name)
            entries.append(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(entries) + "\n")
    return entries


def touched_parts_of_mapped_files(merge_gap: int = 256 << 10) -> list[str]:
    """``path<TAB>offset<TAB>length`` for the parts of each file mapped into this process whose
    pages it has touched (present in its page tables, /proc/self/pagemap). A start maps whole
    libraries but touches a fraction of each (CUDA's especially): reading only that fraction
    keeps the helper's first reads short. Parts closer than merge_gap are read as one."""
    page = os.sysconf("SC_PAGE_SIZE")
    touched: dict[str, list[int]] = {}
    with open("/proc/self/pagemap", "rb") as pagemap:
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or not _worth_reading(fields[5]):
                continue
            start, end = (int(address, 16) for address in fields[0].split("-"))
            offset = int(fields[2], 16)
            pagemap.seek(start // page * 8)
            flags = memoryview(pagemap.read((end - start) // page * 8)).cast("Q")
            present = [offset + i * page for i, flag in enumerate(flags) if flag >> 63]
            touched.setdefault(fields[5], []).extend(present)
    entries = []
    for name, offsets in touched.items():
        parts: list[list[int]] = []
        for at in sorted(set(offsets)):
            if parts and at - (parts[-1][0] + parts[-1][1]) <= merge_gap:
                parts[-1][1] = at + page - parts[-1][0]
            else:
                parts.append([at, page])
        entries += [f"{name}\t{at}\t{length}" for at, length in parts]
    return entries


def _worth_reading(name: str) -> bool:
    return name.startswith("/") and not name.startswith(("/proc/", "/sys/", "/dev/")) and os.path.isfile(name)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--read"] and len(argv) >= 2:
        read(Path(argv[1]), argv[2:])
        return 0
    if argv[:1] == ["--record"] and len(argv) <= 2:
        path = Path(argv[1]) if len(argv) == 2 else start_files_path()
        entries = record(path)
        size = sum(int(e.split("\t")[2]) if "\t" in e else os.path.getsize(e) for e in entries)
        print(f"{len(entries)} start files and parts ({size / 1e6:.0f} MB) listed in {path}")
        return 0
    print("usage: python -m src.prefetch --record [PATH]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
