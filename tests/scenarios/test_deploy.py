"""Shipping: the Dockerfile lints clean and agrees with the worker; the RunPod Hub files have the
Hub's shape and their smoke tests are jobs the worker accepts."""

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from builder.download_weights import DEFAULTS as BUILDER_DEFAULTS
from sdxl_worker import config
from sdxl_worker.request.schema import validate
from tests.helpers import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
HUB = json.loads((ROOT / ".runpod" / "hub.json").read_text())
HUB_TESTS = json.loads((ROOT / ".runpod" / "tests.json").read_text())

# RunPod Hub's hub.json and tests.json (docs.runpod.io/hub/publishing-guide), as strict as we use them.
ENV_INPUT = {
    "type": "object",
    "required": ["key", "input"],
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string", "pattern": "^[A-Z][A-Z0-9_]*$"},
        "input": {
            "type": "object",
            "required": ["name", "type", "description"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "type": {"enum": ["string", "number", "boolean"]},
                "description": {"type": "string", "minLength": 10},
                "default": {"type": ["string", "number", "boolean"]},
                "options": {
                    "type": "array",
                    "minItems": 2,
                    "items": {
                        "type": "object",
                        "required": ["label", "value"],
                        "additionalProperties": False,
                        "properties": {"label": {"type": "string"}, "value": {"type": ["string", "number"]}},
                    },
                },
                "trueValue": {"type": "string"},
                "falseValue": {"type": "string"},
                "advanced": {"type": "boolean"},
            },
        },
    },
}
CUDA_VERSIONS = {"type": "array", "minItems": 1, "uniqueItems": True, "items": {"type": "string", "pattern": r"^1[0-9]\.[0-9]$"}}
HUB_SCHEMA = {
    "type": "object",
    "required": ["title", "description", "type", "category", "config"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 100},
        "description": {"type": "string", "minLength": 1},
        "type": {"const": "serverless"},
        "category": {"const": "image"},
        "iconUrl": {"type": "string", "pattern": "^https://"},
        "config": {
            "type": "object",
            "required": ["runsOn", "containerDiskInGb", "gpuCount", "gpuIds", "allowedCudaVersions", "env"],
            "additionalProperties": False,
            "properties": {
                "runsOn": {"const": "GPU"},
                "containerDiskInGb": {"type": "integer", "minimum": 1},
                "gpuCount": {"type": "integer", "minimum": 1},
                "gpuIds": {"type": "string", "pattern": r"^[A-Z]+_[0-9]+(_PRO)?(,[A-Z]+_[0-9]+(_PRO)?)*$"},
                "allowedCudaVersions": CUDA_VERSIONS,
                "presets": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "defaults"],
                        "additionalProperties": False,
                        "properties": {"name": {"type": "string"}, "defaults": {"type": "object"}},
                    },
                },
                "env": {"type": "array", "items": ENV_INPUT},
            },
        },
    },
}
TESTS_SCHEMA = {
    "type": "object",
    "required": ["tests", "config"],
    "additionalProperties": False,
    "properties": {
        "tests": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "input", "timeout"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "input": {"type": "object"},
                    "timeout": {"type": "integer", "minimum": 1000},  # milliseconds
                },
            },
        },
        "config": {
            "type": "object",
            "required": ["gpuTypeId", "gpuCount"],
            "additionalProperties": False,
            "properties": {
                "gpuTypeId": {"type": "string"},
                "gpuCount": {"type": "integer", "minimum": 1},
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "value"],
                        "additionalProperties": False,
                        "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
                    },
                },
                "allowedCudaVersions": CUDA_VERSIONS,
            },
        },
    },
}

# GPU pools with room for base + refiner in fp16: 11.5 GB of weights plus 1024x1024 activations.
POOLS_WITH_24_GB_OR_MORE = {"ADA_24", "AMPERE_24", "ADA_32_PRO", "ADA_48_PRO", "AMPERE_48", "ADA_80_PRO", "AMPERE_80",
                            "HOPPER_141"}


def _dockerfile_args() -> dict:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, flags=re.M))


def test_dockerfile_has_no_hadolint_finding():
    # In a virtual environment that is not activated, the binary sits beside the interpreter.
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is not installed (pip install -r requirements-dev.txt ships it)"
    done = subprocess.run([hadolint, "--no-color", "-f", "json", "-"], input=DOCKERFILE, capture_output=True, text=True)
    assert json.loads(done.stdout or "[]") == [], done.stdout
    assert done.returncode == 0, done.stderr


def test_build_args_are_the_run_time_variables_with_the_worker_defaults():
    args = _dockerfile_args()
    defaults = config.models({})
    assert args["BASE_MODEL"] == BUILDER_DEFAULTS["BASE_MODEL"] == defaults.base == \
        "stabilityai/stable-diffusion-xl-base-1.0"
    assert args["REFINER_MODEL"] == BUILDER_DEFAULTS["REFINER_MODEL"] == defaults.refiner == \
        "stabilityai/stable-diffusion-xl-refiner-1.0"
    assert args["VAE_MODEL"] == BUILDER_DEFAULTS["VAE_MODEL"] == defaults.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert args["TAESD_MODEL"] == BUILDER_DEFAULTS["TAESD_MODEL"] == "madebyollin/taesdxl"
    assert args["IP_ADAPTER_WEIGHT"] == "sdxl_models/ip-adapter_sdxl.safetensors"
    assert args["CONTROLNET_MODELS"] == args["IP_ADAPTER_MODEL"] == '""'  # none baked unless asked
    for name in ("BASE_MODEL", "REFINER_MODEL", "VAE_MODEL", "TAESD_MODEL", "CONTROLNET_MODELS", "IP_ADAPTER_MODEL",
                 "IP_ADAPTER_WEIGHT", "IP_ADAPTER_ENCODER"):
        assert re.search(rf"^(ENV)?\s+{name}=\${{{name}}}", DOCKERFILE, flags=re.M), f"{name} is not passed on to run time"


def test_image_runs_offline_and_bakes_the_weights_before_the_code():
    assert re.search(r"HF_HUB_OFFLINE=1", DOCKERFILE)
    order = [DOCKERFILE.index(step) for step in ("download_weights.py", "requirements.txt", "COPY src/ src/")]
    assert order == sorted(order), "weights, then libraries, then code: a code change must not refetch 11 GB"


def test_the_start_files_are_recorded_after_everything_a_start_imports_is_in_place():
    record = DOCKERFILE.index("python -m sdxl_worker.runtime.start_files")
    assert record > max(DOCKERFILE.index(step) for step in ("requirements.txt", "COPY handler.py", "COPY src/ src/"))
    assert "START_FILES" not in DOCKERFILE  # the default place, in the image's Python prefix


def _docker_ignores(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context: its patterns in order, the
    last match deciding, ``!`` bringing a path back (Docker's rules, for the patterns used here)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        keep = pattern.startswith("!")
        pattern = pattern.lstrip("!").removeprefix("**/")
        parts = Path(path.rstrip("/")).parts
        if any(fnmatch.fnmatch("/".join(parts[i:]), pattern) or fnmatch.fnmatch(part, pattern)
               for i, part in enumerate(parts)):
            ignored = not keep
    return ignored


def test_every_copied_path_exists_and_is_not_docker_ignored():
    for line in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE, flags=re.M):
        for source in line.split():
            assert (ROOT / source).exists(), source
            assert not _docker_ignores(source), source
    assert all(_docker_ignores(path) for path in ("tests", "bench", ".git", "docs/modes.md",
                                                   "src/sdxl_worker.egg-info"))


def test_hub_json_has_the_hub_shape_and_the_worker_settings():
    jsonschema.validate(HUB, HUB_SCHEMA)
    config = HUB["config"]
    assert set(config["gpuIds"].split(",")) <= POOLS_WITH_24_GB_OR_MORE
    env = {item["key"]: item["input"] for item in config["env"]}
    required = {"BASE_MODEL", "REFINER_MODEL", "VAE_MODEL", "TAESD_MODEL", "WARMUP"}
    required |= {"BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME"}
    assert required <= set(env)
    args = _dockerfile_args()
    for name in ("BASE_MODEL", "REFINER_MODEL", "VAE_MODEL", "TAESD_MODEL"):
        assert env[name]["default"] == args[name], f"{name}: the Hub default is not what the image bakes"
    assert "none" in {option["value"] for option in env["REFINER_MODEL"]["options"]}
    for preset in config.get("presets", []):
        assert set(preset["defaults"]) <= set(env), preset["name"]
    assert config["allowedCudaVersions"] == HUB_TESTS["config"]["allowedCudaVersions"]


@pytest.mark.parametrize("case", HUB_TESTS["tests"], ids=lambda case: case["name"])
def test_hub_smoke_tests_are_valid_jobs(case):
    jsonschema.validate(HUB_TESTS, TESTS_SCHEMA)
    validate(case["input"])  # raises InputError naming the field if the worker would refuse it
    assert case["timeout"] >= 60_000, "a cold start alone loads 11.5 GB"
