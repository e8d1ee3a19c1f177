"""The error taxonomy: which failures free memory, which replace the worker, which are the user's."""

import pytest
import torch

from sdxl_worker import errors
from sdxl_worker.errors import InputError


@pytest.mark.parametrize("error, kind", [
    (InputError("'width' must be a multiple of 8, got 1001."), errors.INPUT),
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), errors.OUT_OF_MEMORY),
    (RuntimeError("CUDA error: out of memory"), errors.OUT_OF_MEMORY),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), errors.OUT_OF_MEMORY),
    (torch.AcceleratorError("CUDA error: an illegal memory access was encountered"), errors.POISONED),
    (RuntimeError("CUDA error: device-side assert triggered"), errors.POISONED),
    (RuntimeError("CUDA error: unspecified launch failure"), errors.POISONED),
    (RuntimeError("CUDA error: uncorrectable ECC error encountered"), errors.POISONED),
    (RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu"), errors.INTERNAL),
    (RuntimeError("an illegal memory access somewhere in my own code"), errors.INTERNAL),  # not a CUDA error
    (KeyError("unet"), errors.INTERNAL),
    (ValueError("shapes do not match"), errors.INTERNAL),
])
def test_each_failure_has_one_kind(error, kind):
    assert errors.kind_of(error) == kind


def test_messages_are_one_sentence_with_the_job_id():
    for kind in (errors.OUT_OF_MEMORY, errors.POISONED, errors.INTERNAL):
        text = errors.message(kind, "job-7")
        assert "job-7" in text and text.endswith(".") and "\n" not in text
    assert "smaller" in errors.message(errors.OUT_OF_MEMORY, "j")
