"""Build time: bake one single-file checkpoint from a URL (a model site's download link).

    BASE_MODEL_URL=https://civitai.com/api/download/models/456194 \\
    BASE_MODEL=/models/checkpoints/base.safetensors python builder/download_checkpoint.py

Nothing to do when BASE_MODEL_URL is unset. The file goes to BASE_MODEL's path, which must end in
``.safetensors``; the download is checked to be a safetensors file (a pickle checkpoint, which can
run code when loaded, is refused). Sites that need a token (Civitai) get it as
``Authorization: Bearer``, read from the build secret ``model_token`` (``/run/secrets/model_token``,
``docker build --secret id=model_token,env=CIVITAI_TOKEN``) or MODEL_TOKEN locally: a secret mount
is never stored in a layer or the image history, and the token is never printed.

The token goes only to the URL's own origin: a redirect to another scheme, host or port (model
sites send downloads on to a storage host) loses it, as requests and aiohttp do. A URL is never
printed with its query or user info (where tokens hide). The safetensors header is checked from
the first bytes, before the rest is downloaded, and the whole file may not pass BASE_MODEL_MAX_GB.
Standard library only, like builder/download_weights.py.
"""

from __future__ import annotations

import http.client
import json
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from sdxl_worker import config

SECRET_FILE = Path("/run/secrets/model_token")
MAX_HEADER_BYTES = 100_000_000  # a safetensors header is JSON; real ones are a few MB at most
CHUNK = 8 * 1024 * 1024


class CheckpointError(SystemExit):
    """One sentence for the build log; the build stops."""


def token(env=None, secret_file: Path | None = None) -> str | None:
    """The build secret's token, else MODEL_TOKEN (local builds), else None."""
    secret_file = secret_file or SECRET_FILE
    if secret_file.is_file():
        return secret_file.read_text().strip() or None
    return config.build(env).model_token


def shown(url: str) -> str:
    """``url`` as the build log may show it: no user info, query or fragment (where tokens go)."""
    try:
        parts = urlsplit(url)
        where = parts.hostname or "?"
        if parts.port:
            where += f":{parts.port}"
    except ValueError:
        return "(a URL that cannot be parsed)"
    return f"{parts.scheme}://{where}{parts.path}"


def check_header(start: bytes, name: str) -> int:
    """The header size a safetensors file's first 8 bytes give; CheckpointError naming what it is otherwise."""
    if start[:2] == b"PK" or start[:1] == b"\x80":
        raise CheckpointError(f"{name} is a pickle checkpoint (zip or pickle data), which can run code "
                              f"when loaded; give the URL of the model's .safetensors file instead.")
    if len(start) < 8 or not 2 <= (size := struct.unpack("<Q", start[:8])[0]) <= MAX_HEADER_BYTES:
        raise CheckpointError(f"{name} is not a safetensors file (its first bytes are no header size).")
    return size


def count_tensors(header: bytes, name: str) -> int:
    try:
        parsed = json.loads(header)
    except (ValueError, RecursionError):  # not JSON, or JSON nested past Python's recursion limit
        parsed = None
    if not isinstance(parsed, dict):
        raise CheckpointError(f"{name} is not a safetensors file (its header is not JSON).")
    return len([key for key in parsed if key != "__metadata__"])


def check_safetensors(path: Path) -> int:
    """The number of tensors in a safetensors file; CheckpointError naming what it is otherwise."""
    with path.open("rb") as file:
        size = check_header(file.read(8), path.name)
        return count_tensors(file.read(size), path.name)


class _SameOriginAuthorization(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping ``Authorization`` only while scheme, host and port stay the same."""

    def redirect_request(self, request, answer, code, message, headers, new_url):
        follow = super().redirect_request(request, answer, code, message, headers, new_url)
        if follow is not None and _origin(new_url) != _origin(request.full_url):
            follow.remove_header("Authorization")
        return follow


def _origin(url: str) -> tuple:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def download(url: str, target: Path, bearer: str | None = None, timeout: float = 60,
             max_bytes: int | None = None) -> Path:
    """``url`` saved at ``target`` (through a partial file), checked; CheckpointError on any failure."""
    if target.suffix != ".safetensors":
        raise CheckpointError(f"BASE_MODEL={str(target)!r} must be the path the checkpoint goes to, ending in "
                              f".safetensors (for example /models/checkpoints/base.safetensors).")
    if not url.lower().startswith(("http://", "https://")) or any(ord(c) <= 32 or ord(c) == 127 for c in url):
        raise CheckpointError(f"BASE_MODEL_URL={shown(url)} must be an http(s) URL without spaces or control "
                              f"characters (percent-encode them).")
    max_bytes = max_bytes or config.build().base_model_max_bytes
    request = urllib.request.Request(url, headers={"User-Agent": "sdxl-worker-builder"})
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    opener = urllib.request.build_opener(_SameOriginAuthorization)
    try:
        with opener.open(request, timeout=timeout) as response:
            _save(response, partial, target.name, max_bytes)
        tensors = check_safetensors(partial)
    except CheckpointError:
        partial.unlink(missing_ok=True)
        raise
    except urllib.error.HTTPError as error:
        partial.unlink(missing_ok=True)
        hint = " (the site wants a token: pass it as the build secret model_token)" if error.code in (401, 403) else ""
        raise CheckpointError(f"BASE_MODEL_URL answered HTTP {error.code}{hint}.") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as error:
        partial.unlink(missing_ok=True)
        raise CheckpointError(f"BASE_MODEL_URL {shown(url)} could not be downloaded ({type(error).__name__}).") \
            from None
    partial.replace(target)
    print(f"BASE_MODEL: {target} ({target.stat().st_size / 1e9:.2f} GB, {tensors} tensors)", flush=True)
    return target


def _save(response, partial: Path, name: str, max_bytes: int) -> None:
    """The body into ``partial``: its header checked from the first bytes, its size against the cap."""
    too_big = CheckpointError(f"{name} is larger than BASE_MODEL_MAX_GB={max_bytes / 1e9:g} GB; raise the build "
                              f"argument if the checkpoint really is that large.")
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_big
    start = response.read(8)
    size = check_header(start, name)
    header = response.read(size)
    count_tensors(header, name)
    written = len(start) + len(header)
    with partial.open("wb") as out:
        out.write(start + header)
        while chunk := response.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise too_big
            out.write(chunk)


def main(env=None) -> int:
    settings = config.build(env)
    if not settings.base_model_url:
        return 0
    download(settings.base_model_url, Path(config.models(env).base), token(env),
             max_bytes=settings.base_model_max_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
