"""LoRAs per job on the tiny model: made here with peft, served over real HTTP, loaded, unloaded."""


import numpy as np
import pytest
import torch

from sdxl_worker.engine import lora_layers
from sdxl_worker.inputs import lora_files
from sdxl_worker.runtime.job import local_loras
from sdxl_worker.testing.servers import Server, body
from sdxl_worker.testing.tiny_loras import kohya_lora, tiny_lora
from tests.helpers import decode, png_data_url, worker_with

JOB = {"prompt": "a red fox", "width": 256, "height": 256, "num_inference_steps": 2, "seed": 7,
       "refiner_inference_steps": 4, "strength": 0.5}

FAST = dict(JOB, refine="no_refiner")


@pytest.fixture(scope="module")
def baseline(models):
    """FAST's pixels before any LoRA was loaded."""
    from sdxl_worker.runtime.job import run_job

    return _pixels(list(run_job(worker_with(models), {"id": "baseline", "input": FAST})))


def _incompatible_lora() -> bytes:
    """Right format, wrong sizes: a layer the tiny UNet has, with another model's width."""
    from safetensors.torch import save

    layer = "unet.down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q"
    return save({f"{layer}.lora.down.weight": torch.ones(4, 320), f"{layer}.lora.up.weight": torch.ones(64, 4)})


def _kohya_with(change) -> bytes:
    """A kohya-named LoRA for the tiny base with one change to its tensors."""
    from safetensors.torch import load, save

    state = load(kohya_lora(seed=9, full=True))
    change(state)
    return save(state)


def _wider_ff(state) -> None:  # one feed-forward layer of another model's width
    key = next(key for key in state if key.endswith("ff_net_2.lora_down.weight"))
    state[key] = torch.ones(4, state[key].shape[1] * 2)


def _locon(state) -> None:  # a key kind this worker's loaders do not place
    key = next(key for key in state if key.endswith("attn1_to_q.lora_down.weight"))
    state[key.replace("lora_down.weight", "hada_w1_a")] = torch.ones(4, 4)


@pytest.fixture(scope="module")
def lora_bytes() -> dict:
    """The test LoRAs by URL path."""
    return {
        "/fox.safetensors": tiny_lora("base", ["to_q", "to_k", "to_v", "to_out.0"], seed=1),
        "/with-text.safetensors": tiny_lora("base", ["to_q"], seed=3, text_encoders=True),
        "/refiner-only.safetensors": tiny_lora("refiner", ["to_q", "to_k", "to_v", "to_out.0"], seed=2),
        "/corrupt.safetensors": b"this is not a safetensors file at all" * 10,
        "/other-model.safetensors": _incompatible_lora(),
        "/kohya-wider-ff.safetensors": _kohya_with(_wider_ff),
        "/kohya-loha.safetensors": _kohya_with(_locon),
    }


@pytest.fixture(scope="module")
def http_files(lora_bytes):
    """A real HTTP server for the test LoRAs; its ``requests`` lists every path asked for."""
    with Server({path: body(data) for path, data in lora_bytes.items()}) as files:
        yield files


@pytest.fixture
def server(http_files):
    """The server's address, with its record of requests cleared for each test."""
    http_files.requests.clear()
    return http_files.url("")


@pytest.fixture(autouse=True)
def lora_env(worker_env, tmp_path):
    worker_env["ALLOW_PRIVATE_URLS"] = "1"  # the test server is on loopback
    worker_env["LORA_CACHE_DIR"] = str(tmp_path / "lora-cache")
    worker_env["HF_HUB_OFFLINE"] = "1"
    worker_env["LORA_DIR"] = str(tmp_path)


def _pixels(outputs) -> np.ndarray:
    assert "error" not in outputs[-1], outputs[-1]
    return np.asarray(decode(outputs[-1]["images"][0]))


def test_lora_changes_the_image_and_leaves_nothing_behind(run, server, http_files, models):
    before = _pixels(run(JOB))
    fox = {"path": f"{server}/fox.safetensors", "scale": 1.0}
    with_lora = _pixels(run(dict(JOB, loras=[fox])))
    assert np.abs(with_lora.astype(int) - before).mean() > 1  # visibly different
    assert _pixels(run(dict(JOB, loras=[dict(fox, scale=0)]))).tolist() == before.tolist()
    assert _pixels(run(JOB)).tolist() == before.tolist()  # the job after a LoRA: the same pixels
    assert lora_layers.leftover_layers(models) == []
    # Downloaded once, then served from the disk cache.
    assert [path for path, _ in http_files.requests] == ["/fox.safetensors"]
    assert _pixels(run(dict(JOB, loras=[fox]))).tolist() == with_lora.tolist()  # and from the cache alike
    assert [path for path, _ in http_files.requests] == ["/fox.safetensors"]


def test_a_lora_still_applies_when_the_unets_run_fused_qkv(run, server, models):
    fox = {"path": f"{server}/fox.safetensors", "scale": 1.0}
    with_lora = _pixels(run(dict(JOB, loras=[fox])))
    unets = [models.base.unet, models.refiner.unet]
    for unet in unets:
        unet.fuse_qkv_projections()  # as FUSED_QKV does on a GPU
    try:
        assert _pixels(run(dict(JOB, loras=[fox]))).tolist() == with_lora.tolist()
        assert all("Fused" in type(p).__name__ for unet in unets for p in unet.attn_processors.values())
    finally:
        for unet in unets:
            unet.unfuse_qkv_projections()


def test_scales_add_up_and_a_second_lora_stacks(run, server, baseline):
    JOB = FAST
    fox = {"path": f"{server}/fox.safetensors"}
    half = _pixels(run(dict(JOB, loras=[dict(fox, scale=0.5)])))
    full = _pixels(run(dict(JOB, loras=[dict(fox, scale=1.0)])))
    assert half.tolist() != full.tolist()
    assert half.tolist() != baseline.tolist()
    doubled = _pixels(run(dict(JOB, loras=[dict(fox, scale=0.5), dict(fox, scale=0.5)])))
    assert np.abs(doubled.astype(int) - full).max() <= 1  # two halves of one LoRA: the whole LoRA


def test_a_lora_with_text_encoder_layers(run, server, lora_bytes, baseline, models, worker_env):
    from safetensors.torch import load

    keys = load(lora_bytes["/with-text.safetensors"]).keys()
    assert any(k.startswith("text_encoder.") for k in keys) and any(k.startswith("text_encoder_2.") for k in keys)
    files = worker_with(models, **worker_env).lora_files
    with lora_layers.applied(models, local_loras(files, [{"path": f"{server}/with-text.safetensors"}])):
        assert len(lora_layers.leftover_layers(models)) > 0  # the check below can see LoRA layers
        # Its to_q layers fit both UNets (same sizes in the tiny base and refiner); text_encoder_2 is shared.
        for model in (models.base.unet, models.refiner.unet, models.base.text_encoder, models.base.text_encoder_2):
            assert list(model.peft_config) == ["job_lora_0"]
    with_text = _pixels(run(dict(FAST, loras=[{"path": f"{server}/with-text.safetensors"}])))
    assert with_text.tolist() != baseline.tolist()
    assert _pixels(run(FAST)).tolist() == baseline.tolist()
    assert lora_layers.leftover_layers(models) == []


def test_a_refiner_lora_goes_to_the_refiner_only(run, server):
    refiner_lora = [{"path": f"{server}/refiner-only.safetensors"}]
    base_only = dict(JOB, refine="no_refiner")
    assert _pixels(run(dict(base_only, loras=refiner_lora))).tolist() == _pixels(run(base_only)).tolist()
    source = png_data_url(decode(run(base_only)[-1]["images"][0]))
    refine = {"image_url": source, "refiner_inference_steps": 4, "strength": 0.5, "seed": 3}
    assert _pixels(run(dict(refine, loras=refiner_lora))).tolist() != _pixels(run(refine)).tolist()


@pytest.mark.parametrize(
    "path, words",
    [
        ("/missing.safetensors", ["'missing.safetensors'", "loras[1].path", "could not be downloaded"]),
        ("/corrupt.safetensors", ["'corrupt.safetensors'", "not a valid .safetensors"]),
        ("/other-model.safetensors", ["'other-model.safetensors'", "does not fit", "to_q.lora.down.weight'",
                                      "takes 320 inputs where the model's layer takes"]),
        # Every layer is checked, not only the attention ones a file happens to start with.
        ("/kohya-wider-ff.safetensors", ["does not fit", "ff.net.2.lora.down.weight'", "inputs where the model's"]),
        ("/kohya-loha.safetensors", ["'kohya-loha.safetensors'", "loras[1]"]),
    ],
)
def test_broken_loras_fail_the_job_by_name_and_the_worker_keeps_serving(run, server, path, words, baseline):
    error = run(dict(FAST, loras=[{"path": f"{server}/fox.safetensors"}, {"path": server + path}]))[-1]["error"]
    for word in words:
        assert word in error
    assert "loras[1]" in error  # the second LoRA is the broken one
    assert _pixels(run(FAST)).tolist() == baseline.tolist()  # the good LoRA loaded first was unloaded too


def test_unreachable_local_and_hub_loras_are_named(run, tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = run(dict(JOB, loras=[{"path": f"http://127.0.0.1:{port}/gone.safetensors"}]))[-1]["error"]
    assert "'gone.safetensors'" in error and "could not be downloaded" in error
    error = run(dict(JOB, loras=[{"path": str(tmp_path / "nowhere.safetensors")}]))[-1]["error"]
    assert "'nowhere.safetensors'" in error and "loras[0].path" in error
    pickle = tmp_path / "weights.bin"
    pickle.write_bytes(b"not loaded")
    error = run(dict(JOB, loras=[{"path": str(pickle)}]))[-1]["error"]
    assert "'weights.bin'" in error and ".safetensors" in error
    error = run(dict(JOB, loras=[{"path": "someone/some-lora", "weight_name": "style.safetensors"}]))[-1]["error"]
    assert "'some-lora'" in error and "'style.safetensors'" in error and "hub" in error


def test_a_local_lora_file_and_folder_load(run, server, lora_bytes, tmp_path):
    JOB = FAST
    folder = tmp_path / "my-lora"
    folder.mkdir()
    (folder / lora_files.DEFAULT_WEIGHT_NAME).write_bytes(lora_bytes["/fox.safetensors"])
    by_url = _pixels(run(dict(JOB, loras=[{"path": f"{server}/fox.safetensors"}])))
    assert _pixels(run(dict(JOB, loras=[{"path": str(folder)}]))).tolist() == by_url.tolist()
    file = folder / lora_files.DEFAULT_WEIGHT_NAME
    assert _pixels(run(dict(JOB, loras=[{"path": str(file)}]))).tolist() == by_url.tolist()


def test_local_paths_stay_inside_lora_dir(run, tmp_path, worker_env):
    outside = tmp_path.parent / "outside.safetensors"
    for path in (str(outside), "../outside.safetensors", "/etc/passwd"):
        error = run(dict(JOB, loras=[{"path": path}]))[-1]["error"]
        assert "LORA_DIR" in error and "loras[0].path" in error
    worker_env.pop("LORA_DIR", None)
    error = run(dict(JOB, loras=[{"path": str(tmp_path / "x.safetensors")}]))[-1]["error"]
    assert "LORA_DIR" in error


def test_too_many_or_too_large_loras_are_refused(run, server, worker_env):
    many = [{"path": f"{server}/fox.safetensors"}] * 5
    assert run(dict(JOB, loras=many))[-1]["error"] == "'loras' must have at most 4 items."
    worker_env["LORA_MAX_MB"] = "0.001"  # about 1 KB
    error = run(dict(JOB, loras=[{"path": f"{server}/fox.safetensors"}]))[-1]["error"]
    assert "'fox.safetensors'" in error and "larger than" in error
    error = run(dict(JOB, loras=[{"path": f"{server}/fox.safetensors", "scale": 9}]))[-1]["error"]
    assert "'loras[0].scale'" in error


def test_two_jobs_in_flight_each_get_only_their_own_lora(models, server, baseline, worker_env):
    """CONCURRENCY=2: one job's LoRA layers must never be on while the other job denoises."""
    import asyncio

    from sdxl_worker.runtime.job import run_job
    from sdxl_worker.runtime.serve import Runner

    fox = {"path": f"{server}/fox.safetensors", "scale": 1.0}
    worker = worker_with(models, **worker_env)
    alone = _pixels(list(run_job(worker, {"id": "fox-alone", "input": dict(FAST, loras=[fox])})))
    runner = Runner(worker, concurrency=2)

    async def both():
        async def outputs(job):
            return [output async for output in runner.run(job)]
        return await asyncio.gather(*(outputs({"id": f"{name}-{round_}", "input": job})
                                      for round_ in range(2)
                                      for name, job in (("fox", dict(FAST, loras=[fox])), ("plain", FAST))))

    results = asyncio.run(both())
    for index, outputs in enumerate(results):
        expected = alone if index % 2 == 0 else baseline
        assert _pixels(outputs).tolist() == expected.tolist()
