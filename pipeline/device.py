"""One device switch for every stage: `device: auto | cpu | cuda` in params.yaml,
overridable with the FACESEM_DEVICE environment variable."""
from __future__ import annotations

import os

import torch


def select_device(preference: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU. FACESEM_DEVICE, when set, wins."""
    choice = os.environ.get("FACESEM_DEVICE", preference).lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {choice!r} requested (params 'device' or FACESEM_DEVICE) "
                           "but CUDA is not available; use 'auto' or 'cpu'")
    if choice not in ("cpu",) and not choice.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {choice!r}")
    return torch.device(choice)
