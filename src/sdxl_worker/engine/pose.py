"""The pose preprocessor: people's poses found in a photo, drawn as OpenPose skeletons (``preprocess: pose``).

Two models transformers loads, each a setting: POSE_DETECTOR finds the people (an RT-DETR object
detector trained on COCO, whose label 0 is "person"), POSE_MODEL finds each one's 17 COCO
keypoints in its box (ViTPose, top-down). The keypoints are then drawn the way the SDXL pose
ControlNets were trained to read: OpenPose's 18-point body (COCO's 17 and a neck between the
shoulders), each limb in its own colour on black, at 60 % of it, joints as full-colour dots.

A photo in which no person is found refuses the job with a sentence naming the image: the user
asked to be steered by a pose, and a job run without it would not be what they asked for.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sdxl_worker.errors import InputError

PERSON_SCORE = 0.3  # a detection below this is not a person
KEYPOINT_SCORE = 0.3  # a keypoint below this is not drawn, nor the limbs it ends
MAX_PEOPLE = 10  # the most confident ones: ViTPose runs once per person
# OpenPose's body points, in its order, as COCO's keypoints: None is the neck, between the shoulders.
OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
# OpenPose's limbs between those points, and the colour of each point and limb, in its order.
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))


def openpose_points(keypoints: np.ndarray, scores: np.ndarray) -> list[tuple[float, float] | None]:
    """One person's 17 COCO keypoints (x, y) and scores as OpenPose's 18 points, None where not seen."""
    seen = [tuple(map(float, point)) if score >= KEYPOINT_SCORE else None for point, score in zip(keypoints, scores)]
    points = []
    for coco in OPENPOSE_FROM_COCO:
        if coco is not None:
            points.append(seen[coco])
        elif seen[5] is not None and seen[6] is not None:  # the neck: between the shoulders
            points.append(((seen[5][0] + seen[6][0]) / 2, (seen[5][1] + seen[6][1]) / 2))
        else:
            points.append(None)
    return points


def render(people: list[list[tuple[float, float] | None]], size: tuple[int, int]) -> Image.Image:
    """People's OpenPose points drawn on black at ``size``: limbs first, then the joints over them."""
    canvas = Image.new("RGB", size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(size) / 128))  # 4 pixels at 512, 8 at 1024
    for points in people:
        for index, (start, end) in enumerate(LIMBS):
            if points[start] is not None and points[end] is not None:
                draw.line([points[start], points[end]], fill=tuple(round(c * 0.6) for c in COLOURS[index]),
                          width=width)
        for index, point in enumerate(points):
            if point is not None:
                x, y = point
                draw.ellipse((x - width, y - width, x + width, y + width), fill=COLOURS[index])
    return canvas


class PoseEstimator:
    """``estimator(image, field)`` -> the skeletons of the people in ``image``, at its size."""

    def __init__(self, detector, detector_processor, model, processor, device: str):
        self.detector, self.detector_processor = detector, detector_processor
        self.model, self.processor, self.device = model, processor, device

    def people(self, image: Image.Image) -> list[list[tuple[float, float] | None]]:
        import torch

        image = image.convert("RGB")
        with torch.no_grad():
            found = self.detector(**self.detector_processor(images=image, return_tensors="pt").to(self.device))
        detected = self.detector_processor.post_process_object_detection(
            found, threshold=PERSON_SCORE, target_sizes=[(image.height, image.width)])[0]
        persons = detected["labels"] == 0
        order = detected["scores"][persons].argsort(descending=True)[:MAX_PEOPLE]
        boxes = detected["boxes"][persons][order].cpu().numpy()
        if not len(boxes):
            return []
        boxes[:, 2:] -= boxes[:, :2]  # (x0, y0, x1, y1) -> (x, y, width, height), as ViTPose takes them
        with torch.no_grad():
            poses = self.model(**self.processor(image, boxes=[boxes], return_tensors="pt").to(self.device))
        results = self.processor.post_process_pose_estimation(poses, boxes=[boxes])[0]
        return [openpose_points(person["keypoints"].cpu().numpy(), person["scores"].cpu().numpy())
                for person in results]

    def __call__(self, image: Image.Image, field: str) -> Image.Image:
        people = self.people(image)
        if not people:
            raise InputError(f"'{field}' shows no person the pose detector could find; send a photo with a person "
                             f"in it, or a pose skeleton with preprocess none.")
        return render(people, image.size)


def load_pose(model: str | None, detector: str | None, device: str, resolve) -> PoseEstimator | None:
    """POSE_MODEL's and POSE_DETECTOR's estimator, or None when they are unset."""
    if model is None:
        return None
    from transformers import AutoModelForObjectDetection, VitPoseForPoseEstimation

    from sdxl_worker.engine.depth import loaded
    from sdxl_worker.engine.image_processors import from_pretrained
    from sdxl_worker.errors import StartupError

    found, posed = resolve(detector, ""), resolve(model, "")
    keypoints, keypoint_processor = loaded("POSE_MODEL", model, lambda: (
        VitPoseForPoseEstimation.from_pretrained(posed), from_pretrained(posed)))
    people, people_processor = loaded("POSE_DETECTOR", detector, lambda: (
        AutoModelForObjectDetection.from_pretrained(found), from_pretrained(found)))
    if keypoints.config.model_type != "vitpose":
        raise StartupError(f"POSE_MODEL={model!r} is a {keypoints.config.model_type} model, not a ViTPose keypoint "
                           f"model (e.g. usyd-community/vitpose-base-simple).")
    if str(people.config.id2label.get(0, "")).lower() != "person":
        raise StartupError(f"POSE_DETECTOR={detector!r} does not detect people as COCO's label 0 'person' (e.g. "
                           f"PekingU/rtdetr_r50vd_coco_o365).")
    return PoseEstimator(people.to(device).eval().requires_grad_(False), people_processor,
                         keypoints.to(device).eval().requires_grad_(False), keypoint_processor, device)
