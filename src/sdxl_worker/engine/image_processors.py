"""transformers' image processors on their PIL backend, whatever else is installed.

transformers 5 runs an image processor on torchvision when torchvision is installed, on PIL
otherwise, and the two resize and crop a little differently. The Docker image installs
torchvision (spandrel, the hires pass's upscaler, imports it); this project's development and CI
machines have none for their CPU build of torch. Named here, the PIL backend is what both run, so the
image prepares depth, pose and IP-Adapter inputs exactly as the tests check them.
"""

from __future__ import annotations


def from_pretrained(where: str):
    """A model's image processor (its preprocessor_config.json), on the PIL backend."""
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(where, backend="pil")


def on_pil(processor):
    """The same processor, settings and all, on the PIL backend (itself when it is already there)."""
    import transformers

    name = type(processor).__name__
    if name.endswith("Pil"):
        return processor
    pil = getattr(transformers, name.removesuffix("Fast") + "Pil", None)
    return pil.from_dict(processor.to_dict()) if pil is not None else processor
