"""Fetching what the user points at: an http(s) URL, a data URL or bare base64, as bytes.

One module for every fetch (input images, masks, LoRA files), so every limit applies to all.
"""

from __future__ import annotations

import base64
import binascii
import os
import urllib.request

from src.errors import InputError

MAX_DOWNLOAD_BYTES = int(os.environ.get("MAX_IMAGE_BYTES", 20 * 1024 * 1024))
TIMEOUT_SECONDS = float(os.environ.get("IMAGE_FETCH_TIMEOUT", 10))


def fetch(source: str, field: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """The bytes ``source`` names; InputError naming ``field`` for anything refused or unreachable."""
    return _read(source.strip(), field, max_bytes)


def _read(source: str, field: str, max_bytes: int) -> bytes:
    lowered = source[:16].lower()
    if lowered.startswith(("http://", "https://")):
        return _download(source, field, max_bytes)
    if lowered.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header.lower():
            raise InputError(f"'{field}' is a data URL without base64 data.")
        return _b64(payload, field)
    if "://" in source[:12] or lowered.startswith(("file:", "ftp:")):
        raise InputError(f"'{field}' must be an http(s) URL, a data URL or base64 data; other URL schemes are refused.")
    return _b64(source, field)


def _b64(payload: str, field: str) -> bytes:
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"'{field}' is neither an http(s) URL nor valid base64 image data.") from None


def _download(url: str, field: str, max_bytes: int) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "sdxl-worker"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            data = response.read(max_bytes + 1)
    except Exception as error:  # URLError, HTTPError, timeouts, bad status lines
        reason = getattr(error, "reason", None) or getattr(error, "code", None) or type(error).__name__
        raise InputError(f"'{field}' could not be downloaded ({reason}).") from None
    if len(data) > max_bytes:
        raise InputError(f"'{field}' is larger than {max_bytes // (1024 * 1024)} MB.")
    return data
