"""Cold start: how long the worker takes from process start to ready, against a raw read of its files.

    python bench/cold_start.py            build the cache once, then measure
    python bench/cold_start.py --build    only build the cache
    python bench/cold_start.py --no-predecessor   skip the predecessor's way (needs 13 GB of RAM)
    python bench/cold_start.py --python "$(which python3)"   load with this interpreter instead

The loaders run in the image's environment: a virtual environment under bench/.cache/ with this
torch and requirements.txt, nothing else (built once). A development machine has more installed
(this one has SciPy, which diffusers and transformers import when it is there: 4 s of imports a
worker never pays); --python picks another interpreter, such as the GPU machine's.

Full-size SDXL base, refiner, VAE and both text encoders are built from the real configs in
bench/sdxl-configs/ with random weights and saved as fp16 safetensors under
bench/.cache/ (about 13 GB; once). They sit in diffusers layout, as the builder bakes them into the
image: base/ without a VAE, refiner/ with its own text_encoder_2 and VAE (as the real repo has
them; the worker skips them, the predecessor loads them), vae/ standing for the fp16-fix VAE.

Then, in one run, each step with the files evicted from the page cache first (posix_fadvise
DONTNEED per file, checked with mincore; /proc/sys/vm/drop_caches only if pages stay), and
before each loader Python's and the libraries' files too, as on a freshly started worker:
  raw read     every file the worker loads, read once, 16 MiB at a time
  worker       a fresh `python` that imports handler.py (which starts the prefetch helper, then
               imports the libraries) and runs load_models: process start to models ready. The
               start files are recorded first (python -m sdxl_worker.runtime.start_files), as the
               Dockerfile does at build time
  weights only the same without the start-files list: the helper reads the weights only
  no prefetch  the same with PREFETCH=0
  predecessor  worker-sdxl's way: base and refiner loaded as whole pipelines, each with its own
               text_encoder_2 and VAE, then moved to the device

On CPU both loaders run in fp16 (DTYPE=float16): fp32 would need 23 GB of RAM for 11.46 GB of
fp16 weights. With a GPU (DEVICE=cuda, the default when one is there) the worker loads to it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(__file__).resolve().parent / ".cache" / "sdxl-random-fp16"
IMAGE_VENV = Path(__file__).resolve().parent / ".cache" / "image-venv"
CONFIGS = ROOT / "bench" / "sdxl-configs"  # the released SDXL configs, kept in the repository

# Parameter counts of the released weights (REFERENCE.md section 7): the build checks them.
PARAMETERS = {
    "base_unet": 2_567_463_684,
    "refiner_unet": 2_259_526_660,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


# --- building the random-weight checkpoints, one component at a time ----------------------------


def _random_fp16(model):
    """Give every parameter still on the meta device random fp16 values (real bytes, not zeros)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    count = 0
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            values = torch.empty(param.shape, dtype=torch.float16)
            values.normal_(0.0, 0.02, generator=generator)
            module._parameters[name] = torch.nn.Parameter(values, requires_grad=False)
            count += values.numel()
    return count


def _build_model(kind: str, config_name: str, target: Path, expected: int) -> None:
    import torch
    from accelerate import init_empty_weights

    if (target / "config.json").exists():
        return
    config = json.loads((CONFIGS / config_name).read_text())
    with init_empty_weights():  # parameters on meta, buffers real: no 10 GB fp32 init
        if kind == "unet":
            from diffusers import UNet2DConditionModel

            model = UNet2DConditionModel.from_config(config)
        elif kind == "vae":
            from diffusers import AutoencoderKL

            config["force_upcast"] = False  # as madebyollin/sdxl-vae-fp16-fix ships it
            model = AutoencoderKL.from_config(config)
        else:
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            cls = CLIPTextModelWithProjection if kind == "text_encoder_2" else CLIPTextModel
            model = cls(CLIPTextConfig(**{k: v for k, v in config.items() if k != "architectures"}))
    count = _random_fp16(model)
    if count != expected:
        raise SystemExit(f"{config_name}: {count:,} parameters, expected {expected:,}")
    model.to(torch.float16)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, variant="fp16", safe_serialization=True)
    staging.rename(target)
    del model
    print(f"  built {target.relative_to(CACHE)} ({count:,} parameters)", flush=True)


def build_cache() -> None:
    """Write base/, refiner/ and vae/ under CACHE, each component once, freeing memory in between."""
    from sdxl_worker.engine.tiny import ensure_tiny_model

    tiny = ensure_tiny_model()
    base, refiner = CACHE / "base", CACHE / "refiner"
    for folder in (base, refiner):
        folder.mkdir(parents=True, exist_ok=True)
    _build_model("vae", "vae.json", CACHE / "vae", PARAMETERS["vae"])
    _build_model("text_encoder", "text_encoder.json", base / "text_encoder", PARAMETERS["text_encoder"])
    _build_model("text_encoder_2", "text_encoder_2.json", base / "text_encoder_2", PARAMETERS["text_encoder_2"])
    _build_model("unet", "base_unet.json", base / "unet", PARAMETERS["base_unet"])
    _build_model("unet", "refiner_unet.json", refiner / "unet", PARAMETERS["refiner_unet"])
    # The refiner repo carries its own copies; real copies on disk, so the predecessor reads them.
    for source, target in ((base / "text_encoder_2", refiner / "text_encoder_2"), (CACHE / "vae", refiner / "vae")):
        if not target.exists():
            shutil.copytree(source, target.with_name(target.name + ".partial"), dirs_exist_ok=True)
            target.with_name(target.name + ".partial").rename(target)
    # Tokenizers and schedulers are small: the tiny model's are the right kind.
    for pipeline in ("base", "refiner"):
        for part in ("tokenizer", "tokenizer_2", "scheduler"):
            if (tiny / pipeline / part).exists() and not (CACHE / pipeline / part).exists():
                shutil.copytree(tiny / pipeline / part, CACHE / pipeline / part)
        shutil.copy(tiny / pipeline / "model_index.json", CACHE / pipeline / "model_index.json")
    (CACHE / "done").write_text("1")


# --- measuring --------------------------------------------------------------------------------


def weight_files(folders: list[Path]) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.safetensors"))


def drop_page_cache(files: list[Path]) -> str:
    """Evict the files from the page cache: file by file (kind to the machine's other users),
    and the whole cache through /proc/sys/vm/drop_caches only if pages stay resident."""
    os.sync()  # dirty pages cannot be dropped
    _evict(files)
    if resident_fraction(files) < 0.01:
        return "posix_fadvise(DONTNEED)"
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        return "posix_fadvise(DONTNEED), partly"


def _evict(files: list[Path]) -> None:
    """posix_fadvise(DONTNEED) on each file that can be opened: its clean pages leave the cache."""
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_fraction(files: list[Path]) -> float:
    """Share of the files' pages in the page cache (mincore): checks that the drop worked."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    resident = total = 0
    for path in files:
        size = path.stat().st_size
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        fd = os.open(path, os.O_RDONLY)
        try:
            address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            vector = (ctypes.c_ubyte * pages)()
            libc.mincore(address, size, vector)
            libc.munmap(address, size)
        finally:
            os.close(fd)
        resident += sum(byte & 1 for byte in vector)
        total += pages
    return resident / max(total, 1)


def raw_read(files: list[Path]) -> tuple[float, int]:
    """Seconds to read every byte of the files once, 16 MiB at a time."""
    chunk = bytearray(16 << 20)
    view = memoryview(chunk)
    total = 0
    started = time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while read := handle.readinto(view):
                total += read
    return time.perf_counter() - started, total


# The loaders run in a fresh interpreter, so imports and library start-up count, as on a worker.
WORKER = """
import json, logging, os, sys, time
started = float(sys.argv[1])
logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stderr)
import handler  # the worker's own start: the prefetch helper, then the library imports
from sdxl_worker import config
from sdxl_worker.engine.models import import_libraries, load_models, loaded_bytes  # what handler.main() imports
# load_models begins with these imports: done here, so the table can tell import time from load
# time. The total is the same either way.
import_libraries()
imported = time.time()
models = load_models(config.models(), config.speed())
ready = time.time()
print(json.dumps({"seconds": ready - started, "imports": imported - started, "bytes": loaded_bytes(models),
                  "device": models.device, "dtype": str(models.dtype)}))
"""

PREDECESSOR = """
import json, os, sys, time
started = float(sys.argv[1])
import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection
from sdxl_worker.engine.models import loaded_bytes, Models
imported = time.time()
device, dtype = os.environ["DEVICE"], getattr(torch, os.environ["DTYPE"])
cache = os.environ["BENCH_CACHE"]
vae = AutoencoderKL.from_pretrained(cache + "/vae", torch_dtype=dtype, variant="fp16")
base = StableDiffusionXLPipeline.from_pretrained(cache + "/base", vae=vae, torch_dtype=dtype, variant="fp16",
                                                 use_safetensors=True, add_watermarker=False).to(device)
refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(cache + "/refiner", torch_dtype=dtype, variant="fp16",
                                                           use_safetensors=True, add_watermarker=False).to(device)
ready = time.time()
models = Models(base, None, refiner, device, dtype)
print(json.dumps({"seconds": ready - started, "imports": imported - started, "bytes": loaded_bytes(models),
                  "device": device, "dtype": str(dtype)}))
"""


def image_python() -> str:
    """The interpreter of a virtual environment like the image's (torch, requirements.txt, the package)."""
    python, complete = IMAGE_VENV / "bin" / "python", IMAGE_VENV / "complete"
    if not complete.exists():
        import torch

        version = torch.__version__.split("+")[0]
        print(f"Making {IMAGE_VENV.relative_to(ROOT)}: torch {version} and requirements.txt (once) ...", flush=True)
        shutil.rmtree(IMAGE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(IMAGE_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        for what in ([f"torch=={version}"], ["-r", str(ROOT / "requirements.txt")], ["--no-deps", "-e", str(ROOT)]):
            done = subprocess.run(pip + what, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"pip install {' '.join(what)} failed:\n{done.stderr[-4000:]}")
        complete.write_text("1")
    return str(python)


def record_start_files(python: str) -> str:
    """List the files the worker's start opens, in that environment, as the Dockerfile does."""
    done = subprocess.run([python, "-m", "sdxl_worker.runtime.start_files"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"recording the start files failed:\n{done.stderr[-4000:]}")
    return done.stdout.strip()


def python_files(python: str) -> list[Path]:
    """The interpreter's standard library and installed libraries: a fresh worker finds none of
    them cached either."""
    code = "import json, sysconfig; print(json.dumps([sysconfig.get_paths()[k] for k in ('stdlib', 'purelib', 'platlib')]))"
    roots = {Path(p) for p in json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True,
                                                        check=True).stdout)}
    return [Path(top) / name for root in roots for top, _, names in os.walk(root) for name in names]


def run_loader(code: str, env: dict, files: list[Path], python: str) -> dict:
    drop_page_cache(files)
    _evict(python_files(python))
    started = time.time()
    done = subprocess.run(
        [python, "-c", code, repr(started)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"loader failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["log"] = [line for line in done.stderr.splitlines() if line.startswith(("Loaded", "  "))]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", action="store_true", help="only build the cache")
    parser.add_argument("--no-predecessor", action="store_true", help="skip the predecessor's loader")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--python", default=None,
                        help="interpreter for the loaders (default: a venv like the image's, made once)")
    args = parser.parse_args(argv)

    if not (CACHE / "done").exists():
        print(f"Building random-weight SDXL in fp16 under {CACHE} (once) ...", flush=True)
        started = time.perf_counter()
        build_cache()
        print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    if args.build:
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    worker_folders = [CACHE / "base" / p for p in ("unet", "text_encoder", "text_encoder_2")]
    worker_folders += [CACHE / "refiner" / "unet", CACHE / "vae"]
    worker_files = weight_files(worker_folders)
    all_files = weight_files([CACHE])

    python = args.python or image_python()
    print(record_start_files(python), flush=True)
    how = drop_page_cache(all_files)
    still = resident_fraction(worker_files)
    read_seconds, read_bytes = raw_read(worker_files)

    env = dict(os.environ, BASE_MODEL=str(CACHE / "base"), REFINER_MODEL=str(CACHE / "refiner"),
               VAE_MODEL=str(CACHE / "vae"), DEVICE=device, DTYPE="float16", BENCH_CACHE=str(CACHE),
               HF_HUB_OFFLINE="1", WARMUP="0")
    runs = [("worker: start to ready", run_loader(WORKER, env, all_files, python))]
    no_list = str(CACHE / "no-start-files.txt")
    runs.append(("worker, weights only (no start-files list)",
                 run_loader(WORKER, dict(env, START_FILES=no_list), all_files, python)))
    runs.append(("worker without prefetch (PREFETCH=0)",
                 run_loader(WORKER, dict(env, PREFETCH="0"), all_files, python)))
    if not args.no_predecessor:
        runs.append(("predecessor (worker-sdxl's way)", run_loader(PREDECESSOR, env, all_files, python)))

    print(f"\nCold start, {device}, fp16, page cache dropped by {how} ({still:.0%} still resident before the read),"
          f" loaders run by {python}")
    print("| what | seconds | imports | loading | GB loaded | x raw read | loading x raw read |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| raw read of the worker's files | {read_seconds:.1f} | | | {read_bytes / 1e9:.2f} | 1.00 | |")
    for name, run in runs:
        loading = run["seconds"] - run["imports"]
        print(
            f"| {name} | {run['seconds']:.1f} | {run['imports']:.1f} | {loading:.1f} | {run['bytes'] / 1e9:.2f} "
            f"| {run['seconds'] / read_seconds:.2f} | {loading / read_seconds:.2f} |"
        )
    print(f"\n(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs at the end)")
    worker = runs[0][1]
    print("\nworker start-up log:")
    for line in worker["log"]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
