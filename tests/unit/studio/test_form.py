"""The studio's form (studio/form.py) comes from the input schema."""

from __future__ import annotations

from sdxl_worker.request.schema import INPUT_SCHEMA
from sdxl_worker.studio.form import MAIN, fields


def test_the_form_has_every_schema_field_with_its_default_and_range_main_fields_first():
    drawn = {field["name"]: field for field in fields()}
    assert set(drawn) == set(INPUT_SCHEMA["properties"]) - {"s3Config", "upload"}
    assert [field["name"] for field in fields()][:len(MAIN)] == list(MAIN)
    steps = INPUT_SCHEMA["properties"]["num_inference_steps"]
    assert (drawn["num_inference_steps"]["default"], drawn["num_inference_steps"]["min"],
            drawn["num_inference_steps"]["max"]) == (steps["default"], steps["minimum"], steps["maximum"])
    assert drawn["width"]["step"] == 8 and drawn["width"]["default"] is None  # unset: the worker decides
    assert drawn["scheduler"]["options"] == INPUT_SCHEMA["properties"]["scheduler"]["enum"]
    assert None not in drawn["refine"]["options"] and drawn["refine"]["optional"]
    assert drawn["image"]["kind"] == drawn["mask"]["kind"] == "image" and drawn["loras"]["kind"] == "json"
    assert all("`" not in field["help"] and field["help"] for field in fields())






