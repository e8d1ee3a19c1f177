"""OpenAI's Images API fields mapped to a job's input, and the answer in OpenAI's shape: each mapping
the docs table gives (docs/http.md), written out here."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from sdxl_worker.api import openai_images, replies
from sdxl_worker.api.replies import Refusal
from sdxl_worker.errors import INPUT, INTERNAL, Failure
from sdxl_worker.inputs.images import transparent_to_white

CHECKPOINTS = ("default", "juggernaut")
PRESETS = ("lightning-4",)  # the presets whose weights this worker has


def mapped(**body):
    return openai_images.to_input(body, CHECKPOINTS, PRESETS)


def refusal(**body) -> Refusal:
    with pytest.raises(Refusal) as raised:
        mapped(**body)
    return raised.value


def test_openai_fields_become_the_worker_s_inputs():
    job, asked = mapped(prompt="a fox", n=3, size="1536x1024", output_format="webp", output_compression=70,
                        user="u-1", style="natural", moderation="low", background="opaque")
    assert job == {"prompt": "a fox", "num_images": 3, "width": 1536, "height": 1024, "upload": False,
                   "output_format": "webp", "output_quality": 70}
    assert (asked.response_format, asked.output_format, asked.size, asked.background) == (
        "b64_json", "webp", "1536x1024", "opaque")
    job, asked = mapped(prompt="a fox", size="auto", response_format="url")
    assert job == {"prompt": "a fox", "upload": True} and asked.response_format == "url"


def test_model_names_a_checkpoint_or_a_preset_and_openai_s_own_names_mean_the_default():
    assert mapped(prompt="a", model="juggernaut")[0]["model"] == "juggernaut"
    assert mapped(prompt="a", model="lightning-4")[0]["preset"] == "lightning-4"
    for name in ("dall-e-3", "gpt-image-1", "dall-e-2"):
        job = mapped(prompt="a", model=name)[0]
        assert "model" not in job and "preset" not in job
    wrong = refusal(prompt="a", model="sd-1.5")
    assert (wrong.status, wrong.param, wrong.code) == (400, "model", "model_not_found")
    assert str(wrong).endswith("use one of default, juggernaut, lightning-4 (GET /v1/models lists them).")
    absent = refusal(prompt="a", model="turbo-1")  # a preset, but its weights are not here
    assert "not in this worker's image" in str(absent) and "turbo-1," not in str(absent)


def test_quality_sets_the_steps_only_when_the_request_does_not():
    assert mapped(prompt="a", quality="low")[0]["num_inference_steps"] == 15
    assert mapped(prompt="a", quality="hd")[0]["num_inference_steps"] == 50
    assert "num_inference_steps" not in mapped(prompt="a", quality="medium")[0]
    assert mapped(prompt="a", quality="high", num_inference_steps=8)[0]["num_inference_steps"] == 8
    assert "num_inference_steps" not in mapped(prompt="a", quality="high", model="lightning-4")[0]


def test_errors_name_openai_s_field_only_where_the_request_used_it():
    assert dict(mapped(prompt="a", n=2, size="512x512")[1].renamed) == {
        "num_images": "n", "width": "size", "height": "size", "upload": "response_format"}
    assert "num_images" not in dict(mapped(prompt="a", num_images=2)[1].renamed)


def test_stream_asks_for_a_preview_every_step_only_when_partial_images_are_wanted():
    job, asked = mapped(prompt="a", stream=True, partial_images=2, quality="high", size="512x768")
    assert job["preview_steps"] == 1 and (asked.stream, asked.partial_images) == (True, 2)
    assert (asked.size, asked.quality, asked.background) == ("512x768", "high", "auto")
    job, asked = mapped(prompt="a", stream=True)
    assert "preview_steps" not in job and (asked.stream, asked.partial_images) == (True, 0)
    assert mapped(prompt="a", partial_images=2)[1].partial_images == 0  # without stream: nothing to put them in


def test_the_worker_s_own_inputs_pass_through_and_a_field_given_twice_is_refused():
    job = mapped(prompt="a", seed=7, negative_prompt="blur", loras=[{"path": "x/y"}])[0]
    assert (job["seed"], job["negative_prompt"], job["loras"]) == (7, "blur", [{"path": "x/y"}])
    twice = refusal(prompt="a", n=2, num_images=2)
    assert twice.param == "n" and str(twice) == "'n' and 'num_images' set the same input; give only one."
    assert refusal(prompt="a", response_format="url", upload=False).param == "response_format"


def test_a_prompt_is_required_and_numbers_are_shown_as_numbers():
    for body in ({}, {"prompt": ""}, {"prompt": "   "}, {"prompt": 7}):
        assert refusal(**body).param == "prompt"
    assert str(refusal(prompt="a", stream=True, partial_images=4)).endswith("from 0 to 3; got 4.")
    assert str(refusal(prompt="a", size=1024)).endswith("or auto; got 1024.")


@pytest.mark.parametrize(("body", "param"), [
    ({"size": "1024"}, "size"), ({"size": "1024x"}, "size"), ({"size": 1024}, "size"),
    ({"size": "<b>1024x1024</b>"}, "size"), ({"response_format": "base64"}, "response_format"),
    ({"quality": "ultra"}, "quality"), ({"style": "anime"}, "style"), ({"background": "transparent"}, "background"),
    ({"stream": "yes"}, "stream"), ({"stream": True, "partial_images": 4}, "partial_images"),
    ({"stream": True, "response_format": "url"}, "response_format"), ({"preview_steps": 2}, "preview_steps"),
])
def test_a_wrong_openai_field_is_refused_naming_it(body, param):
    wrong = refusal(prompt="a", **body)
    assert (wrong.status, wrong.param) == (400, param)
    assert "<b>" not in str(wrong)


def test_the_answer_has_openai_s_shape_with_the_worker_s_extras():
    result = {"images": ["data:image/png;base64,AAAA", "data:image/png;base64,BBBB"], "image_url": "x",
              "seed": 3, "seeds": [3, 4], "timings": {"total": 9}}
    answer = openai_images.answer(result, openai_images.Asked())
    assert answer["data"] == [{"b64_json": "AAAA"}, {"b64_json": "BBBB"}] and answer["output_format"] == "png"
    assert answer["sdxl"] == {"seed": 3, "seeds": [3, 4], "timings": {"total": 9}}
    assert isinstance(answer["created"], int)
    urls = openai_images.answer({**result, "images": ["https://bucket/a.png"]}, openai_images.Asked("url"))
    assert urls["data"] == [{"url": "https://bucket/a.png"}] and urls["output_format"] == "png"
    fallback = openai_images.answer({**result, "images": ["data:image/jpeg;base64,CCCC"]}, openai_images.Asked())
    assert fallback["output_format"] == "jpeg"  # a PNG too large to send inline came as JPEG: said so


def test_a_failed_job_gets_its_status_and_the_field_it_names():
    refused = replies.failed(Failure("'loras[0].path' is not a path this worker can read.", INPUT))
    assert (refused.status, refused.param, refused.code) == (400, "loras", "invalid_input")
    internal = replies.failed(Failure("The worker hit an internal error on job x; ...", INTERNAL))
    assert (internal.status, internal.param) == (500, None)
    assert replies.failed(Failure("stopped", "timed out")).status == 504
    stopping = replies.failed(Failure("The worker is shutting down", "shutting down"))
    assert (stopping.status, stopping.retry_after_s) == (503, 5)
    body = replies.response(refused, "/v1/images/edits", {"loras": "extra"}).body
    assert b'"param":"extra"' in body and b'"type":"invalid_request_error"' in body
    in_their_words = replies.openai_error(replies.failed(Failure("'num_images' must be at most 4, got 9.", INPUT)),
                                          {"num_images": "n", "width": "size"})
    assert in_their_words["error"]["message"] == "'n' must be at most 4, got 9."
    assert in_their_words["error"]["param"] == "n"
    side = replies.openai_error(replies.failed(Failure("'width' must be a multiple of 8, got 250.", INPUT)),
                                {"width": "size"})
    assert (side["error"]["param"], side["error"]["message"]) == ("size", "'width' must be a multiple of 8, got 250.")
    assert replies.response(refused, "/v1/jobs").body.startswith(b'{"error":"\'loras[0].path\'')


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_an_openai_mask_s_transparent_pixels_become_white_to_repaint():
    mask = Image.new("RGBA", (4, 2), (255, 255, 255, 255))
    mask.putpixel((0, 0), (255, 255, 255, 0))  # transparent: edit
    mask.putpixel((1, 0), (0, 0, 0, 128))  # half: half
    converted = transparent_to_white(png(mask), "mask")
    assert converted.mode == "L" and list(converted.getdata())[:3] == [255, 127, 0]
    grey = Image.new("L", (4, 2), 0)
    grey.putpixel((3, 1), 255)  # no transparency: already this worker's mask
    assert list(transparent_to_white(png(grey), "mask").getdata())[-1] == 255
    opaque = Image.new("RGBA", (4, 2), (0, 0, 0, 255))  # an editor's RGBA file with nothing see-through
    opaque.putpixel((3, 1), (255, 255, 255, 255))
    assert list(transparent_to_white(png(opaque), "mask").getdata()) == [0] * 7 + [255]


def test_a_field_sent_as_null_is_a_field_not_sent_and_defaults_are_openai_s():
    job, asked = mapped(prompt="a", n=None, size=None, model=None, quality=None)
    assert job == {"prompt": "a", "upload": False}
    assert (asked.response_format, asked.output_format, asked.size, asked.quality, asked.background, asked.stream) == (
        "b64_json", "png", "auto", "auto", "auto", False)


def test_each_accepted_but_idle_field_is_still_checked():
    assert refusal(prompt="a", moderation="strict").param == "moderation"
    assert str(refusal(prompt="a", background="transparent")) == (
        "'background' transparent cannot be made: SDXL draws opaque images; use auto or opaque.")
    assert refusal(prompt="a", output_compression=50, output_quality=50).param == "output_compression"
    assert str(refusal(prompt="a", quality=[])).endswith("got a list.")
    assert str(refusal(prompt="a", quality={})).endswith("got an object.")
    assert str(refusal(prompt="a", stream="yes")).endswith("got 'yes'.")
    assert str(refusal(prompt="a", style=True)).endswith("got true or false.")
    assert str(refusal(prompt="a", stream=True, partial_images=2.5)).endswith("got 2.5.")
    assert str(refusal(prompt="a", model=["x"])) == "'model' must be a model's name, a string; got a list."


def test_the_delivered_format_is_read_from_each_image():
    assert openai_images.delivered_format("data:image/webp;base64,AAAA", "png") == "webp"
    assert openai_images.delivered_format("data:image/png;base64,AAAA", "jpeg") == "png"
    assert openai_images.delivered_format("data:image/gif;base64,AAAA", "png") == "png"  # not one the worker makes
    answer = openai_images.answer({"images": ["https://b/x.png"], "seed": 1, "seeds": [1], "timings": {},
                                   "warnings": ["uploaded late"]}, openai_images.Asked())
    assert answer["data"] == [{"b64_json": "https://b/x.png"}] and answer["sdxl"]["warnings"] == ["uploaded late"]


def test_refusals_carry_the_code_and_headers_a_client_reads():
    assert [Refusal(status, "x").code for status in (401, 413, 429, 500, 418)] == [
        "invalid_api_key", "request_too_large", "busy", "server_error", "invalid_request"]
    plain = replies.failed({"error": "a dict without a kind"})
    assert (plain.status, plain.code, plain.param, plain.retry_after_s) == (500, "internal_error", None, None)
    stopping = replies.failed(Failure("'seed' stopped", "shutting down"))
    assert (stopping.param, stopping.code) == (None, "shutting_down")  # names no field: not the user's mistake
    busy = replies.response(Refusal(429, "busy", retry_after_s=5), "/v1/jobs")
    assert busy.headers["retry-after"] == "5" and "www-authenticate" not in busy.headers
    key = replies.response(Refusal(401, "key"), "/v1/images/generations")
    assert key.headers["www-authenticate"] == "Bearer" and "retry-after" not in key.headers
    kept = replies.openai_error(Refusal(400, "'seed' is wrong.", "seed"), {"num_images": "n"})
    assert (kept["error"]["param"], kept["error"]["message"]) == ("seed", "'seed' is wrong.")


def test_a_streamed_image_says_its_own_size_a_second_pass_makes_it_larger():
    import asyncio
    import base64 as b64

    buffer = io.BytesIO()
    Image.new("RGB", (512, 384), "white").save(buffer, "PNG")
    url = "data:image/png;base64," + b64.b64encode(buffer.getvalue()).decode()

    async def events():
        yield "result", {"images": [url], "seeds": [7], "timings": {"total": 5}}

    async def collect():
        asked = openai_images.Asked(stream=True, size="256x192")
        return [data async for _, data in openai_images.stream_events(events(), asked, "image_generation")]

    [completed] = asyncio.run(collect())
    assert completed["size"] == "512x384" and completed["sdxl"]["seed"] == 7
