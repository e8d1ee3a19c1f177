"""Streaming a run (runtime/stream.py): progress for the platform."""



from sdxl_worker.runtime.stream import Progress


def test_progress_is_rate_limited_to_one_a_second_plus_the_last():
    sent = []
    now = [0.0]
    progress = Progress({"id": "j"}, total=10, send=lambda job, progress: sent.append(progress["step"]),
                        clock=lambda: now[0])
    for step in range(1, 11):
        progress.update("base", step)
        now[0] += 0.3
    assert sent == [1, 5, 9, 10]
