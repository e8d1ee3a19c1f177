"""spandrel made importable in development and CI, where torchvision cannot be installed; the reference upscale.

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


def reference_upscale(file, image):
    """What a user gets calling spandrel by hand: its own loader and call, the result rounded to 8 bits."""
    import numpy as np
    import torch
    from PIL import Image

    model = import_spandrel().ModelLoader().load_from_file(file)
    out = model(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy()
    return Image.fromarray((out * 255).round().clip(0, 255).astype(np.uint8))
