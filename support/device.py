"""One device switch for every stage: `device: auto | cpu | cuda` in params.yaml,
overridable with the FACESEM_DEVICE environment variable."""

from __future__ import annotations

import os
import re

import torch


def select_device(preference: str = "auto") -> torch.device:
    """`auto` -> CUDA when available, else CPU. FACESEM_DEVICE, when set, wins."""
    choice = os.environ.get("FACESEM_DEVICE", preference).lower()
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"device {choice!r} requested (params 'device' or FACESEM_DEVICE) "
            "but CUDA is not available; use 'auto' or 'cpu'"
        )
    if choice != "cpu" and not re.fullmatch(r"cuda(:\d+)?", choice):
        raise ValueError(
            f"device must be 'auto', 'cpu' or 'cuda[:N]', got {choice!r} (params 'device' or FACESEM_DEVICE)"
        )
    if choice.startswith("cuda:") and int(choice[5:]) >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {choice!r} requested but this machine has {torch.cuda.device_count()} CUDA "
            f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device(choice)
