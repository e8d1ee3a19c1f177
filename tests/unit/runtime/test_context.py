"""A job's context (runtime/context.py): its id as logs and upload keys give it, and what its stages take."""

from sdxl_worker.runtime.context import JobContext, JobInputs, job_id_of
from sdxl_worker.runtime.stopping import Stop


def test_a_job_without_an_id_is_called_local():
    assert job_id_of({"input": {}}) == "local"


def test_an_id_is_text_of_at_most_100_characters():
    assert job_id_of({"id": "abc-123"}) == "abc-123"
    assert job_id_of({"id": 42}) == "42"
    assert job_id_of({"id": "x" * 150}) == "x" * 100


def test_the_context_names_its_job_by_that_id():
    context = JobContext({"id": "y" * 120, "input": {}}, None, Stop())
    assert context.id == "y" * 100


def test_inputs_start_empty_and_are_not_shared_between_jobs():
    first, second = JobInputs(), JobInputs()
    first.loras.append("a file")
    assert (second.image, second.image_field, second.mask) == (None, "image", None)
    assert second.loras == second.control_images == second.ip_adapter_images == []
