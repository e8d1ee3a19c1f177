"""The soak of bench/soak.py, short: 40 mixed jobs leave memory, threads, descriptors and temp files as they were."""

from bench.soak import soak


def test_forty_mixed_jobs_leave_nothing_behind(models):
    lines = []
    assert soak(models, count=40, warmup_cycles=1, valid_every=6, out=lines.append), "\n".join(lines)
    assert lines[-1] == "PASS"
