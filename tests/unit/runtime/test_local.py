"""`python handler.py` outside RunPod (runtime/local.py): one job through the real generator, the images
saved to files, the output printed as JSON with paths instead of base64."""

import base64
import json

from sdxl_worker.engine.tiny import ensure_tiny_model
from sdxl_worker.runtime.local import run_local
from tests.helpers import run_handler

JPEG = b"\xff\xd8\xff\xe0 a jpeg"


def _streaming(*outputs):
    async def handler(job):
        for output in outputs:
            yield output
    return handler


def test_python_handler_py_runs_a_job_saves_the_images_and_prints_the_output_with_its_warnings(tmp_path):
    import json

    # high_noise_frac outside the expert ensemble is ignored with a warning: the API says so, and so must a local run.
    job = ('{"input": {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 5, '
           '"refine": "no_refiner", "high_noise_frac": 0.7}}')
    # The tiny model as a baked folder, so the start goes the way an image's does: a prefetch helper.
    tiny = ensure_tiny_model()
    done = run_handler("--test_input", job, "--output_dir", str(tmp_path), BASE_MODEL=str(tiny / "base"),
                       REFINER_MODEL=str(tiny / "refiner"), VAE_MODEL="base")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Prefetch: a helper process reads" in done.stderr
    saved = list(tmp_path.glob("*.png"))
    assert len(saved) == 1 and "5" in saved[0].name
    output = json.loads(done.stdout)
    assert output["images"] == [str(saved[0])] == [output["image_url"]] and output["seeds"] == [5]
    assert any("high_noise_frac" in warning for warning in output["warnings"]) and "timings" in output
    assert "base64" not in done.stdout


def test_previews_are_one_line_each_and_images_become_files(tmp_path, capsys):
    final = {"images": [f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}", "https://bucket/x.png"],
             "image_url": "ignored", "seeds": [11, 12], "timings": {"total": 5}}
    handler = _streaming({"preview": "data:...", "stage": "base", "step": 3, "total_steps": 20},
                         {"result": "the next chunk is the result"}, final)
    assert run_local(handler, ["--test_input", '{"input": {}}', "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "preview: base step 3/20"
    shown = json.loads(printed[printed.index("{"):])
    saved = tmp_path / "out" / "local-test-0-11.jpg"
    assert saved.read_bytes() == JPEG
    assert shown == {"images": [str(saved), "https://bucket/x.png"], "image_url": str(saved), "seeds": [11, 12],
                     "timings": {"total": 5}}


def test_an_error_is_printed_as_a_sentence_with_exit_1(tmp_path, capsys):
    handler = _streaming({"error": "'width' must be a multiple of 8."})
    assert run_local(handler, ["--test_input", '{"id": "x", "input": {}}', "--output_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == "error: 'width' must be a multiple of 8.\n"
    assert run_local(_streaming(), ["--test_input", '{"input": {}}']) == 1
    assert capsys.readouterr().out == "error: the handler yielded nothing\n"


def test_the_single_handler_is_awaited_and_test_input_json_is_the_default(tmp_path, capsys, monkeypatch):
    seen = []

    async def single(job):
        seen.append(job)
        return {"images": ["https://bucket/a.png"], "seeds": [3]}

    (tmp_path / "test_input.json").write_text('{"id": "mine", "input": {"prompt": "a fox"}}')
    monkeypatch.chdir(tmp_path)
    assert run_local(single, []) == 0
    assert seen == [{"id": "mine", "input": {"prompt": "a fox"}}]
    assert json.loads(capsys.readouterr().out)["image_url"] == "https://bucket/a.png"
