"""The configuration: every variable read in one module, one parser per kind, one sentence when wrong."""

from __future__ import annotations

import re

import pytest

from builder.download_weights import wanted_from_env
from sdxl_worker import config
from tests.helpers import ROOT


def test_only_the_configuration_module_and_the_handler_read_the_environment():
    readers = []
    for path in [*ROOT.joinpath("src").rglob("*.py"), *ROOT.joinpath("builder").rglob("*.py"), ROOT / "handler.py"]:
        if re.search(r"\bos\.environ\b|\bgetenv\(", path.read_text()):
            readers.append(str(path.relative_to(ROOT)))
    assert sorted(readers) == ["handler.py", "src/sdxl_worker/config.py"]


@pytest.mark.parametrize("off", ["none", "off", "false", "0", "", "None", "OFF"])
def test_every_way_of_saying_off_turns_the_refiner_off_in_the_worker_and_the_builder(off):
    env = {"BASE_MODEL": "example/base", "REFINER_MODEL": off, "VAE_MODEL": off, "TAESD_MODEL": off}
    settings = config.models(env)
    assert (settings.refiner, settings.vae, settings.taesd) == (None, None, None)
    assert [wanted.variable for wanted in wanted_from_env(env)] == ["BASE_MODEL"]


def test_the_builder_and_the_worker_share_the_default_model_ids():
    settings = config.models({})
    base, refiner = "stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-refiner-1.0"
    vae = "madebyollin/sdxl-vae-fp16-fix"
    assert (settings.base, settings.refiner, settings.vae) == (base, refiner, vae)
    assert [w.repo for w in wanted_from_env({})] == [base, refiner, vae, "madebyollin/taesdxl"]


@pytest.mark.parametrize("name, value, words", [
    ("FETCH_READ_TIMEOUT", "soon", "not a number from 0.1 to 600"),
    ("FETCH_MAX_BYTES", "1.5", "not a whole number"),
    ("LORA_MAX_MB", "-3", "not a number from 0"),
    ("CPU_OFFLOAD", "maybe", "not a yes/no value"),
    ("ALLOW_PRIVATE_URLS", "2", "not a yes/no value"),
    ("DTYPE", "float8", "not one of float16, bfloat16, float32"),
    ("ATTENTION", "flash3", "not one of auto, sdpa, cudnn, classic"),
    ("FUSED_QKV", "sometimes", "not auto, 1 (on) or 0 (off)"),
    ("WARMUP_SIZES", "big", "not a list of sizes"),
    ("LOG_LEVEL", "loud", "not one of debug, info"),
    ("BUCKET_NAME", "renders", "half configured"),
    ("BASE_MODELS", "Juggernaut=/m/j.safetensors", "not name=source"),
    ("BASE_MODELS", "a=tiny,a=/m/b.safetensors", "names 'a' twice"),
    ("MODELS_KEPT", "0", "not a whole number from 1 to 8"),
])
def test_a_bad_value_is_one_sentence_naming_the_variable(name, value, words):
    with pytest.raises(config.ConfigError) as refused:
        config.load({name: value})
    message = str(refused.value)
    assert name in message and words in message and message.endswith(".")


def test_base_models_name_the_checkpoints_and_the_first_is_the_one_loaded():
    settings = config.models({"BASE_MODELS": " jugg = /runpod-volume/j.safetensors, sdxl=stabilityai/sdxl ",
                              "BASE_MODEL": "ignored", "MODELS_KEPT": "2"})
    assert settings.choices == (("jugg", "/runpod-volume/j.safetensors"), ("sdxl", "stabilityai/sdxl"))
    assert settings.base == "/runpod-volume/j.safetensors" and settings.kept == 2
    assert config.models({"BASE_MODEL": "tiny"}).choices == ((config.DEFAULT_MODEL_NAME, "tiny"),)
    assert config.build({"PRESETS": "Lightning-4, lcm-4,lightning-4"}).presets == ("lightning-4", "lcm-4")


def test_the_worker_stops_at_start_up_on_a_bad_value(tmp_path):
    from tests.helpers import run_handler

    done = run_handler(BASE_MODEL="tiny", REFINER_MODEL="none", FETCH_READ_TIMEOUT="soon")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "FETCH_READ_TIMEOUT='soon'" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_the_settings_read_at_start_up_are_what_the_worker_uses(monkeypatch):
    import base64
    import io

    from PIL import Image

    from sdxl_worker.errors import InputError
    from sdxl_worker.runtime.worker import Worker

    for name, value in {"LORA_MAX_MB": "1", "MAX_IMAGE_PIXELS": "100", "MAX_JOB_WORK": "50",
                        "INLINE_LIMIT_MB": "2"}.items():
        monkeypatch.setenv(name, value)
    worker = Worker.build(None, config.load())
    for name in ("LORA_MAX_MB", "MAX_IMAGE_PIXELS", "MAX_JOB_WORK", "INLINE_LIMIT_MB"):
        monkeypatch.setenv(name, "7")  # set after start-up: no longer read
    assert worker.lora_files.max_file_bytes == 1_000_000
    assert worker.max_job_work == 50 and worker.inline_limit_bytes == 2_000_000
    buffer = io.BytesIO()
    Image.new("RGB", (11, 11)).save(buffer, format="PNG")
    with pytest.raises(InputError, match="11x11"):
        worker.images.image(base64.b64encode(buffer.getvalue()).decode(), "image")


def test_docs_configuration_holds_the_generated_table():
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = re.search(r"<!-- variables:start -->\n(.*?)\n<!-- variables:end -->", text, re.S)
    assert table and table.group(1).strip() == config.markdown_table().strip(), \
        "run: python -m sdxl_worker.config, paste into docs/configuration.md"
    assert len(config.VARIABLES) == len({v.name for v in config.VARIABLES}) >= 40


def test_each_number_is_declared_once_and_its_doc_row_default_and_bounds_agree():
    """The doc table, the settings' defaults and the parser's bounds all come from one declaration:
    a bound moved in the declaration moves everywhere."""
    numbers = {value.name: value for value in vars(config).values() if isinstance(value, config.Number)}
    assert {"FETCH_CONNECT_TIMEOUT", "LORA_MAX_MB", "MAX_JOB_WORK", "BUCKET_UPLOAD_ATTEMPTS"} <= set(numbers)
    rows = {variable.name: variable for variable in config.VARIABLES}
    bucket = {name: "x" for name in config.STORAGE_REQUIRED} | {"BUCKET_ENDPOINT_URL": "https://s3.example.com"}
    for name, number in numbers.items():
        assert name in rows, name
        if any(character.isdigit() for character in rows[name].accepted):  # a printed range is the parser's
            assert f"{number.low:g}-{number.high:g}" in rows[name].accepted, name
        env = dict(bucket) if name.startswith("BUCKET_") else {}
        read = config.build if rows[name].part == "build" else config.load  # the image builder's own
        just_over = number.high + (1 if number.integer else number.high * 0.01 + 0.01)
        with pytest.raises(config.ConfigError, match=name):
            read({**env, name: str(just_over)})
        read({**env, name: str(int(number.high) if number.integer else number.high)})  # the top is allowed
    # Unset, each setting is its declared default: written here, not read from the declarations.
    settings = config.load({**bucket})
    assert (settings.fetch.connect_timeout, settings.fetch.read_timeout, settings.fetch.total_timeout) == (5, 10, 30)
    assert (settings.fetch.max_bytes, settings.loras.max_mb, settings.loras.cache_mb) == (20_000_000, 1024, 4096)
    assert (settings.jobs.max_job_work, settings.jobs.inline_limit_mb, settings.jobs.concurrency) == (6000, 10, 1)
    assert (settings.storage.attempts, settings.storage.deadline_s, settings.storage.read_timeout_s) == (4, 60, 20)
