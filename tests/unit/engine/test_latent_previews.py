"""Live previews: the projection and encoding (pure), x0 per scheduler, and whole jobs on the tiny model."""

import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from sdxl_worker.delivery.previews import preview_data_url
from sdxl_worker.engine import generate, latent_previews
from sdxl_worker.engine.plan import make_plan
from sdxl_worker.engine.schedulers import build_scheduler
from sdxl_worker.request.samplers import SCHEDULERS
from sdxl_worker.request.types import Request
from sdxl_worker.runtime.job import run_job
from sdxl_worker.runtime.stream import Progress, render_preview
from tests.helpers import collect, decode, png_data_url, worker_with

FAST = {"prompt": "a lighthouse at dusk", "num_inference_steps": 4, "refiner_inference_steps": 4, "strength": 0.5,
        "width": 256, "height": 256, "seed": 1}


def split(outputs: list) -> tuple[list, dict]:
    *shown, last = outputs
    assert "error" not in last, last
    assert all("preview" in chunk for chunk in shown), "only previews come before the final payload"
    return shown, last


def expected_steps(total: int, every: int) -> list[int]:
    return sorted(set(range(every, total + 1, every)) | {total})


# --- pure: projection, sizes, encoding ---


def test_linear_projection_uses_the_sdxl_factors_and_bias():
    latent = torch.zeros(4, 2, 3)
    latent[0, 0, 0] = 1.0  # channel 0 alone: row 0 of the factors plus the bias
    image = np.asarray(latent_previews.linear_rgb(latent)).astype(int)
    assert image.shape == (2, 3, 3)
    expected = (np.clip(np.array([0.3651, 0.4232, 0.4341]) + [0.1084, -0.0175, -0.0011], -1, 1) + 1) * 127.5
    assert np.abs(image[0, 0] - expected).max() <= 1
    assert np.abs(image[1, 2] - (np.array([0.1084, -0.0175, -0.0011]) + 1) * 127.5).max() <= 1


@pytest.mark.parametrize("size, longest, expected", [
    ((1024, 768), 256, (256, 192)), ((768, 1024), 256, (192, 256)), ((1024, 1024), 256, (256, 256)),
    ((2048, 512), 100, (100, 25)), ((256, 256), 512, (512, 512)),
])
def test_preview_dimensions_keep_the_aspect_ratio(size, longest, expected):
    assert latent_previews.preview_dimensions(*size, longest) == expected


@pytest.mark.parametrize("image_format, mime", [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_render_gives_a_data_url_of_the_declared_format_and_size(image_format, mime):
    latent = torch.randn(4, 96, 128)  # a 1024x768 job
    url = render_preview(latent, 256, image_format, 80)
    assert url.startswith(f"data:{mime};base64,")
    image = decode(url)
    assert image.format == image_format.upper() and image.size == (256, 192)


def test_a_preview_always_fits_a_stream_chunk():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    url = preview_data_url(noise, "jpeg", 100)
    assert len(url) <= 900_100  # a RunPod stream chunk holds 1 MB, with its JSON
    assert decode(url).size == (1024, 1024)


# --- x0: the clean-image estimate, for every scheduler ---


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("steps_taken", [1, 3])
def test_clean_estimate_recovers_the_clean_latent_from_a_perfect_noise_prediction(models, name, steps_taken):
    """Noise a known latent to each step's level, give step() the exact noise: x0 must be that latent."""
    scheduler = build_scheduler(name, models.scheduler_configs["base"])
    scheduler.set_timesteps(10)
    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(1, 4, 8, 8, generator=generator) * 1.8 - 0.9  # inside DDIM's clip_sample range
    noise = torch.randn(1, 4, 8, 8, generator=generator)
    for timestep in scheduler.timesteps[:steps_taken]:
        noisy = scheduler.add_noise(clean, noise, timestep[None])
        scheduler.scale_model_input(noisy, timestep)
        output = scheduler.step(noise, timestep, noisy, return_dict=False)  # as the pipelines call it
        x0 = latent_previews.clean_estimate(scheduler, output, noise, timestep, noisy)
    assert torch.allclose(x0, clean, atol=1e-3), (x0 - clean).abs().max()
    assert not torch.allclose(noisy, clean, atol=1e-1)


# --- step counts: the plan's count against the steps the pipelines really take ---

CASES = [
    # scheduler, extra inputs, base steps, refiner steps (counted by hand from diffusers' timestep logic), preview_steps
    ("K_EULER", {"num_inference_steps": 4, "refine": "no_refiner"}, 4, 0, 1),
    ("K_EULER", {"num_inference_steps": 4, "refine": "base_image_refiner"}, 4, 2, 4),  # previews at 4 and 6 (last)
    ("K_EULER", {"num_inference_steps": 4, "high_noise_frac": 0.5}, 2, 2, 3),
    ("DPMSolverMultistep", {"num_inference_steps": 5, "refine": "no_refiner"}, 5, 0, 2),
    ("DPMSolverMultistep", {"num_inference_steps": 5, "high_noise_frac": 0.8}, 4, 1, 2),
    ("DPMSolverMultistep", {"num_inference_steps": 3, "refiner_inference_steps": 5, "strength": 0.6}, 3, 3, 10),
    ("PNDM", {"num_inference_steps": 4, "refine": "no_refiner"}, 5, 0, 2),  # PLMS repeats one timestep
    ("DDIM", {"image": "PHOTO", "prompt_strength": 0.5, "num_inference_steps": 6, "refine": "no_refiner"}, 3, 0, 2),
    ("DDIM", {"image": "PHOTO", "prompt_strength": 1.0, "num_inference_steps": 6, "high_noise_frac": 0.5}, 2, 4, 1),
    ("K_EULER_ANCESTRAL", {"image_url": "PHOTO", "refiner_inference_steps": 6, "strength": 0.5}, 0, 3, 1),
]


def _inputs(scheduler: str, extra: dict) -> dict:
    photo = png_data_url(Image.new("RGB", (256, 256), (200, 120, 40)))
    inputs = {**FAST, "scheduler": scheduler, **{k: photo if v == "PHOTO" else v for k, v in extra.items()}}
    if "image" in inputs or "image_url" in inputs:
        inputs.update(width=None, height=None)
    return inputs


@pytest.mark.parametrize("scheduler, extra, base, refiner, every", CASES)
def test_step_counts_and_previews_are_exact_across_the_job(run, models, monkeypatch, scheduler, extra, base,
                                                          refiner, every):
    inputs = _inputs(scheduler, {**extra, "preview_steps": every})
    request = Request.from_input(inputs)
    counted = make_plan(request, models.has_refiner, models.scheduler_configs).step_counts
    assert counted == {stage: n for stage, n in (("base", base), ("refiner", refiner)) if n}
    total = base + refiner
    taken = []  # every step the pipelines really ran, numbered across the job
    monkeypatch.setattr(Progress, "update", lambda self, stage, step: taken.append((stage, step)))
    shown, final = split(run(inputs))
    assert taken == [("base" if step <= base else "refiner", step) for step in range(1, total + 1)]
    assert [chunk["step"] for chunk in shown] == expected_steps(total, every)
    assert all(chunk["total_steps"] == total for chunk in shown)
    assert [chunk["stage"] for chunk in shown] == ["base" if c["step"] <= base else "refiner" for c in shown]
    assert set(shown[0]) == {"preview", "step", "total_steps", "stage"}
    assert "images" in final


def test_previews_have_the_declared_format_size_and_aspect(run):
    shown, final = split(run({**FAST, "width": 384, "height": 256, "preview_steps": 2, "preview_size": 120,
                              "preview_format": "webp", "preview_quality": 60}))
    assert len(shown) == 3  # 4 base + 2 refiner steps: 2, 4, 6
    for chunk in shown:
        assert chunk["preview"].startswith("data:image/webp;base64,")
        image = decode(chunk["preview"])
        assert image.format == "WEBP" and image.size == (120, 80)
    assert decode(final["images"][0]).size == (384, 256)


@pytest.mark.parametrize("scheduler, tolerance", [("K_EULER", 1e-4), ("DPMSolverMultistep", 1e-4), ("PNDM", 0.05)])
def test_each_step_hands_over_x0_not_the_noisy_latent(models, scheduler, tolerance):
    request = Request.from_input({**FAST, "scheduler": scheduler, "refine": "no_refiner"})
    seen = []
    generate.run(models, make_plan(request, True), None,
                 lambda stage, step, kwargs: seen.append((kwargs["x0"].clone(), kwargs["latents"].clone())),
                 wants_x0=lambda stage, step: True)
    first_x0, first_latents = seen[0]
    assert first_x0.shape == first_latents.shape and not torch.allclose(first_x0, first_latents, atol=1e-3)
    # The schedule ends at (or, for PNDM, next to) noise 0: the last latent is the model's own last x0.
    assert torch.allclose(seen[-1][0], seen[-1][1], atol=tolerance)


@pytest.mark.parametrize("scheduler", ["DDIM", "DPMSolverMultistep"])
def test_streamed_previews_show_the_clean_estimate_not_the_noisy_latent(run, models, scheduler):
    job = {**FAST, "scheduler": scheduler, "refine": "no_refiner", "preview_steps": 1, "preview_size": 64,
           "preview_format": "jpeg", "preview_quality": 90}
    shown, _ = split(run(job))
    request = Request.from_input(job)
    seen = []
    generate.run(models, make_plan(request, True), None,
                 lambda stage, step, kwargs: seen.append((kwargs["x0"][0].clone(), kwargs["latents"][0].clone())),
                 wants_x0=lambda stage, step: True)
    assert len(shown) == len(seen) == FAST["num_inference_steps"]
    first = np.asarray(decode(shown[0]["preview"]))

    def rendered(latent):
        return np.asarray(decode(render_preview(latent, 64, "jpeg", 90, None)))

    assert np.array_equal(first, rendered(seen[0][0]))  # the model's estimate of the clean image
    assert np.abs(first.astype(int) - rendered(seen[0][1])).mean() > 5  # not the noisy latent


@pytest.mark.parametrize("inputs", [
    {"scheduler": "K_EULER_ANCESTRAL"},  # draws random numbers in every step
    {"scheduler": "DPMSolverMultistep", "high_noise_frac": 0.5},
    {"scheduler": "PNDM", "num_images": 2, "refine": "no_refiner"},
])
def test_previews_do_not_change_the_final_image(run, models, inputs):
    shown, final = split(run({**FAST, **inputs, "preview_steps": 1}))
    assert len(shown) >= 4
    # Against the pipelines run bare: no worker thread, no step observer, no previews.
    request = Request.from_input({**FAST, **inputs})
    bare = generate.run(models, make_plan(request, True)).images
    assert len(bare) == len(final["images"])
    for previewed, untouched in zip(final["images"], bare):
        assert np.array_equal(np.asarray(decode(previewed)), np.asarray(untouched))


@pytest.mark.parametrize("inputs, field", [
    ({"preview_steps": -1}, "'preview_steps'"),
    ({"preview_steps": 1.5}, "'preview_steps'"),
    ({"preview_size": 32}, "'preview_size'"),
    ({"preview_size": 4096}, "'preview_size'"),
    ({"preview_format": "png"}, "'preview_format'"),
    ({"preview_quality": 0}, "'preview_quality'"),
])
def test_invalid_preview_inputs_are_named(run, inputs, field):
    outputs = run({**FAST, **inputs})
    assert len(outputs) == 1 and field in outputs[0]["error"]


# --- the worker thread, progress, TAESD ---


def denoising_threads(monkeypatch) -> list:
    """The thread each run of the pipelines happens in, from now on."""
    threads, real_run = [], generate.run

    def run(*args, **kwargs):
        threads.append(threading.current_thread())
        return real_run(*args, **kwargs)

    monkeypatch.setattr(generate, "run", run)
    return threads


def test_every_job_denoises_in_one_long_lived_thread_even_when_a_stream_is_dropped(models, monkeypatch):
    threads = denoising_threads(monkeypatch)
    list(run_job(worker_with(models), {"id": "first", "input": FAST}))
    before = threading.active_count()
    job = run_job(worker_with(models), {"id": "drop", "input": {**FAST, "preview_steps": 1, "num_inference_steps": 8}})
    assert "preview" in next(job)
    job.close()  # the client went away: the loop stops at its next step, before close() returns
    list(run_job(worker_with(models), {"id": "full", "input": {**FAST, "preview_steps": 2}}))
    assert len(threads) == 3 and len(set(threads)) == 1 and threads[0].name.startswith("denoise")
    assert threading.active_count() == before  # no thread started, none left behind


def test_a_failure_inside_the_loop_is_one_error_and_the_thread_serves_the_next_job(models, monkeypatch):
    threads = denoising_threads(monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(generate, "_generators", lambda *args, **kwargs: (_ for _ in ()).throw(
            RuntimeError("a bug in the loop, say")))
        outputs = list(run_job(worker_with(models), {"id": "broken", "input": {**FAST, "preview_steps": 1}}))
    assert len(outputs) == 1 and "internal error" in outputs[0]["error"]
    assert "images" in list(run_job(worker_with(models), {"id": "next", "input": FAST}))[-1]
    assert len(set(threads)) == 1


def test_progress_goes_to_runpod_only_on_runpod(models, monkeypatch):
    import runpod.serverless

    import handler

    sent = []
    monkeypatch.setattr(runpod.serverless, "progress_update", lambda job, progress: sent.append((job["id"], progress)))
    monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    monkeypatch.delenv("RUNPOD_POD_ID", raising=False)
    collect(handler.runpod_config(worker_with(models))["handler"], {"id": "local", "input": {**FAST, "preview_steps": 1,
                                                                                 "refine": "no_refiner"}})
    assert sent == []
    monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", "https://example.invalid/job-take/$ID")
    job = {"id": "on-runpod", "input": {**FAST, "refine": "no_refiner"}}  # previews off: progress still flows
    collect(handler.runpod_config(worker_with(models))["handler"], job)
    assert sent and sent[0] == ("on-runpod", {"step": 1, "total_steps": 4, "stage": "base"})
    assert sent[-1] == ("on-runpod", {"step": 4, "total_steps": 4, "stage": "base"})




def _tiny_taesd(folder):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1)).save_pretrained(folder)
    return str(folder)


def test_taesd_previews_when_its_weights_load(run, models, tmp_path):
    from dataclasses import replace

    decoder = latent_previews.load_preview_decoder(_tiny_taesd(tmp_path / "taesd"), "cpu", torch.float32)
    assert decoder is not None
    linear = split(run({**FAST, "refine": "no_refiner", "preview_steps": 4}))[0]
    shown, final = split(run({**FAST, "refine": "no_refiner", "preview_steps": 4},
                             on=replace(models, preview_decoder=decoder)))
    assert [c["step"] for c in shown] == [4] and decode(shown[0]["preview"]).size == (256, 256)
    assert shown[0]["preview"] != linear[0]["preview"]
    assert "images" in final


def test_taesd_that_cannot_load_falls_back_to_linear_with_one_log_line(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert latent_previews.load_preview_decoder(str(tmp_path / "missing"), "cpu", torch.float32) is None
    assert [r for r in caplog.records if "TAESD_MODEL" in r.getMessage() and "linear" in r.getMessage()]
    assert latent_previews.load_preview_decoder(None, "cpu", torch.float32) is None


def test_a_preview_that_fails_to_render_costs_the_preview_not_the_image(run, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("decoder out of memory, say")

    monkeypatch.setattr(latent_previews, "preview_image", broken)
    outputs = run({**FAST, "refine": "no_refiner", "preview_steps": 2})
    assert len(outputs) == 1 and "images" in outputs[0]


def test_taesd_decodes_a_smaller_latent_for_a_small_preview(tmp_path):
    decoder = latent_previews.load_preview_decoder(_tiny_taesd(tmp_path / "taesd"), "cpu", torch.float32)
    latent = torch.randn(4, 96, 128)  # a 1024x768 job
    assert latent_previews.taesd_rgb(decoder, latent).size == (1024, 768)
    assert latent_previews.taesd_rgb(decoder, latent, longest=64).size == (128, 96)  # twice the preview, not 1024
    assert decode(render_preview(latent, 64, "jpeg", 75, decoder)).size == (64, 48)


@pytest.mark.parametrize("preview_steps, estimates", [(0, 0), (3, 2)])  # 6 steps: a preview after 3 and 6
def test_the_clean_estimate_is_worked_out_only_for_the_steps_that_show_a_preview(models, monkeypatch, preview_steps,
                                                                                 estimates):
    """On CUDA each estimate reads a table and costs work: a job with previews off (RunPod's progress
    reports still on every step) pays for none, a job with previews for those it shows."""
    made = []
    real = latent_previews.clean_estimate
    monkeypatch.setattr(generate, "clean_estimate", lambda *args: made.append(1) or real(*args))
    from sdxl_worker.runtime.job import run_job

    job = {"id": "estimates", "input": {**FAST, "num_inference_steps": 6, "refine": "no_refiner", "scheduler": "DDIM",
                                        "preview_steps": preview_steps}}
    outputs = list(run_job(worker_with(models), job, on_progress=lambda job, report: None))
    assert "images" in outputs[-1] and len(made) == estimates


def test_the_alphas_table_reaches_the_device_once_per_scheduler(models):
    from sdxl_worker.engine.schedulers import build_scheduler

    scheduler = build_scheduler("PNDM", models.scheduler_configs["base"])
    first = latent_previews._alphas_on(scheduler, "cpu")
    assert latent_previews._alphas_on(scheduler, "cpu") is first and first.dtype == torch.float32
