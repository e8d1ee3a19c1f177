"""SDXL's invisible watermark on request (engine/watermark.py): the usual decoder finds Stability's 48 bits."""


import numpy as np

from tests.helpers import FAST, final, photo, pixels


def test_apply_watermark_embeds_sdxls_bits(run):
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
    from imwatermark import WatermarkDecoder

    plain = final(run({**FAST, "refine": "no_refiner"}))
    marked = final(run({**FAST, "refine": "no_refiner", "apply_watermark": True}))
    assert not np.array_equal(pixels(plain), pixels(marked))
    bgr = np.ascontiguousarray(pixels(marked)[:, :, ::-1])
    found = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(bgr, "dwtDct")
    assert sum(int(a == b) for a, b in zip(found, WATERMARK_BITS)) >= 44  # of 48 (PNG is lossless)
    unmarked = WatermarkDecoder("bits", len(WATERMARK_BITS)).decode(
        np.ascontiguousarray(pixels(plain)[:, :, ::-1]), "dwtDct")
    assert sum(int(a == b) for a, b in zip(unmarked, WATERMARK_BITS)) < 40


def test_images_too_small_to_watermark_pass_through():
    from sdxl_worker.engine.watermark import apply_watermark

    small = photo(200, 200)
    assert apply_watermark([small])[0] is small


def test_each_image_of_a_batch_is_marked_and_the_smallest_size_is_256_by_256():
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS
    from imwatermark import WatermarkDecoder

    from sdxl_worker.engine.watermark import apply_watermark

    at_limit, under = photo(256, 256), photo(255, 256)
    marked = apply_watermark([at_limit, under, photo(320, 256).convert("RGBA")])
    assert marked[1] is under and marked[0] is not at_limit
    for image in (marked[0], marked[2]):
        assert image.mode == "RGB"
        bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
        found = WatermarkDecoder("bits", 48).decode(bgr, "dwtDct")
        assert sum(int(a == b) for a, b in zip(found, WATERMARK_BITS)) >= 44
