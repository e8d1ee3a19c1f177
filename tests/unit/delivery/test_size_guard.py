"""The size guard (delivery/size_guard.py): previews and the final payload share the job's output limit."""

import json

from sdxl_worker.delivery.size_guard import OutputGuard, chunk_bytes
from tests.helpers import FAST


def test_previews_fill_at_most_half_then_every_later_one_is_dropped():
    guard = OutputGuard(10_000)
    chunk = {"preview": "x" * 1900, "step": 0}
    admitted = []
    for step in range(1, 8):
        admitted.append(guard.admit({**chunk, "step": step}))
    assert admitted == [True, True, False, False, False, False, False]
    assert guard.admit({"preview": "", "step": 9}) is False  # dropped from the first refusal on, even small ones
    assert guard.final_room() == 10_000 - 2 * chunk_bytes({**chunk, "step": 1})
    assert "from step 3 on were dropped" in guard.warning() and "INLINE_LIMIT_MB" in guard.warning()
    assert OutputGuard(10_000).warning() is None


def test_a_preview_heavy_job_keeps_its_whole_output_under_the_limit(run, worker_env):
    worker_env["INLINE_LIMIT_MB"] = "1"
    outputs = run({**FAST, "refine": "no_refiner", "width": 512, "height": 512, "num_inference_steps": 30,
                   "preview_steps": 1, "preview_size": 512, "preview_quality": 95})
    previews, final = outputs[:-1], outputs[-1]
    assert "images" in final and 0 < len(previews) < 30
    assert sum(len(json.dumps(output)) for output in outputs) <= 1_000_000
    assert sum("were dropped" in warning for warning in final["warnings"]) == 1
