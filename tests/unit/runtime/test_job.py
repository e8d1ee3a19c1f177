"""One job end to end (runtime/job.py): refusals are one error and the worker goes on."""


from tests.helpers import FAST, final, photo, png_data_url


def test_without_a_refiner_a_refine_job_is_refused_in_one_sentence(run, models_without_refiner):
    photo_url = png_data_url(photo(256, 256))
    for inputs in ({"image_url": photo_url}, {"image": photo_url, "task": "refine"}):
        outputs = run({**FAST, **inputs}, on=models_without_refiner)
        assert outputs == [{"error": "This worker has no refiner loaded (REFINER_MODEL=none), so 'image_url' / task "
                                     "'refine' cannot run; send the image as 'image' for img2img instead."}]
    outputs = run({**FAST, "refine": "expert_ensemble_refiner"}, on=models_without_refiner)
    assert outputs == [{"error": "'refine' is 'expert_ensemble_refiner' but this worker has no refiner loaded "
                                 "(REFINER_MODEL=none); use 'no_refiner' or leave it unset."}]


def test_a_bad_job_is_one_error_and_the_next_job_runs(run):
    outputs = run({"prompt": "a", "width": 1001})
    assert len(outputs) == 1 and set(outputs[0]) == {"error"}
    assert "'width'" in outputs[0]["error"]
    final(run(FAST))


def test_an_unreadable_image_is_named(run):
    outputs = run({**FAST, "image": "bm90IGFuIGltYWdl"})  # base64 of "not an image"
    assert "'image'" in outputs[0]["error"]
