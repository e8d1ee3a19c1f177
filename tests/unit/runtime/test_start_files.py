"""The start files (runtime/start_files.py): what a worker's start opens, recorded once per environment
for the prefetch helper (test_prefetch.py) to read at each cold start."""

import mmap
import os
import subprocess
import sys
from pathlib import Path

from sdxl_worker.runtime import start_files


def test_only_the_touched_parts_of_a_mapped_file_are_listed(tmp_path):
    page, pages = mmap.PAGESIZE, (64 << 20) // mmap.PAGESIZE
    library = tmp_path / "big.so"
    library.write_bytes(os.urandom(pages * page))
    with open(library, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        _ = mapped[3 * page], mapped[(pages - 10) * page]  # the pages a start would touch
        entries = [e for e in start_files.touched_parts_of_mapped_files(merge_gap=0) if e.startswith(f"{library}\t")]
    parts = [tuple(int(n) for n in e.split("\t")[1:]) for e in entries]
    assert any(at <= 3 * page < at + length for at, length in parts)
    assert any(at <= (pages - 10) * page < at + length for at, length in parts)
    # The kernel maps neighbours along (fault-around, large folios), not the untouched middle.
    assert not any(at <= pages // 2 * page < at + length for at, length in parts)
    assert sum(length for _, length in parts) < pages * page // 4


def test_the_recorded_list_holds_what_a_start_opens(tmp_path):
    listed = tmp_path / "start-files.txt"
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_worker.runtime.start_files", str(listed)],
        cwd=tmp_path,  # as from anywhere: the package is installed
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "start files" in done.stdout
    entries = listed.read_text().splitlines()
    files = [e.split("\t")[0] for e in entries]
    assert all(Path(f).is_file() and Path(f).is_absolute() for f in files)
    libtorch = [e.split("\t") for e in entries if Path(e.split("\t")[0]).name.startswith("libtorch")]
    assert libtorch and all(len(part) == 3 for part in libtorch)  # parts of it, not the whole library
    assert any("unet_2d_condition" in f and f.endswith((".pyc", ".py")) for f in files)  # what diffusers imports
    assert not any(f.endswith(".safetensors") for f in files)  # weights are listed at start, not here
    assert len(entries) == len(set(entries))
