"""Checkpoints: safetensors weights + a JSON sidecar (step, kimg, params hash, provenance).

Never pickles. `save_checkpoint` writes both files atomically (weights first, sidecar last,
so a checkpoint without a sidecar is ignored as incomplete). `latest_checkpoint` finds the
newest complete one in a folder, for resuming after an interruption.
"""
from __future__ import annotations

import csv
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.artifacts import write_json

_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")


def flatten_state(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a nested state dict into tensors (for safetensors) and JSON-able scalars.

    Nesting is joined with '/' (module state-dict keys keep their dots); int keys become '#N'.
    """
    tensors, extra = {}, {}
    for key, value in state.items():
        name = f"{prefix}#{key}" if isinstance(key, int) else f"{prefix}{key}"  # int keys: optimizer state
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().cpu().contiguous().clone()
        elif isinstance(value, dict):
            t, e = flatten_state(value, f"{name}/")
            tensors.update(t)
            extra.update(e)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict)) for v in value):
            t, e = flatten_state({str(i): v for i, v in enumerate(value)}, f"{name}/")
            tensors.update(t)
            extra.update(e)
            extra[f"{name}/__list__"] = len(value)
        else:
            extra[name] = value
    return tensors, extra


def unflatten_state(tensors: dict[str, torch.Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_state`."""
    root: dict[str, Any] = {}
    lists = {k[: -len("/__list__")] for k in extra if k.endswith("/__list__")}
    for key, value in [*tensors.items(), *((k, v) for k, v in extra.items() if not k.endswith("/__list__"))]:
        node, parts = root, key.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value

    def fix(node: Any, path: str) -> Any:
        if not isinstance(node, dict):
            return node
        node = {(int(k[1:]) if k.startswith("#") else k): fix(v, f"{path}/{k}" if path else k)
                for k, v in node.items()}
        if path in lists:
            return [node[str(i)] for i in range(len(node))]
        return node

    return fix(root, "")


def save_checkpoint(folder: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any],
                    name: str | None = None) -> Path:
    """Write `<name>.safetensors` + `<name>.json` sidecar in `folder` (default name
    `ckpt-<step>`, which `latest_checkpoint` finds); returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name or f'ckpt-{step:09d}'}.safetensors"
    tensors, extra = flatten_state(state)
    tmp = weights.with_name(f".{weights.name}.tmp-{uuid.uuid4().hex[:8]}")
    save_file(tensors, str(tmp))
    os.replace(tmp, weights)
    write_json(weights.with_suffix(".json"), {**meta, "step": step, "state_extra": extra})
    return weights


def load_checkpoint(weights: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (nested state, sidecar meta). Raises FileNotFoundError naming a missing file."""
    weights = Path(weights)
    sidecar = weights.with_suffix(".json")
    for path in (weights, sidecar):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} not found")
    meta = json.loads(sidecar.read_text())
    tensors = load_file(str(weights), device=str(device))
    return unflatten_state(tensors, meta.pop("state_extra", {})), meta


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest checkpoint in `folder` that has its sidecar (i.e. was completely written)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in folder.iterdir()
                   if (m := _NAME.match(p.name)) and p.with_suffix(".json").is_file())
    return found[-1][1] if found else None


def read_curves(path: Path, x: str, upto: float) -> list[dict]:
    """Rows of a training-curve CSV with column `x` (kimg, step) <= `upto`: what a resumed run
    keeps of the curves an interrupted one wrote. [] when there is no file yet."""
    if not path.is_file():
        return []
    with path.open() as fh:
        return [r for r in csv.DictReader(fh) if float(r[x]) <= upto + 1e-9]


def write_curves(path: Path, rows: list[dict], columns) -> None:
    """Write training-curve rows (CSV with `columns`) under a temporary name, then rename."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
