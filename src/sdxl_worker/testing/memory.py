"""Weights in fresh memory, for tests that compare models loaded from different file layouts.

On the CPU, matmul and convolution kernels pick their code path by where a weight sits in memory
(its alignment), and the paths round differently in the last bit of a float. A weight read from a
safetensors file sits wherever the file put it, so the same numbers loaded from a folder and from
a single-file checkpoint (or copied, as a preset's UNet is) can give images one level apart on
some CPUs. On a GPU every weight is copied into fresh device memory and this does not arise.
"""

from __future__ import annotations


def fresh_memory(*modules) -> None:
    """Move every parameter and buffer of ``modules`` (torch modules, or pipelines: their modules)
    into newly allocated memory, values unchanged."""
    import torch

    seen = set()
    for item in modules:
        parts = item.components.values() if hasattr(item, "components") else [item]
        for part in parts:
            if isinstance(part, torch.nn.Module) and id(part) not in seen:
                seen.add(id(part))
                for tensor in [*part.parameters(), *part.buffers()]:
                    tensor.data = tensor.data.clone()
