"""Control images for ControlNets: any input image (decoded by inputs/images.py), at the output
size, made into an edge map when the job asks for ``canny``, a depth map for ``depth``, people's
skeletons for ``pose`` (by the estimators the worker hands in). Reference images for the IP-Adapter:
cut to at most 4:1 around their centre.

The resize comes first, so a canny edge map has its one-pixel edges at the resolution the
ControlNet sees. OpenCV is the one already installed (invisible-watermark's, headless in the image).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def control_image(image: Image.Image, size: tuple[int, int], preprocess: str, low_threshold: int,
                  high_threshold: int, depth=None, pose=None, field: str = "image") -> Image.Image:
    """A decoded control image at ``size``, preprocessed as the job asks (its defaults are the schema's);
    ``depth`` and ``pose``: the worker's estimators (sdxl_worker.engine.depth, .pose), for those
    preprocesses; ``field``: the image's field, which a photo with nobody in it is refused naming."""
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    if preprocess == "canny":
        image = canny(image, low_threshold, high_threshold)
    elif preprocess == "depth":
        image = depth(image)
    elif preprocess == "pose":
        image = pose(image, field)
    return image


MAX_REFERENCE_ASPECT = 4  # the image encoder scales the short side to 224 and keeps the centre square


def ip_adapter_image(image: Image.Image) -> Image.Image:
    """A decoded IP-Adapter reference image, ready for the encoder. CLIP's processor scales the short
    side up to its input size before it crops the centre, so a 100000x1 image would become tens of
    GB: past 4:1 the image is cut to 4:1 around its centre first (the processor keeps only the centre)."""
    width, height = image.size
    if width > MAX_REFERENCE_ASPECT * height:
        keep = MAX_REFERENCE_ASPECT * height
        image = image.crop(((width - keep) // 2, 0, (width - keep) // 2 + keep, height))
    elif height > MAX_REFERENCE_ASPECT * width:
        keep = MAX_REFERENCE_ASPECT * width
        image = image.crop((0, (height - keep) // 2, width, (height - keep) // 2 + keep))
    return image


def canny(image: Image.Image, low_threshold: int, high_threshold: int) -> Image.Image:
    """OpenCV's Canny edges of ``image`` as white on black, in three channels (what ControlNets take)."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low_threshold, high_threshold)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
