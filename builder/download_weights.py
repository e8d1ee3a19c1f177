"""Build time: download the weights the worker loads, so the image runs offline.

First version: fetches the fp16 safetensors of BASE_MODEL, REFINER_MODEL and VAE_MODEL.
"""

import os
import sys

from huggingface_hub import snapshot_download

PATTERNS = ["*.json", "*.txt", "*.fp16.safetensors", "tokenizer*/*"]


def main() -> int:
    for variable, default in (
        ("BASE_MODEL", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("REFINER_MODEL", "stabilityai/stable-diffusion-xl-refiner-1.0"),
        ("VAE_MODEL", "madebyollin/sdxl-vae-fp16-fix"),
    ):
        name = os.environ.get(variable, default)
        if name.lower() in ("none", "tiny", "base", "") or os.path.isdir(name):
            continue
        patterns = ["*.json", "*.safetensors"] if variable == "VAE_MODEL" else PATTERNS
        print(f"{variable}: {name}", flush=True)
        snapshot_download(name, allow_patterns=patterns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
