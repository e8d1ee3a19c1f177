"""What one live preview costs, against the predecessor's way (a full SDXL VAE decode), in one run.

A 1024x1024 job: one 128x128 in-loop latent to a 256-px JPEG data URL, by
  linear   the SDXL latent-to-RGB projection (src/sdxl_worker/engine/latent_previews.py, the default),
  taesdxl  TAESDXL: AutoencoderTiny's default config, its real architecture, random weights,
           as the worker runs it (latent area-averaged to decode at twice the preview size)
           and on the whole latent,
  full VAE the SDXL VAE from ../shared/reference/sdxl-configs/vae.json, random weights,
           decoded at full size, then sized and encoded the same way.
Random weights cost what trained ones do. Prints medians and the ratios to the full decode.

    python bench/latent_previews.py [--repeats 30] [--vae-repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from sdxl_worker.delivery.previews import preview_data_url
from sdxl_worker.engine import latent_previews
from sdxl_worker.runtime.stream import render_preview

ROOT = Path(__file__).resolve().parent.parent

# ../shared beside the checkout (or beside the folder of worktrees)
VAE_CONFIG = next((path for path in (ROOT.parent / "shared/reference/sdxl-configs/vae.json",
                                      ROOT.parent.parent / "shared/reference/sdxl-configs/vae.json") if path.exists()),
                  ROOT.parent / "shared/reference/sdxl-configs/vae.json")


def median_ms(action, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        action()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--taesd-repeats", type=int, default=10)
    parser.add_argument("--vae-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vae-config", default=str(VAE_CONFIG))
    args = parser.parse_args()

    from diffusers import AutoencoderKL, AutoencoderTiny

    torch.manual_seed(0)
    dtype = torch.float16 if args.device.startswith("cuda") else torch.float32
    latent = torch.randn(4, 128, 128, device=args.device, dtype=dtype)  # in-loop scale, as x0 arrives
    taesd = AutoencoderTiny().to(args.device, dtype).eval()
    vae = AutoencoderKL.from_config(json.loads(Path(args.vae_config).read_text())).to(args.device, dtype).eval()

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def linear():
        assert len(render_preview(latent, 256, "jpeg", 75)) > 100

    def tiny():
        render_preview(latent, 256, "jpeg", 75, decoder=taesd)
        sync()

    def tiny_full_size():  # TAESDXL on the whole 128x128 latent (1024 px), then downscaled
        image = latent_previews.taesd_rgb(taesd, latent).resize((256, 256), Image.Resampling.BILINEAR)
        preview_data_url(image, "jpeg", 75)
        sync()

    def full():
        with torch.inference_mode():
            decoded = vae.decode(latent[None] / vae.config.scaling_factor, return_dict=False)[0][0]
            pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
        image = Image.fromarray(pixels.cpu().numpy(), "RGB").resize((256, 256), Image.Resampling.BILINEAR)
        preview_data_url(image, "jpeg", 75)
        sync()

    rows = []
    for name, action, repeats, warmup in [("linear projection", linear, args.repeats, 3),
                                          ("TAESDXL, as previews run it (64x64 latent)", tiny, args.taesd_repeats, 1),
                                          ("TAESDXL on the full 128x128 latent", tiny_full_size, args.taesd_repeats, 0),
                                          ("full SDXL VAE decode", full, args.vae_repeats, 0)]:  # seconds each on CPU
        rows.append((name, median_ms(action, repeats, warmup)))
        print(f"measured {name}: {rows[-1][1]:.1f} ms median of {repeats}", file=sys.stderr, flush=True)
    full_ms = rows[-1][1]
    print(f"one preview, 128x128 latent -> 256-px JPEG data URL, {args.device}, {torch.get_num_threads()} threads")
    print("| way | median ms | cheaper than the full decode |")
    print("| --- | ---: | ---: |")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} | {full_ms / ms:.0f}x |")
    linear_ms, taesd_ms = rows[0][1], rows[1][1]
    print(f"TAESDXL as run vs on the whole latent: {rows[2][1] / taesd_ms:.1f}x cheaper")
    print(f"goals: linear <= 5 ms: {linear_ms:.1f} ms ({'met' if linear_ms <= 5 else 'missed'}); "
          f"linear >= 100x cheaper: {full_ms / linear_ms:.0f}x ({'met' if full_ms / linear_ms >= 100 else 'missed'}); "
          f"TAESDXL >= 10x cheaper: {full_ms / taesd_ms:.0f}x ({'met' if full_ms / taesd_ms >= 10 else 'missed'})")


if __name__ == "__main__":
    main()
