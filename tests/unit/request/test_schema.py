"""The input schema: defaults, every constraint, and error sentences that name the field."""

import math
import re

import pytest

from sdxl_worker.errors import InputError
from sdxl_worker.request import schema
from tests.helpers import ROOT


def error_for(inputs: dict) -> str:
    with pytest.raises(InputError) as caught:
        schema.validate(inputs)
    return str(caught.value)


def test_defaults_are_worker_sdxls():
    request = schema.validate({"prompt": "a cat"})
    assert request["scheduler"] == "DDIM"
    assert request["num_inference_steps"] == 25
    assert request["refiner_inference_steps"] == 50
    assert request["guidance_scale"] == 7.5
    assert request["strength"] == 0.3
    assert request["num_images"] == 1
    assert request["high_noise_frac"] is None
    assert request["seed"] is None


@pytest.mark.parametrize(
    "field, value",
    [
        ("width", 1001),  # not a multiple of 8
        ("width", 128),  # below the range
        ("height", 4096),  # above the range
        ("height", "1024"),  # a string is not an integer
        ("width", "１０２４"),  # full-width digits neither
        ("width", True),  # a boolean is not an integer
        ("num_images", 0),
        ("num_images", 5),
        ("num_inference_steps", 0),
        ("num_inference_steps", 201),
        ("refiner_inference_steps", 0),
        ("guidance_scale", -1),
        ("guidance_scale", 51),
        ("guidance_scale", math.nan),
        ("guidance_scale", math.inf),
        ("strength", 0),
        ("strength", 1.5),
        ("prompt_strength", 0),
        ("high_noise_frac", 0),
        ("high_noise_frac", 1),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", 1.5),
        ("scheduler", "EULER_FANCY"),
        ("refine", "sometimes"),
        ("task", "upscale"),
        ("prompt", 42),
        ("prompt", "x" * (schema.MAX_PROMPT_CHARS + 1)),
        ("negative_prompt", ["no"]),
        ("image", ""),
    ],
)
def test_each_constraint_names_its_field(field, value):
    inputs = {"prompt": "a cat", field: value}
    message = error_for(inputs)
    assert f"'{field}'" in message
    assert "Traceback" not in message and "\n" not in message


def test_an_unknown_key_is_named_with_a_suggestion():
    message = error_for({"prompt": "a cat", "num_image": 2})
    assert "'num_image'" in message and "num_images" in message


def test_all_problems_in_one_message():
    message = error_for({"prompt": "a cat", "width": 1001, "num_images": 9, "scheduler": "nope"})
    for field in ("width", "num_images", "scheduler"):
        assert f"'{field}'" in message


def test_an_unknown_scheduler_lists_the_valid_ones():
    message = error_for({"prompt": "a cat", "scheduler": "nope"})
    for name in schema.SCHEDULERS:
        assert name in message


def test_prompt_is_required_unless_an_image_is_given():
    assert "'prompt'" in error_for({})
    assert "'prompt'" in error_for({"prompt": "   "})
    assert schema.validate({"image_url": "https://example.com/a.png"})["prompt"] is None


def test_input_must_be_an_object():
    assert "input" in error_for(["a cat"])


def test_segminds_big_seed_and_integral_floats_are_accepted():
    request = schema.validate({"prompt": "a", "seed": 98877465625, "width": 1024.0})
    assert request["seed"] == 98877465625
    assert request["width"] == 1024 and isinstance(request["width"], int)


def test_task_and_images_must_agree():
    assert "'task'" in error_for({"prompt": "a", "task": "img2img"})
    assert "'task'" in error_for({"prompt": "a", "task": "txt2img", "image": "https://example.com/a.png"})
    message = error_for({"prompt": "a", "image": "https://e.com/a.png", "image_url": "https://e.com/b.png"})
    assert "'image'" in message and "'image_url'" in message


def test_readme_input_table_is_generated_from_the_schema():
    readme = ROOT / "README.md"
    text = readme.read_text()
    table = re.search(r"<!-- inputs:start -->\n(.*?)\n<!-- inputs:end -->", text, re.S)
    assert table, "README.md lacks the generated input table markers"
    assert table.group(1).strip() == schema.markdown_table().strip(), \
        "run: python -m sdxl_worker.request.schema, paste into README"


@pytest.mark.parametrize(
    "inputs, named",
    [
        ({"prompt": "a", "mask": "https://e.com/m.png"}, "'mask'"),  # no image to inpaint
        ({"prompt": "a", "mask": "https://e.com/m.png", "image_url": "https://e.com/a.png"}, "'mask'"),
        ({"prompt": "a", "task": "inpaint", "image": "https://e.com/a.png"}, "'mask'"),
        ({"prompt": "a", "task": "img2img", "image": "https://e.com/a.png", "mask": "https://e.com/m.png"}, "'task'"),
        ({"prompt": "a", "apply_watermark": "yes"}, "'apply_watermark'"),
        ({"prompt": "a", "mask": ""}, "'mask'"),
    ],
)
def test_inpainting_and_watermark_inputs_are_checked(inputs, named):
    assert named in error_for(inputs)


def test_watermark_is_off_by_default_as_in_worker_sdxl():
    assert schema.validate({"prompt": "a"})["apply_watermark"] is False


def test_the_typed_request_has_exactly_the_schemas_fields():
    from dataclasses import fields

    from sdxl_worker.request.types import Lora, Request

    assert [f.name for f in fields(Request)] == list(schema.INPUT_SCHEMA["properties"])
    request = Request.from_input({"prompt": "a cat", "loras": [{"path": "a/b", "scale": 0.5}]})
    assert request.loras == (Lora("a/b", 0.5, None),) and request.num_images == 1 and request.negative_prompt is None


_IMAGE_URL = "https://e.com/a.png"


@pytest.mark.parametrize("inputs, sentence", [
    ({"prompt": "a", "hires": {"foo": 1}}, "'hires' has an unknown key 'foo'; it takes scale, strength, steps, upscaler."),
    ({"prompt": "a", "loras": [{"path": "a/b", "scal": 1}]},
     "'loras[0]' has an unknown key 'scal' (did you mean 'scale'?); it takes path, scale, weight_name."),
    ({}, "'prompt' is required unless 'image' or 'image_url' is given."),
    ({"prompt": "  "}, "'prompt' is required unless 'image' or 'image_url' is given."),
    ({"prompt": "a", "image": _IMAGE_URL, "image_url": _IMAGE_URL},
     "Give either 'image' (img2img through the base) or 'image_url' (refiner only), not both."),
    ({"prompt": "a", "controlnets": [{"model": "c", "image": _IMAGE_URL, "start": 0.6, "end": 0.5}]},
     "'controlnets[0].start' (0.6) must be less than 'controlnets[0].end' (0.5): they are the part of the schedule "
     "the ControlNet guides."),
    ({"prompt": "a", "image_url": _IMAGE_URL, "controlnets": [{"model": "c", "image": _IMAGE_URL}]},
     "'controlnets' guides the base, and a refiner-only job ('image_url') runs no base; send the image as 'image' "
     "for img2img, or leave 'controlnets' out."),
    ({"prompt": "a", "task": "refine", "image": _IMAGE_URL, "ip_adapter": {"image": _IMAGE_URL}},
     "'ip_adapter' guides the base, and a refiner-only job ('image_url') runs no base; send the image as 'image' "
     "for img2img, or leave 'ip_adapter' out."),
    ({"prompt": "a", "task": "txt2img", "image": _IMAGE_URL},
     "'task' is 'txt2img' but an input image was given; drop the image or use 'img2img'."),
    ({"prompt": "a", "task": "img2img"}, "'task' is 'img2img' but no input image was given in 'image' or 'image_url'."),
    ({"prompt": "a", "task": "refine"}, "'task' is 'refine' but no input image was given in 'image' or 'image_url'."),
    ({"prompt": "a", "mask": _IMAGE_URL}, "'mask' needs the image to inpaint in 'image'."),
    ({"prompt": "a", "task": "inpaint", "image": _IMAGE_URL},
     "'task' is 'inpaint' but no 'mask' was given (white = repaint, black = keep)."),
    ({"prompt": "a", "task": "img2img", "image": _IMAGE_URL, "mask": _IMAGE_URL},
     "'mask' was given but 'task' is 'img2img'; use 'inpaint' or leave 'task' unset."),
    ({"prompt": "a", "preset": "lightning-4", "num_inference_steps": 30},
     "'num_inference_steps' must be 4 with 'preset' 'lightning-4' (its weights are made for that many steps); "
     "leave it out, or pick another preset."),
    ({"prompt": "a", "preset": "lightning-4", "guidance_scale": 5},
     "'guidance_scale' must be at most 1 with 'preset' 'lightning-4'; leave it out for 0."),
    ({"prompt": "a", "preset": "lightning-4", "scheduler": "DDIM"},
     "'scheduler' cannot be changed with 'preset' 'lightning-4', which needs K_EULER_TRAILING; leave 'scheduler' out."),
    ({"prompt": "a", "x": [[[[[[[[[1]]]]]]]]]}, "'x' nests lists or objects more than 8 deep."),
    ({"prompt": "a", "seed": 10**40}, "'seed' is far too large a number."),
    ({"prompt": "a\ud800"}, "'prompt' is not valid Unicode text."),
    ({"prompt": "a", "loras": [0] * 20_000}, "The job's 'input' holds more than 10,000 values."),
    ({"prompt": "a", **{f"k{n}": n for n in range(10_001)}}, "The job's 'input' holds more than 10,000 values."),
    # many small lists: no one of them is large, the count of everything is
    ({"prompt": "a", "x": [[0] * 10 for _ in range(1001)]}, "The job's 'input' holds more than 10,000 values."),
    ({"prompt": "a", "x": {"y": "\ud800"}}, "'x' is not valid Unicode text."),  # inside an object too
    ({"prompt": "a", "k" * 50: "\ud800"}, f"'{'k' * 40}' is not valid Unicode text."),  # a long name cut at 40
    ({"prompt": "a", "controlnets": [{"model": "c", "image": _IMAGE_URL, "start": 0.5, "end": 0.5}]},
     "'controlnets[0].start' (0.5) must be less than 'controlnets[0].end' (0.5): they are the part of the schedule "
     "the ControlNet guides."),
    ({"prompt": "a", "task": "refine", "image": _IMAGE_URL, "mask": _IMAGE_URL},
     "'mask' was given but 'task' is 'refine'; use 'inpaint' or leave 'task' unset."),
    ({"prompt": "a", "task": "txt2img", "image": _IMAGE_URL, "mask": _IMAGE_URL},
     "'task' is 'txt2img' but an input image was given; drop the image or use 'img2img'. "
     "'mask' was given but 'task' is 'txt2img'; use 'inpaint' or leave 'task' unset."),
    ([1, 2], "The job's 'input' must be a JSON object of parameters, e.g. {\"prompt\": \"a cat\"}."),
])
def test_each_rule_between_fields_and_each_size_limit_is_its_own_sentence(inputs, sentence):
    with pytest.raises(InputError) as refused:
        schema.validate(inputs)
    assert str(refused.value) == sentence


def _refusal(inputs: dict) -> str | None:
    try:
        schema.validate(inputs)
    except InputError as error:
        return str(error)
    return None


def test_the_size_limits_hold_exactly_at_their_bounds():
    """10,000 values, 8 levels of nesting, numbers up to 10**30: at the bound accepted, one past refused."""
    nested = 1
    for _ in range(6):  # 'x' at depth 1 holding 6 more levels: 7 deep, then one more is the limit of 8
        nested = [nested]
    assert "nests" not in (_refusal({"prompt": "a", "x": [nested]}) or "")
    assert _refusal({"prompt": "a", "x": [[nested]]}) == "'x' nests lists or objects more than 8 deep."
    assert "far too large" not in (_refusal({"prompt": "a", "x": 10**30}) or "")
    assert _refusal({"prompt": "a", "x": -(10**30 + 1)}) == "'x' is far too large a number."
    # 10,000 values in all: the prompt, 'x' and 9,998 items in it; one more item is over.
    assert "10,000 values" not in (_refusal({"prompt": "a", "x": [0] * 9_998}) or "")
    assert _refusal({"prompt": "a", "x": [0] * 9_999}) == "The job's 'input' holds more than 10,000 values."
    assert "10,000 values" not in (_refusal({f"k{n}": 0 for n in range(10_000)}) or "")


def test_unknown_inputs_are_listed_up_to_five():
    five = {f"zz{n}": n for n in range(5)}
    assert _refusal({"prompt": "a", **five}) == ("Unknown input 'zz0', 'zz1', 'zz2', 'zz3', 'zz4'; see the README for the "
                                                  "inputs this worker takes.")
    assert _refusal({"prompt": "a", **five, "zz5": 5}).startswith("Unknown input 'zz0', 'zz1', 'zz2', 'zz3', 'zz4' and 1 more;")
    assert _refusal({"prompt": "a", "negativ_prompt": "b"}) == ("Unknown input 'negativ_prompt' (did you mean "
                                                                "'negative_prompt'?); see the README for the inputs "
                                                                "this worker takes.")


def test_an_empty_list_of_reference_images_says_at_least_one():
    assert _refusal({"prompt": "a", "ip_adapter": {"image": []}}) == "'ip_adapter.image' must have at least 1 items."


@pytest.mark.parametrize("inputs, sentence", [
    ({"num_inference_steps": 0}, "'num_inference_steps' must be at least 1 and at most 200, got 0."),
    ({"strength": -1}, "'strength' must be greater than 0 and at most 1, got -1."),
    ({"seed": "a" * 300}, "'seed' must be a whole number or null, got a text of 300 characters."),
    ({"seed": "abc"}, "'seed' must be a whole number or null, got the text 'abc'."),
    ({"width": [1]}, "'width' must be a whole number or null, got a list."),
    ({"loras": [{"scale": 1}]}, "'loras[0]' is missing 'path'."),
    ({"ip_adapter": {}}, "'ip_adapter' is missing 'image'."),
    ({"prompt": 5, "width": "big"},
     "'prompt' must be string or null, got int 5. 'width' must be a whole number or null, got the text 'big'."),
])
def test_a_value_of_the_wrong_kind_or_range_is_named_with_what_was_given(inputs, sentence):
    assert error_for({"prompt": "a", **inputs}) == sentence


def test_a_list_where_a_name_belongs_is_called_a_list_in_both_sentences():
    sentence = error_for({"prompt": "a", "scheduler": ["x"]})
    assert sentence.startswith("'scheduler' must be string, got a list. 'scheduler' must be one of DDIM, PNDM, ")
    assert sentence.endswith(", K_DPMPP_2S_ANCESTRAL; got a list.")
