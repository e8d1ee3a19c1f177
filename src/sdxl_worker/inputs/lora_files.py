"""LoRA files per job: found inside LORA_DIR, on the hub, or downloaded from a URL, each bounded.

``resolve(lora, index)`` gives the local .safetensors file a job's LoRA entry names. URLs are
downloaded through sdxl_worker.inputs.fetch (its limits apply), streamed into a disk cache
keyed by a hash of the URL, capped in size, least recently used evicted first. A local path
never leads outside LORA_DIR. Loading the file onto the models is the engine's
(sdxl_worker.engine.lora_layers).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from pathlib import Path

from sdxl_worker.config import LoraSettings
from sdxl_worker.errors import MB, InputError, quotable, quoted
from sdxl_worker.inputs.fetch import Fetcher

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _outside_lora_dir(label: str, field: str) -> InputError:
    # The same words whether or not the file exists: a refusal must not tell what is on the disk.
    return InputError(f"LoRA {label}: '{field}' must lead to a file inside LORA_DIR, the worker's LoRA folder.")


def _check_weight_name(weight_name: str | None, index: int, label: str) -> None:
    """A weight_name is a .safetensors file name inside the LoRA's folder: no folders, no way out."""
    if weight_name is None:
        return
    if (not weight_name or "/" in weight_name or "\\" in weight_name or weight_name.startswith(".")
            or "\0" in weight_name):
        raise InputError(
            f"LoRA {label}: 'loras[{index}].weight_name' must be a file name inside the LoRA's folder "
            "(no '/', no leading '.'), for a folder inside LORA_DIR or a hub repo."
        )
    if not weight_name.endswith(".safetensors"):
        raise InputError(f"LoRA {label}: 'loras[{index}].weight_name' must name a .safetensors file.")


class LoraFiles:
    """A job's LoRA entries as local files, under LORA_DIR, LORA_CACHE_DIR, LORA_CACHE_MB, LORA_MAX_MB
    (``settings``), fetched by ``fetcher``; hub ids only from the hub's cache when ``hub_offline``."""

    def __init__(self, settings: LoraSettings, fetcher: Fetcher, hub_offline: bool = False):
        self.settings, self.fetcher, self.hub_offline = settings, fetcher, hub_offline
        self.max_file_bytes = int(settings.max_mb * MB)

    def _inside_lora_dir(self, path: str, index: int, label: str) -> Path | None:
        """A local path, resolved inside LORA_DIR; None when the path does not look local.

        Jobs come from anyone holding the endpoint key: a path must not reach the rest of the disk.
        """
        looks_local = path.startswith(("/", ".", "~")) or not _HUB_ID.match(path)
        root = self.settings.dir
        if root is None:
            if looks_local:
                raise InputError(f"LoRA {label}: local paths in 'loras[{index}].path' need LORA_DIR set on the worker.")
            return None
        local = (root / path).resolve() if not path.startswith("/") else Path(path).resolve()
        if not local.is_relative_to(root):
            if looks_local:
                raise _outside_lora_dir(label, f"loras[{index}].path")
            return None
        return local

    def check_entry(self, lora: dict, index: int) -> None:
        """What can be refused about a LoRA entry without reading a file or the network: called by
        the check pass (runtime/checks.py) for each of a job's LoRAs."""
        label = label_of(lora)
        _check_weight_name(lora.get("weight_name"), index, label)
        path = lora["path"].strip()
        if not path.lower().startswith(("http://", "https://")):
            try:
                self._inside_lora_dir(path, index, label)
            except (OSError, ValueError) as error:
                if isinstance(error, InputError):
                    raise
                raise InputError(f"LoRA {label}: 'loras[{index}].path' is not a path this worker can read.") from None

    def resolve(self, lora: dict, index: int) -> Path:
        """The local .safetensors file a LoRA entry names, downloading it if it is a URL. The entry
        passed ``check_entry`` (the check pass, before any download)."""
        path, weight_name = lora["path"].strip(), lora.get("weight_name")
        label = label_of(lora)
        if path.lower().startswith(("http://", "https://")):
            return self._cached_download(path, index, label)
        try:
            return self._local_or_hub(path, weight_name, index, label)
        except (OSError, ValueError) as error:  # a NUL byte, a name too long for the file system, ...
            if isinstance(error, InputError):
                raise
            raise InputError(f"LoRA {label}: 'loras[{index}].path' is not a path this worker can read.") from None

    def _local_or_hub(self, path: str, weight_name: str | None, index: int, label: str) -> Path:
        local = self._inside_lora_dir(path, index, label)
        if local is not None and local.exists():
            if weight_name and not local.is_dir():
                raise InputError(f"LoRA {label}: 'loras[{index}].weight_name' applies to a folder, but "
                                 f"'loras[{index}].path' names a file; drop one of them.")
            file = (local / (weight_name or DEFAULT_WEIGHT_NAME)).resolve() if local.is_dir() else local
            if not file.is_relative_to(self.settings.dir):  # a link inside the folder that points out of it
                raise _outside_lora_dir(label, f"loras[{index}].{'weight_name' if weight_name else 'path'}")
            if not file.is_file():
                raise InputError(f"LoRA {label}: the folder in 'loras[{index}].path' has no file {quoted(file.name)}.")
            if file.suffix != ".safetensors":  # pickled weights can run code when loaded
                raise InputError(f"LoRA {label}: 'loras[{index}].path' must be a .safetensors file.")
            return file
        if path.startswith(("/", ".", "~")) or not _HUB_ID.match(path):
            raise InputError(
                f"LoRA {label}: 'loras[{index}].path' is not an https URL, a hub id (owner/name) or an existing local path."
            )
        return self._from_hub(path, weight_name or DEFAULT_WEIGHT_NAME, index, label)

    def _from_hub(self, repo_id: str, weight_name: str, index: int, label: str) -> Path:
        """A file of a hub repo: from the local hub cache (baked into the image), else downloaded like
        any URL, through the fetcher into the capped LoRA cache (the hub's own cache has no cap)."""
        from huggingface_hub import hf_hub_download, hf_hub_url

        offline = self.hub_offline
        try:
            try:
                return Path(hf_hub_download(repo_id, weight_name, local_files_only=True))
            except Exception:
                if offline:
                    raise
            return self._cached_download(hf_hub_url(repo_id, weight_name), index, label)
        except InputError:
            raise
        except Exception as error:
            where = "in this worker's hub cache" if offline else "on the hub"
            raise InputError(
                f"LoRA {label}: {quoted(weight_name)} of hub repo {quoted(repo_id)} was not found {where} "
                f"({type(error).__name__}); give 'loras[{index}].weight_name' or an https URL."
            ) from None

    def _cached_download(self, url: str, index: int, label: str) -> Path:
        folder = self.settings.cache_dir
        file = folder / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".safetensors")
        if file.is_file():
            os.utime(file)  # most recently used: the last to be evicted
            log.info("LoRA %s from the cache", label)
            return file
        started = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        # Streamed to a file beside its final place (a LoRA can be a gigabyte): memory holds one
        # network read at a time, and the cache gets the file only once it is whole and checked.
        handle, staging = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                try:
                    self.fetcher.fetch_into(url, f"loras[{index}].path", out.write, max_bytes=self.max_file_bytes)
                except InputError as error:
                    raise InputError(f"LoRA {label}: {error}") from None
            _check_safetensors(staging, index, label)  # never cache a file that cannot load
            os.replace(staging, file)  # atomic: a reader sees the whole file or none
        finally:
            Path(staging).unlink(missing_ok=True)
        log.info("LoRA %s downloaded: %.1f MB in %.2fs", label, file.stat().st_size / MB, time.perf_counter() - started)
        evict(folder, int(self.settings.cache_mb * MB), keep=file)
        return file


def evict(folder: Path, cap_bytes: int, keep: Path | None = None) -> list[Path]:
    """Delete the least recently used files until the folder holds at most ``cap_bytes``."""
    files = sorted((f for f in folder.glob("*.safetensors") if f.is_file()), key=lambda f: f.stat().st_mtime)
    total = sum(f.stat().st_size for f in files)
    removed = []
    for file in files:
        if total <= cap_bytes:
            break
        if keep is not None and file == keep:
            continue
        total -= file.stat().st_size
        file.unlink(missing_ok=True)
        removed.append(file)
    if removed:
        log.info("LoRA cache: evicted %d file(s) to stay under %d MB", len(removed), cap_bytes // MB)
    return removed


def _check_safetensors(path: str, index: int, label: str) -> None:
    """The header parses and matches the file's length: a safetensors file, not a pickle or a page."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as file:
            file.keys()
    except Exception:
        raise InputError(
            f"LoRA {label}: 'loras[{index}].path' is not a valid .safetensors file (other formats are refused)."
        ) from None


def label_of(lora: dict) -> str:
    """A short name for the LoRA in messages: its file name, never a whole signed URL, never markup
    or a token-like run (sdxl_worker.errors.quoted's rule)."""
    path = lora["path"].split("?")[0].rstrip("/")
    name = path.rsplit("/", 1)[-1] or path
    return quoted(name) if quotable(name) else f"'<a name of {len(name)} characters>'"
