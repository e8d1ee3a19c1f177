"""The size guard (delivery/size_guard.py): previews and the final payload share the job's output limit."""

import json

from sdxl_worker.delivery.size_guard import OutputGuard, chunk_bytes, result_notice
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


def test_a_result_over_a_stream_chunk_is_announced_by_a_small_chunk_saying_where_it_is():
    small = {"images": ["data:image/png;base64," + "A" * 1000], "seed": 1}
    assert result_notice(small) is None  # it streams as it is
    assert result_notice({"error": "x" * 2_000_000}) is None  # not a result
    final = {"images": ["data:image/png;base64," + "A" * 1_200_000], "image_url": "x", "seed": 7, "seeds": [7],
             "timings": {"total": 5}, "warnings": ["w"]}
    notice = result_notice(final)
    assert notice == {
        "result": "in the job's output",
        "message": "The images (1.2 MB) are larger than a /stream chunk may be (1 MB): read them from the job's output "
                   "(/status, or job.output() in runpod-python), or ask for 'output_format' jpeg or webp, or "
                   "configure storage.",
        "seed": 7, "seeds": [7], "timings": {"total": 5}, "warnings": ["w"]}
    just_under = {"images": ["A" * (1_000_000 - len('{"images": [""]}'))]}
    assert chunk_bytes(just_under) == 1_000_000 and result_notice(just_under) is None  # 1 MB exactly still streams
