"""Build time: bake one single-file checkpoint from a URL (a model site's download link).

    BASE_MODEL_URL=https://civitai.com/api/download/models/456194 \\
    BASE_MODEL=/models/checkpoints/base.safetensors python builder/download_checkpoint.py

Nothing to do when BASE_MODEL_URL is unset. The file goes to BASE_MODEL's path, which must end in
``.safetensors``; the download is checked to be a safetensors file (a pickle checkpoint, which can
run code when loaded, is refused). Sites that need a token (Civitai) get it as
``Authorization: Bearer``, read from the build secret ``model_token`` (``/run/secrets/model_token``,
``docker build --secret id=model_token,env=CIVITAI_TOKEN``) or MODEL_TOKEN locally: a secret mount
is never stored in a layer or the image history, and the token is never printed.
Standard library only, like builder/download_weights.py.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import urllib.error
import urllib.request
from pathlib import Path

from sdxl_worker import config

SECRET_FILE = Path("/run/secrets/model_token")
MAX_HEADER_BYTES = 100_000_000  # a safetensors header is JSON; real ones are a few MB at most


class CheckpointError(SystemExit):
    """One sentence for the build log; the build stops."""


def token(env=None, secret_file: Path | None = None) -> str | None:
    """The build secret's token, else MODEL_TOKEN (local builds), else None."""
    secret_file = secret_file or SECRET_FILE
    if secret_file.is_file():
        return secret_file.read_text().strip() or None
    return config.build(env).model_token


def check_safetensors(path: Path) -> int:
    """The number of tensors in a safetensors file; CheckpointError naming what it is otherwise."""
    with path.open("rb") as file:
        start = file.read(8)
        if start[:2] == b"PK" or start[:1] == b"\x80":
            raise CheckpointError(f"{path.name} is a pickle checkpoint (zip or pickle data), which can run code "
                                  f"when loaded; give the URL of the model's .safetensors file instead.")
        if len(start) < 8 or not 2 <= (size := struct.unpack("<Q", start)[0]) <= MAX_HEADER_BYTES:
            raise CheckpointError(f"{path.name} is not a safetensors file (its first bytes are no header size).")
        try:
            header = json.loads(file.read(size))
        except ValueError:
            raise CheckpointError(f"{path.name} is not a safetensors file (its header is not JSON).") from None
    return len([name for name in header if name != "__metadata__"])


def download(url: str, target: Path, bearer: str | None = None, timeout: float = 60) -> Path:
    """``url`` saved at ``target`` (through a partial file), checked; CheckpointError on any failure."""
    if target.suffix != ".safetensors":
        raise CheckpointError(f"BASE_MODEL={str(target)!r} must be the path the checkpoint goes to, ending in "
                              f".safetensors (for example /models/checkpoints/base.safetensors).")
    request = urllib.request.Request(url, headers={"User-Agent": "sdxl-worker-builder"})
    if bearer:
        request.add_header("Authorization", f"Bearer {bearer}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out, 8 * 1024 * 1024)
    except urllib.error.HTTPError as error:
        hint = " (the site wants a token: pass it as the build secret model_token)" if error.code in (401, 403) else ""
        raise CheckpointError(f"BASE_MODEL_URL answered HTTP {error.code}{hint}.") from None
    except (urllib.error.URLError, OSError) as error:
        raise CheckpointError(f"BASE_MODEL_URL could not be downloaded ({type(error).__name__}).") from None
    try:
        tensors = check_safetensors(partial)
    except CheckpointError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    print(f"BASE_MODEL: {target} ({target.stat().st_size / 1e9:.2f} GB, {tensors} tensors)", flush=True)
    return target


def main(env=None) -> int:
    url = config.build(env).base_model_url
    if not url:
        return 0
    download(url, Path(config.models(env).base), token(env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
