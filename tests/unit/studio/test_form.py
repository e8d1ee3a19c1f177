"""The studio's form (studio/form.py) comes from the input schema."""

from __future__ import annotations

from sdxl_worker.request.schema import INPUT_SCHEMA
from sdxl_worker.studio.form import MAIN, _range, fields


def test_the_form_has_every_schema_field_with_its_default_and_range_main_fields_first():
    drawn = {field["name"]: field for field in fields()}
    assert set(drawn) == set(INPUT_SCHEMA["properties"]) - {"upload"}
    assert [field["name"] for field in fields()][:len(MAIN)] == list(MAIN)
    steps = INPUT_SCHEMA["properties"]["num_inference_steps"]
    assert (drawn["num_inference_steps"]["default"], drawn["num_inference_steps"]["min"],
            drawn["num_inference_steps"]["max"]) == (steps["default"], steps["minimum"], steps["maximum"])
    assert drawn["width"]["step"] == 8 and drawn["width"]["default"] is None  # unset: the worker decides
    assert drawn["scheduler"]["options"] == INPUT_SCHEMA["properties"]["scheduler"]["enum"]
    assert None not in drawn["refine"]["options"] and drawn["refine"]["optional"]
    assert drawn["image"]["kind"] == drawn["mask"]["kind"] == "image" and drawn["loras"]["kind"] == "json"
    assert all("`" not in field["help"] and field["help"] for field in fields())








def _drawn() -> dict:
    return {field["name"]: field for field in fields()}


def test_a_number_field_shows_its_range_and_what_unset_means():
    assert _drawn()["seed"] == {
        "name": "seed", "label": "Seed", "group": "main", "kind": "number", "step": 1, "min": 0,
        "max": 9223372036854775807, "optional": True, "default": None, "always_send": False, "required": False,
        "help": "Seed of the first image. From 0 to 9223372036854775807. Unset: a random one.",
        "details": "Seed of the first image. Unset: a random one, returned in the output.", "unset": "a random one"}


def test_exclusive_bounds_read_above_and_below():
    drawn = _drawn()
    assert drawn["high_noise_frac"]["help"].endswith("this is unset). Above 0 below 1.")
    assert (drawn["high_noise_frac"]["min"], drawn["high_noise_frac"]["max"], drawn["high_noise_frac"]["step"]) == \
        (0, 1, "any")
    assert drawn["strength"]["help"].endswith(" steps. Above 0 to 1.")
    assert drawn["guidance_scale"]["help"] == "Classifier-free guidance; reaches the base and the refiner. From 0 to 50."


def test_the_studio_turns_previews_on_and_always_sends_that():
    steps = _drawn()["preview_steps"]
    assert (steps["default"], steps["always_send"], steps["group"]) == (2, True, "main")
    assert sum(field["always_send"] for field in fields()) == 1


def test_each_kind_of_field_is_drawn_as_its_kind():
    drawn = _drawn()
    kinds = {name: drawn[name]["kind"] for name in ("prompt", "negative_prompt", "model", "apply_watermark", "preset",
                                                    "image", "image_url", "mask", "loras", "controlnets",
                                                    "ip_adapter", "width")}
    assert kinds == {"prompt": "long_text", "negative_prompt": "long_text", "model": "text",
                     "apply_watermark": "boolean", "preset": "choice", "image": "image", "image_url": "image",
                     "mask": "image", "loras": "json", "controlnets": "json", "ip_adapter": "json", "width": "number"}
    assert drawn["preset"]["options"] == ["lightning-4", "lightning-8", "hyper-8", "lcm-4", "turbo-1"]
    assert drawn["model"]["unset"] == "the first" and drawn["model"]["help"] == \
        "Which of the worker's checkpoints to use, by its name in BASE_MODELS."
    assert [name for name, field in drawn.items() if field["required"]] == ["prompt"]
    assert drawn["prompt"]["details"] == "What to draw. Required unless image or image_url is given."  # no `marks`
    assert drawn["high_noise_frac"]["group"] == "more" and "upload" not in drawn
    assert (drawn["hires"]["kind"], drawn["hires"]["group"]) == ("json", "more")  # the second pass, under More
    assert drawn["prompt"]["label"] == "Prompt" and drawn["num_inference_steps"]["label"] == "Num inference steps"
    assert drawn["guidance_scale"]["step"] == "any" and drawn["num_images"]["step"] == 1


def test_range_words_for_open_ended_fields():
    assert _range({"minimum": 1}) == "From 1 up."
    assert _range({"exclusiveMinimum": 0}) == "Above 0."
    assert _range({"maximum": 5}) == "Up to 5."
    assert _range({"exclusiveMaximum": 5}) == "Below 5."
    assert _range({}) == ""


def test_a_field_without_a_range_shows_its_description_alone():
    assert _drawn()["prompt"]["help"] == "What to draw."
