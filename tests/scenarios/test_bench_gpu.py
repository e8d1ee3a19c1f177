"""bench/gpu.py: its smoke run end to end on the tiny model (so the GPU run cannot fail on a changed
signature after the models are built), the table it writes, the real shapes it builds.
"""


import pytest
import torch

from tests.helpers import bench_script


@pytest.fixture(scope="module")
def bench():
    return bench_script("gpu")


LAYOUT = ("down_block_types", "up_block_types", "layers_per_block", "transformer_layers_per_block",
          "mid_block_type", "addition_embed_type", "use_linear_projection")


def test_the_smoke_run_keeps_sdxl_layout_at_a_fraction_of_its_width(bench):
    from diffusers import UNet2DConditionModel

    real, reduced = bench.load_configs(reduced=False), bench.load_configs(reduced=True)
    assert sum(real["base_unet"]["transformer_layers_per_block"]) == 13  # the released base, not a copy
    for name in ("base_unet", "refiner_unet"):
        assert {k: reduced[name][k] for k in LAYOUT} == {k: real[name][k] for k in LAYOUT}
        with torch.device("meta"):  # shapes only: no memory, no random init
            unet = UNet2DConditionModel.from_config(reduced[name])
        assert sum(p.numel() for p in unet.parameters()) < 50_000_000  # the real ones: 2.6 and 2.3 billion
    # The conditioning widths line up: both text encoders feed the base, text_encoder_2 the refiner.
    widths = reduced["text_encoder"]["hidden_size"], reduced["text_encoder_2"]["hidden_size"]
    assert reduced["base_unet"]["cross_attention_dim"] == sum(widths)
    assert reduced["refiner_unet"]["cross_attention_dim"] == widths[1]


def test_each_switch_alone_differs_from_the_unoptimised_path_in_one_field(bench):
    from dataclasses import asdict

    from sdxl_worker.engine.speed import Speedups

    none = asdict(Speedups.none())
    for name in bench.ALONE:
        changed = {k for k, v in asdict(bench.alone(name)).items() if none[k] != v}
        if name == "compile":  # compiling is paid by a warm-up, so the two come together
            assert {"compile", "warmup"} <= changed
        else:
            assert len(changed) == 1, (name, changed)


def test_results_give_ratios_and_label_cpu_figures_as_not_gpu(bench, tmp_path):
    row = {"peak_gib": None, "syncs": None, "pixel_diff": 0.0}
    results = {
        "machine": {"device_name": "CPU (test)", "torch": "t", "diffusers": "d", "dtype": "float32",
                    "matmul_peak": 1e11, "spec": "64x64"},
        "flops": {"image, base only": 4e10},
        "rows": {"a|base only": dict(row, seconds=4.0, label="worker-sdxl"),
                 "b|base only": dict(row, seconds=2.0, label="diffusers"),
                 "c|base only": dict(row, seconds=1.0, label="this worker")},
        "compile": {},
    }
    path = tmp_path / "RESULTS.md"
    bench.write_results(results, "smoke", "python bench/gpu.py --cpu-smoke", path)
    text = path.read_text()
    assert "## CPU smoke run, not GPU figures; GPU figures pending (no GPU lent)" in text
    assert "## GPU run\n\nPending" in text
    line = next(line for line in text.splitlines() if line.startswith("| c: this worker"))
    # 4 s -> 1 s is 4x a, 2x b; 40 GFLOP in 1 s is 0.04 TFLOP/s, 40 % of a 100 GFLOP/s peak.
    assert "| 4.00x | 2.00x |" in line and "| 0.04 | 40.0 |" in line


def test_the_smoke_run_goes_through_every_row_and_writes_the_table(bench, tmp_path, monkeypatch):
    """Every row the GPU command runs (compile aside: minutes on a CPU), on the tiny model, in seconds."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    monkeypatch.setenv("WARMUP_SIZES", "256x256:1")
    results = tmp_path / "RESULTS.md"
    assert bench.main(["--cpu-smoke", "--no-compile", "--only", "a,b,none,c,lightning", "--steps", "2",
                       "--refiner-steps", "5", "--cache", str(tmp_path / "cache"), "--results", str(results)]) == 0
    cells = [[cell.strip() for cell in line.strip("| ").split("|")] for line in results.read_text().splitlines()
             if line.startswith("| ") and not line.startswith(("| variant", "| ---"))]
    diff = {f"{row[0].split(':')[0]}|{row[1]}": float(row[-1]) for row in cells}
    assert set(diff) == {"a|base only", "a|base + refiner", "b|base only", "b|base + refiner", "none|base only",
                         "none|base + refiner", "c|base only", "c|base + refiner", "lightning|base only"}
    # Plain diffusers and this worker run the same job: the same pixels; worker-sdxl's refiner (the
    # prompt alone, its own Euler scheduler) and lightning's schedule give other images.
    assert diff["b|base only"] == diff["b|base + refiner"] == diff["c|base only"] == diff["c|base + refiner"] == 0
    assert diff["a|base + refiner"] > 0 and diff["lightning|base only"] > 0


def test_the_memory_table_comes_from_the_released_configs_and_the_docs_hold_it():
    import re

    from tests.helpers import ROOT, bench_script

    memory = bench_script("memory")
    counts = memory.parameters()
    # Published parameter counts of SDXL base 1.0 and refiner 1.0's UNets, and of a ViT-H/14 image tower.
    assert counts["base UNet"] == 2_567_463_684 and counts["refiner UNet"] == 2_259_526_660
    assert counts["IP-Adapter image encoder (ViT-H)"] == 632_076_800
    rows = dict(memory.configurations(counts))
    assert round(rows["base + refiner (the default)"] / 1e9, 1) == 11.5
    text = (ROOT / "docs" / "checkpoints.md").read_text()
    kept = re.search(r"<!-- memory:start -->\n(.*?)\n<!-- memory:end -->", text, re.S)
    assert kept and kept.group(1).strip() == memory.markdown(counts).strip(), \
        "run: python bench/memory.py, paste into docs/checkpoints.md"
