"""The sampler table (request/samplers.py): the names users send, their aliases, the docs table made from it.

Each name's class and settings, written down from the publishers, are in test_published_values.py; what
the engine builds from the table, in tests/unit/engine/test_schedulers.py."""

import re

import pytest

from sdxl_worker.request import schema
from sdxl_worker.request.samplers import SCHEDULERS, markdown_table
from tests.helpers import ROOT


@pytest.mark.parametrize(
    "name, same_as",
    [("K_LMS", "KLMS"), ("K_HEUN", "HeunDiscrete"), ("K_DPMPP_2M", "DPMSolverMultistep"),
     ("DPMSolverMultistepKarras", "KarrasDPM")],
)
def test_aliases_are_the_same_sampler(name, same_as):
    assert SCHEDULERS[name][:2] == SCHEDULERS[same_as][:2]


def test_every_name_the_seeds_promise_is_there():
    promised = ["DDIM", "PNDM", "KLMS", "K_EULER", "K_EULER_ANCESTRAL", "DPMSolverMultistep", "DPMSolverSinglestep",
                "HeunDiscrete", "KarrasDPM", "UniPC", "DDPM", "K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2",
                "K_DPM_2_ANCESTRAL", "K_HEUN", "K_LMS"]
    assert set(promised) <= set(schema.SCHEDULERS) == set(SCHEDULERS)


def test_readme_scheduler_table_is_generated_from_the_table():
    text = (ROOT / "docs" / "modes.md").read_text()
    table = re.search(r"<!-- schedulers:start -->\n(.*?)\n<!-- schedulers:end -->", text, re.S)
    assert table, "docs/modes.md lacks the generated scheduler table markers"
    assert table.group(1).strip() == markdown_table().strip(), \
        "run: python -m sdxl_worker.request.samplers, paste into docs/modes.md"


def test_the_docs_table_gives_class_tweaks_and_note_for_each_name():
    rows = markdown_table().splitlines()
    assert rows[:2] == ["| name | diffusers class | config tweaks | note |", "| --- | --- | --- | --- |"]
    assert "| `K_EULER` | `EulerDiscreteScheduler` | - | SDXL's own default |" in rows
    assert ("| `DPMSolverSDE_Karras` | `DPMSolverMultistepScheduler` | `use_karras_sigmas=True`, "
            "`algorithm_type='sde-dpmsolver++'` | DPM++ 2M SDE Karras |") in rows
    assert len(rows) == 2 + 28
