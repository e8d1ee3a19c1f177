"""spandrel made importable in development and CI, where torchvision cannot be installed.

spandrel imports three names from torchvision when it is imported, for two architectures the
worker never loads: LaMa (an inpainting model: ``rotate``, ``InterpolationMode``) and RestoreFormer
(a face restorer: ``normalize``). The Docker image installs torchvision built for its CUDA torch,
beside it. Development and CI run the CPU build of torch, for which there is no torchvision
(PyPI's needs torch's CUDA libraries and fails to import beside it): there, and only where
torchvision is missing, those names are stand-ins that raise if anything ever calls them, present
for the moment spandrel is imported and removed after. Everything the tests run, spandrel's
loading, its ESRGAN architecture and its model, is spandrel's own.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


def import_spandrel():
    """The spandrel module, importable for the rest of the process."""
    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("spandrel")
    stand_ins = _stand_ins()
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module("spandrel")
    finally:
        for name in stand_ins:
            sys.modules.pop(name, None)


def _stand_ins() -> dict:
    def missing(*_args, **_kwargs):
        raise RuntimeError("torchvision is not installed here; spandrel's LaMa and RestoreFormer need it")

    package, transforms, functional = (types.ModuleType(name) for name in
                                       ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"))
    functional.rotate = functional.normalize = missing
    functional.InterpolationMode = types.SimpleNamespace(BILINEAR="bilinear", NEAREST="nearest")
    package.transforms, transforms.functional = transforms, functional
    return {"torchvision": package, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}
