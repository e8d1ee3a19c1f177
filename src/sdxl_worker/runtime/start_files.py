"""The start files: what a worker's start opens, recorded once per Python environment.

    python -m sdxl_worker.runtime.start_files [PATH]

imports the worker as a start does and lists every file Python opened, and of each shared
library only the pages the process touched. The prefetch helper (sdxl_worker.runtime.prefetch)
reads that list at each cold start. PATH defaults to START_FILES, else
share/sdxl-worker/start-files.txt under the environment's prefix. The Dockerfile's last step.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def record(path: Path) -> list[str]:
    """Go through the worker's start in this process and write down what it reads: the parts of
    the shared libraries it touched, then every file Python opened (its audit hook sees each
    open), in that order. Weights are not loaded; they are listed at start from the settings."""
    opened: list[str] = []

    def watch(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str):
            opened.append(os.path.abspath(args[0]))

    sys.addaudithook(watch)
    import sdxl_worker.runtime.startup  # noqa: F401  (the worker's own first imports, as handler.py makes them)
    from sdxl_worker.engine.models import import_libraries

    import_libraries()  # what load_models imports
    import runpod.serverless  # noqa: F401  (what serving imports after loading)

    from sdxl_worker.runtime.job import run_job  # noqa: F401

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
    if len(argv) > 1:
        print("usage: python -m sdxl_worker.runtime.start_files [PATH]", file=sys.stderr)
        return 2
    from sdxl_worker import config  # here: the files that importing it opens are recorded with the rest

    path = Path(argv[0]) if argv else config.runtime().start_files
    entries = record(path)
    size = sum(int(e.split("\t")[2]) if "\t" in e else os.path.getsize(e) for e in entries)
    print(f"{len(entries)} start files and parts ({size / 1e6:.0f} MB) listed in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
