"""Shared test set-up: small thread counts, project-local tool state, the repo root, and
params built from the project's params.yaml (the one home of every value) with overrides."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

import pipeline  # noqa: F401  (DVC/Prefect environment defaults)
from support.params import Params, parse_params

REPO = Path(__file__).resolve().parent.parent

# One torch thread in tests: tensors are tiny, results are deterministic, and 2-thread torch
# crawls when the 2 cores are shared with another job (measured: 50 ms steps became seconds).
torch.set_num_threads(1)


@pytest.fixture
def repo_root() -> Path:
    return REPO


def params_dict(**sections: dict) -> dict:
    """The project's params.yaml as a dict, with `sections` ({key: value} per section) merged in."""
    raw = copy.deepcopy(_PROJECT_PARAMS)
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return raw


def make_params(**sections: dict) -> Params:
    """Validated Params: the project's params.yaml with `sections` merged in (see params_dict)."""
    return parse_params(params_dict(**sections))


_PROJECT_PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
