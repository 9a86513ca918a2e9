"""Shared test set-up: small thread counts, project-local tool state, the repo root."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import pipeline  # noqa: F401  (DVC/Prefect environment defaults)

REPO = Path(__file__).resolve().parent.parent

# One torch thread in tests: tensors are tiny, results are deterministic, and 2-thread torch
# crawls when the 2 cores are shared with another job (measured: 50 ms steps became seconds).
torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return REPO
