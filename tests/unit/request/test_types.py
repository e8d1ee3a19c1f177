"""The typed request (request/types.py): what a job's input becomes once validated."""

from __future__ import annotations

from sdxl_worker.request.types import ControlNetInput, IpAdapterInput, Lora, Request


def test_entries_become_typed_and_one_reference_image_becomes_a_list_of_one():
    request = Request.from_input({"prompt": "a", "loras": [{"path": "a/b", "scale": 0.5}],
                                  "controlnets": [{"model": "canny", "image": "https://e.com/c.png", "scale": 2}],
                                  "ip_adapter": {"image": "https://e.com/r.png"}})
    assert request.loras == (Lora("a/b", 0.5, None),)
    assert request.controlnets == (ControlNetInput("canny", "https://e.com/c.png", "none", 100, 200, 2, 0.0, 1.0),)
    assert request.ip_adapter == IpAdapterInput(("https://e.com/r.png",), 0.6)
    several = Request.from_input({"prompt": "a", "ip_adapter": {"image": ["https://e.com/1.png", "https://e.com/2.png"],
                                                                "scale": 1}})
    assert several.ip_adapter == IpAdapterInput(("https://e.com/1.png", "https://e.com/2.png"), 1)


def test_a_whole_number_sent_as_a_float_is_an_integer():
    request = Request.from_input({"prompt": "a", "width": 1024.0, "num_inference_steps": 30.0})
    assert (request.width, request.num_inference_steps) == (1024, 30)
    assert isinstance(request.width, int) and isinstance(request.num_inference_steps, int)


def test_an_ip_adapter_reference_given_as_one_url_or_a_list_is_a_tuple_of_urls():
    one = Request.from_input({"prompt": "a", "ip_adapter": {"image": "https://e.com/a.png"}})
    two = Request.from_input({"prompt": "a", "ip_adapter": {"image": ["https://e.com/a.png", "https://e.com/b.png"]}})
    assert one.ip_adapter.images == ("https://e.com/a.png",)
    assert two.ip_adapter.images == ("https://e.com/a.png", "https://e.com/b.png")
