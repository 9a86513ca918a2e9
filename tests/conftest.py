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


# The small linear-generator chain most stage tests run on (CPU, seconds): ground-truth data at
# 32 px, the linear generator, a 16 px decomposer of 2 steps that is not judged. Tests override
# what they vary through tiny_linear_params(section={...}).
TINY_LINEAR = {
    "device": "cpu",
    "data": {"n_images": 48, "resolution": 32, "n_eval": 4, "chunk": 16, "batch_size": 16},
    "gan": {
        "kind": "linear",
        "w_dim": 16,
        "resolution": 32,
        "grid": 2,
        "metric_samples": 64,
        "fid_samples": 0,
        "ppl_samples": 0,
    },
    "recon": {
        "resolution": 16,
        "nf_map": 4,
        "zdim_map": 8,
        "nf_encoder": 4,
        "nf_conf": 4,
        "zdim_conf": 8,
        "steps": 2,
        "batch_size": 4,
        "snapshot_steps": 2,
        "n_eval": 8,
        "eval_batch": 8,
        "panel_images": 2,
        "allow_degenerate": True,  # a 2-step net is not judged
    },
}


def tiny_linear_params(**sections: dict) -> Params:
    """TINY_LINEAR over the project's params.yaml, then `sections` over that (per key)."""
    merged = {name: dict(values) if isinstance(values, dict) else values for name, values in TINY_LINEAR.items()}
    for name, values in sections.items():
        merged[name] = {**merged.get(name, {}), **values} if isinstance(values, dict) else values
    return make_params(**merged)
