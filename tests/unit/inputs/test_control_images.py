"""Control images: resized to the output size, then canny edges exactly as OpenCV makes them."""

import cv2
import numpy as np
from PIL import Image, ImageDraw

from sdxl_worker.inputs.control_images import control_image


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
    made = control_image(depth, (256, 256))
    assert np.array_equal(np.asarray(made), np.asarray(depth))
