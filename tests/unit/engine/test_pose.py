"""The pose preprocessor's drawing: COCO's keypoints as OpenPose's 18 points, and the skeleton in
OpenPose's colours, checked pixel by pixel against values written here."""

from __future__ import annotations

import numpy as np

from sdxl_worker.engine.pose import openpose_points, render


def coco_person() -> tuple[np.ndarray, np.ndarray]:
    """A person standing, COCO's 17 keypoints (x, y) on a 128x128 canvas, every one seen but the left ear."""
    keypoints = np.array([
        [64, 20],  # 0 nose
        [60, 16], [68, 16],  # 1 left eye, 2 right eye
        [56, 18], [72, 18],  # 3 left ear, 4 right ear
        [48, 40], [80, 40],  # 5 left shoulder, 6 right shoulder
        [44, 60], [84, 60],  # 7 left elbow, 8 right elbow
        [40, 80], [88, 80],  # 9 left wrist, 10 right wrist
        [54, 80], [74, 80],  # 11 left hip, 12 right hip
        [54, 100], [74, 100],  # 13 left knee, 14 right knee
        [54, 120], [74, 120],  # 15 left ankle, 16 right ankle
    ], dtype=float)
    scores = np.full(17, 0.9)
    scores[3] = 0.1  # the left ear: not seen
    return keypoints, scores


def test_coco_keypoints_become_openpose_points_with_a_neck_between_the_shoulders():
    points = openpose_points(*coco_person())
    assert len(points) == 18
    assert points[0] == (64.0, 20.0)  # nose
    assert points[1] == (64.0, 40.0)  # neck: between (48, 40) and (80, 40)
    assert points[2] == (80.0, 40.0) and points[5] == (48.0, 40.0)  # OpenPose's right shoulder is COCO's 6
    assert points[8] == (74.0, 80.0) and points[11] == (54.0, 80.0)  # right hip 12, left hip 11
    assert points[14] == (68.0, 16.0) and points[15] == (60.0, 16.0)  # right eye 2, left eye 1
    assert points[16] == (72.0, 18.0) and points[17] is None  # right ear 4; the left ear unseen
    keypoints, scores = coco_person()
    scores[6] = 0.0  # no right shoulder: no neck either
    assert openpose_points(keypoints, scores)[1] is None


def test_the_skeleton_is_drawn_in_openpose_colours_on_black():
    canvas = np.asarray(render([openpose_points(*coco_person())], (128, 128)))
    assert canvas.shape == (128, 128, 3)
    assert canvas[2, 2].tolist() == [0, 0, 0]  # background
    assert canvas[20, 64].tolist() == [255, 0, 0]  # the nose joint: point 0's colour, full
    assert canvas[40, 64].tolist() == [255, 85, 0]  # the neck joint: point 1's
    assert canvas[40, 72].tolist() == [153, 0, 0]  # neck to right shoulder: limb 0's colour at 60 %
    assert canvas[40, 56].tolist() == [153, 51, 0]  # neck to left shoulder: limb 1, (255, 85, 0) x 0.6
    assert canvas[110, 74].tolist() == [0, 153, 102]  # right knee to ankle: limb 8, (0, 255, 170) x 0.6
    assert canvas[17, 52].tolist() == [0, 0, 0]  # left eye to the unseen left ear: not drawn
