"""The built-in tiny SDXL (engine/tiny.py): SDXL's file layout and component classes at small
widths, built in code once and loaded through the real from_pretrained path."""

import json

from sdxl_worker.engine.tiny import cache_dir, ensure_tiny_model, tokenizer
from tests.helpers import ROOT

HUB = ROOT / "tests" / "fixtures" / "hub"


def _components(index: dict) -> dict:
    return {name: value for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
            and value[0] is not None}


def test_the_tiny_pipelines_have_sdxls_components_and_classes():
    tiny = ensure_tiny_model()
    for part, real in (("base", "stabilityai__stable-diffusion-xl-base-1.0"),
                       ("refiner", "stabilityai__stable-diffusion-xl-refiner-1.0")):
        ours = json.loads((tiny / part / "model_index.json").read_text())
        theirs = json.loads((HUB / f"{real}.model_index.json").read_text())
        assert ours["_class_name"] == theirs["_class_name"]
        assert _components(ours) == _components(theirs), part
        assert ours.get("force_zeros_for_empty_prompt") == theirs.get("force_zeros_for_empty_prompt")


def test_the_tiny_unets_take_sdxls_conditioning():
    tiny = ensure_tiny_model()
    base = json.loads((tiny / "base" / "unet" / "config.json").read_text())
    refiner = json.loads((tiny / "refiner" / "unet" / "config.json").read_text())
    assert base["addition_embed_type"] == refiner["addition_embed_type"] == "text_time"
    # SDXL: the base sees both text encoders (768 + 1280), the refiner only the second (1280); the tiny
    # model keeps that split at 32 + 48 and 48, and the time ids (6 for the base, 5 with the aesthetic score).
    assert (base["cross_attention_dim"], refiner["cross_attention_dim"]) == (80, 48)
    assert base["projection_class_embeddings_input_dim"] - 6 * base["addition_time_embed_dim"] == 48
    assert refiner["projection_class_embeddings_input_dim"] - 5 * refiner["addition_time_embed_dim"] == 48


def test_it_is_built_once_under_its_versioned_folder(tmp_path):
    assert cache_dir(tmp_path) == tmp_path / "tiny-sdxl-v3"
    built = ensure_tiny_model(tmp_path)
    assert built == tmp_path / "tiny-sdxl-v3"
    stamp = (built / "base" / "unet" / "config.json").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path) == built
    assert (built / "base" / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert [path.name for path in tmp_path.iterdir()] == ["tiny-sdxl-v3"]  # no staging folder left


def test_its_tokenizer_takes_any_text_in_77_tokens():
    tokens = tokenizer()("a red fox, 🦊 and ünïcode", padding="max_length", max_length=77, truncation=True)
    ids = tokens["input_ids"]
    assert len(ids) == 77 and ids[0] == tokenizer().bos_token_id
    assert tokenizer().unk_token_id not in ids[:20]
