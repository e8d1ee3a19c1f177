"""Prompts: A1111 weights rewritten for compel, weights and words past token 77 reach the images."""

import numpy as np
import pytest

from sdxl_worker.engine.prompts import from_a1111
from tests.helpers import FAST, final, photo, pixels, png_data_url, worker_with

# The tiny model's tokenizer spells words out, one token per character but none for spaces:
# 77 tokens, with the start and end markers, are the first 75 characters that are not spaces.
PAST_77 = ("a lighthouse at dusk on a rocky shore, waves breaking, gulls in the sky, warm light, "
           "oil painting, detailed, ")


@pytest.mark.parametrize(
    "a1111, compel",
    [
        ("a (red:1.3) fox", "a (red)1.3 fox"),
        ("a (red fox: 0.8), snow", "a (red fox)0.8, snow"),
        ("((red:1.2), big fox:1.1)", "((red)1.2, big fox)1.1"),
        ("(fox:.5)", "(fox).5"),
        ("a (fox) in (snow)1.2, fox++", "a (fox) in (snow)1.2, fox++"),  # compel's own syntax is left alone
        (r"a \(fox:1.2\) sign", r"a \(fox:1.2\) sign"),  # escaped brackets are literal
        ("ratio (16:9) and (x:abc)", "ratio (16)9 and (x:abc)"),
        ("unbalanced ((red:1.2) fox", "unbalanced ((red)1.2 fox"),
    ],
)
def test_a1111_weights_become_compels(a1111, compel):
    assert from_a1111(a1111) == compel


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_words_past_token_77_change_the_image(run, models, field):
    assert len(models.base.tokenizer(PAST_77).input_ids) > 77
    base = {**FAST, "refine": "no_refiner", "prompt": "a lighthouse"}
    first = pixels(final(run({**base, field: PAST_77 + "red roof"})))
    second = pixels(final(run({**base, field: PAST_77 + "blue sea"})))
    assert not np.array_equal(first, second)


def test_words_past_token_77_reach_the_refiner(run):
    # The refine task runs the refiner alone (text_encoder_2 only).
    inputs = {**FAST, "image_url": png_data_url(photo(256, 256)), "width": None, "height": None}
    first = pixels(final(run({**inputs, "prompt": PAST_77 + "red roof"})))
    second = pixels(final(run({**inputs, "prompt": PAST_77 + "blue sea"})))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("refine", ["base_image_refiner"])
def test_weights_change_the_image_and_a1111_means_the_same_as_compel(run, refine):
    base = {**FAST, "refine": refine}
    plain = pixels(final(run({**base, "prompt": "a lighthouse at dusk"})))
    a1111 = pixels(final(run({**base, "prompt": "a (lighthouse:1.8) at dusk"})))
    compel = pixels(final(run({**base, "prompt": "a (lighthouse)1.8 at dusk"})))
    assert not np.array_equal(plain, a1111)
    assert np.array_equal(a1111, compel)


def test_weights_in_the_negative_prompt_count(run):
    base = {**FAST, "refine": "no_refiner", "negative_prompt": "fog, rain"}
    plain = pixels(final(run(base)))
    weighted = pixels(final(run({**base, "negative_prompt": "(fog:1.8), rain"})))
    assert not np.array_equal(plain, weighted)


def test_unreadable_weighting_is_named(run):
    outputs = run({**FAST, "negative_prompt": '("fog").blend(1, 2)'})
    assert "'negative_prompt'" in outputs[-1]["error"]


@pytest.mark.parametrize("text", ["a lighthouse at dusk", "  a cat,  a dog. 4k: hdr; f/1.8 ", "", "A cat's hat"])
def test_plain_prompts_skip_the_parser_and_mean_the_same(text):
    from sdxl_worker.engine.prompts import _conjunction, _parser

    assert str(_conjunction(text, "prompt")) == str(_parser().parse_conjunction(text))


def test_a_prompt_over_the_token_cap_is_refused_by_name(run):

    # One token per character on the tiny model.
    outputs = run({**FAST, "negative_prompt": "x" * 751})
    assert "'negative_prompt'" in outputs[-1]["error"] and "750" in outputs[-1]["error"]
    final(run({**FAST, "refine": "no_refiner", "prompt": "x" * 750}))


@pytest.mark.parametrize("negative, passes", [(None, {"text_encoder": 1, "text_encoder_2": 2}),
                                              ("blurry", {"text_encoder": 2, "text_encoder_2": 2})])
def test_each_text_goes_through_each_encoder_once_per_job(models, negative, passes):
    """Base + refiner: the prompt through both encoders once; text_encoder_2 once more for the
    negative prompt, or, unset, for the "" the refiner encodes (the base zeroes it, unencoded)."""
    from sdxl_worker.runtime.job import run_job

    calls = {"text_encoder": 0, "text_encoder_2": 0}
    for name in calls:
        encoder = getattr(models.base, name)
        forward = encoder.forward

        def counted(*args, name=name, forward=forward, **kwargs):
            calls[name] += 1
            return forward(*args, **kwargs)

        encoder.forward = counted
    try:
        job = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 1,
               "refine": "base_image_refiner", "refiner_inference_steps": 4, "strength": 0.5}
        if negative:
            job["negative_prompt"] = negative
        assert "images" in list(run_job(worker_with(models), {"id": "once", "input": job}))[-1]
    finally:
        for name in calls:
            del getattr(models.base, name).forward
    assert calls == passes
