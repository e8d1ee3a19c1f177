"""The two check passes (runtime/checks.py): every refusal before the work it would waste, in one place."""

from __future__ import annotations

import ast
import dataclasses

import pytest

from sdxl_worker.engine.plan import make_plan
from sdxl_worker.errors import InputError
from sdxl_worker.request.types import Request
from sdxl_worker.runtime.checks import Abilities, check, check_decoded
from tests.helpers import ROOT

PACKAGE = ROOT / "src" / "sdxl_worker"

# The modules that may raise InputError, and why each may: the check passes, the schema and the
# readers of what a job points at (each failure is only known once it is read), nothing else.
MAY_REFUSE = {
    "runtime/checks.py",  # the two check passes
    "request/schema.py",  # each field on its own, and the rules between fields of the input itself
    "request/dialects.py",  # another API's input that cannot be put in this worker's names
    "engine/prompts.py",  # the prompts' token count and syntax: called by the check pass only (below)
    "inputs/fetch.py", "inputs/images.py", "inputs/lora_files.py",  # downloads, decoding, files on disk
    "engine/lora_layers.py",  # a LoRA file whose layers fit no layer of the model (known once it is read)
    "engine/switch.py",  # a checkpoint that fails to load (known once it is loaded)
    "delivery/deliver.py",  # images that fit no encoding within RunPod's limit (known once encoded)
    "engine/pose.py",  # a photo in which no person is found (known once the detector ran)
    "delivery/size_guard.py",  # control images to return that fill the output limit (known once made)
}


def _raisers() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id == "InputError":
                    found.add(path.relative_to(PACKAGE).as_posix())
    return found


def _callers(name: str) -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if called == name:
                    found.add(path.relative_to(PACKAGE).as_posix())
    return found


def test_only_the_check_passes_the_schema_and_the_readers_refuse_a_job():
    assert _raisers() == MAY_REFUSE


def test_the_rules_other_modules_hold_are_applied_only_by_the_check_pass():
    assert _callers("check_prompts") == {"runtime/checks.py"}
    assert _callers("check_entry") == {"runtime/checks.py"}


def _planned(has_refiner=True, **inputs):
    request = Request.from_input({"prompt": "a cat", **inputs})
    return request, make_plan(request, has_refiner)


def test_a_checkpoint_that_failed_to_load_is_refused_naming_the_others():
    request, plan = _planned(model="anime")
    able = Abilities(model_names=("base", "anime", "photo"), broken_models=("anime",))
    with pytest.raises(InputError) as refused:
        check(request, plan, able)
    assert str(refused.value) == ("'model' 'anime' could not be loaded on this worker (its log says why); use "
                                  "another of base, photo, or fix BASE_MODELS.")


def test_cpu_offload_refuses_what_it_cannot_move():
    request, plan = _planned(controlnets=[{"model": "canny", "image": "https://e.com/c.png"}])
    with pytest.raises(InputError, match=r"^'controlnets' cannot run on this worker: CPU_OFFLOAD=1"):
        check(request, plan, Abilities(controlnets=("canny",), cpu_offload=True))
    check(request, plan, Abilities(controlnets=("canny",)))  # the same job without offload


def test_a_scheduler_the_self_check_found_broken_is_refused():
    request, plan = _planned(scheduler="KLMS")
    with pytest.raises(InputError, match=r"^'scheduler' 'KLMS' cannot run on this worker"):
        check(request, plan, Abilities(broken_samplers=("KLMS",)))


def test_without_a_refiner_asking_for_one_is_refused_but_planning_it_is_not():
    request, plan = _planned(has_refiner=False, refine="expert_ensemble_refiner")
    assert plan.refine == "no_refiner"  # the plan decides, and refuses nothing
    with pytest.raises(InputError, match=r"^'refine' is 'expert_ensemble_refiner' but this worker has no refiner"):
        check(request, plan, Abilities(has_refiner=False))


def test_an_image_sized_job_gets_its_size_and_its_work_checked_once_decoded():
    request, plan = _planned(image="https://e.com/a.png", refine="no_refiner", num_inference_steps=10)
    plan = dataclasses.replace(plan, step_counts={"base": 5})  # prompt_strength 0.5 of 10 steps
    assert (plan.width, plan.height) == (None, None)
    check(request, plan, Abilities(max_job_work=1))  # the size is unknown: no work counted yet
    sized = check_decoded(plan, (3000, 1500), "image", Abilities(max_job_work=100))
    assert (sized.width, sized.height) == (2048, 1024)
    # 2048x1024 is 2 units an image-step: 5 steps x2 for guidance = 20 units.
    with pytest.raises(InputError, match=r"^This job is 20 units of work, 2\.0x the worker's budget of 10 "):
        check_decoded(plan, (3000, 1500), "image", Abilities(max_job_work=10))


def test_one_side_given_follows_the_images_aspect_ratio():
    request, plan = _planned(image="https://e.com/a.png", width=512)
    assert (check_decoded(plan, (1000, 1500), "image", Abilities()).width,
            check_decoded(plan, (1000, 1500), "image", Abilities()).height) == (512, 768)
    # With one side given an extreme aspect ratio is clamped, not refused.
    assert check_decoded(plan, (100, 5000), "image", Abilities()).height == 2048


def test_steps_are_counted_on_the_checkpoint_in_place_when_the_job_runs(run, monkeypatch):
    """A plan counted on another checkpoint's scheduler config (another job switched it since) is
    counted again once the models are held: progress and previews follow the steps really run."""
    from sdxl_worker.runtime.worker import Worker
    from tests.helpers import FAST, photo, png_data_url

    real = Worker.abilities

    def planned_on_another_checkpoint(self, request, has_storage):
        able = real(self, request, has_storage)
        other = {**able.scheduler_configs["base"], "timestep_spacing": "trailing"}
        return dataclasses.replace(able, scheduler_configs={**able.scheduler_configs, "base": other})

    monkeypatch.setattr(Worker, "abilities", planned_on_another_checkpoint)
    outputs = run({**FAST, "image": png_data_url(photo(256, 256)), "num_inference_steps": 30, "prompt_strength": 0.9,
                   "scheduler": "DDIM", "refine": "expert_ensemble_refiner", "high_noise_frac": 0.5,
                   "preview_steps": 1})
    previews = [chunk for chunk in outputs if "preview" in chunk]
    assert "images" in outputs[-1], outputs[-1]
    assert [chunk["step"] for chunk in previews] == list(range(1, previews[0]["total_steps"] + 1))


def test_what_the_decoded_image_refuses_is_refused_before_the_other_downloads(run, worker_env):
    """An input image that cannot fit, or sizes the job over its budget, is refused before the mask
    is fetched: the answer is about the image, not about a download that did not need to happen."""
    from tests.helpers import photo, png_data_url

    unreachable = "http://127.0.0.1:9/mask.png"  # a private address: fetching it would be refused
    outputs = run({"prompt": "a", "image": png_data_url(photo(2400, 256)), "mask": unreachable})
    assert outputs[0]["error"].startswith("'image' is 2400x256, an aspect ratio of 9.4:1")
    worker_env["MAX_JOB_WORK"] = "1"
    outputs = run({"prompt": "a", "image": png_data_url(photo(512, 512)), "mask": unreachable,
                   "refine": "no_refiner", "num_inference_steps": 10})
    assert outputs[0]["error"].startswith("This job is ") and "MAX_JOB_WORK" in outputs[0]["error"]
