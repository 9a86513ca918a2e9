"""Shared test set-up: small thread counts, project-local tool state, the repo root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import pipeline  # noqa: F401  (DVC/Prefect environment defaults)

REPO = Path(__file__).resolve().parent.parent

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def repo_root() -> Path:
    return REPO
