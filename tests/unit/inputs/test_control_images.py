"""Control images: resized to the output size, then canny edges exactly as OpenCV makes them."""

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sdxl_worker.inputs.control_images import control_image, ip_adapter_image


def test_canny_of_a_drawn_shape_is_opencvs_edge_map_at_the_output_size():
    drawn = Image.new("RGB", (300, 200), "black")
    ImageDraw.Draw(drawn).rectangle((60, 40, 220, 150), fill="white")
    made = control_image(drawn, (256, 192), "canny", 80, 160)
    expected = cv2.Canny(np.asarray(drawn.resize((256, 192), Image.Resampling.LANCZOS)), 80, 160)
    assert made.size == (256, 192) and made.mode == "RGB"
    assert np.array_equal(np.asarray(made)[:, :, 0], expected) and np.asarray(made).std(axis=2).max() == 0
    assert 0 < (expected > 0).mean() < 0.1  # an outline, not a filled shape


def test_none_keeps_the_image_as_the_control_image():
    depth = Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (256, 1))).convert("RGB")
    made = control_image(depth, (256, 256), "none", 100, 200)
    assert np.array_equal(np.asarray(made), np.asarray(depth))


def _photo_like(width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_a_control_image_of_another_size_is_resized_with_lanczos():
    source = _photo_like(90, 60)
    made = control_image(source, (64, 48), "none", 100, 200)
    assert np.array_equal(np.asarray(made), np.asarray(source.resize((64, 48), Image.Resampling.LANCZOS)))


def test_both_thresholds_decide_the_edges():
    """Canny keeps edges stronger than the high threshold, and weaker ones above the low threshold that
    continue a strong one: a step edge strong at the top, faint at the bottom, shows both."""
    steps = np.zeros((64, 64), dtype=np.uint8)
    steps[:32, 32:] = 60  # strong: a gradient of 240 across the step
    steps[32:, 32:] = 15  # faint: 60, above a low threshold of 50, below one of 100
    source = Image.fromarray(steps).convert("RGB")
    edges = {lows: (np.asarray(control_image(source, (64, 64), "canny", lows, 200))[:, :, 0] > 0)
             for lows in (50, 100)}
    assert edges[50][:28].any() and edges[50][36:].any()  # the faint part joins the strong one
    assert edges[100][:28].any() and not edges[100][36:].any()
    high = np.asarray(control_image(source, (64, 64), "canny", 50, 1000))[:, :, 0]
    assert not high.any()  # nothing as strong as 1000: no edge at all
    assert np.array_equal(np.asarray(control_image(source, (64, 64), "none", 50, 200)), np.asarray(source))


def test_a_reference_image_past_4_to_1_is_cut_to_4_to_1_around_its_centre():
    wide = Image.new("RGB", (1003, 100))
    wide.paste((255, 0, 0), (301, 0, 701, 100))  # the centre 400 columns are red: 301 to 700
    cut = ip_adapter_image(wide)
    assert cut.size == (400, 100) and np.asarray(cut)[:, :, 0].min() == 255
    tall = Image.new("RGB", (10, 49))
    tall.paste((0, 255, 0), (0, 4, 10, 44))  # the centre 40 rows: 4 to 43, 4 black rows above and 5 below
    cut = ip_adapter_image(tall)
    assert cut.size == (10, 40) and np.asarray(cut)[:, :, 1].min() == 255
    at_the_limit = Image.new("RGB", (400, 100))
    assert ip_adapter_image(at_the_limit) is at_the_limit
    assert ip_adapter_image(Image.new("RGB", (100, 400))).size == (100, 400)
