"""Checkpoints: safetensors weights + a JSON sidecar (step, kimg, params hash, provenance).

Never pickles. `save_checkpoint` writes both files atomically (weights first, sidecar last,
so a checkpoint without a sidecar is ignored as incomplete). `latest_checkpoint` finds the
newest complete one in a folder, for resuming after an interruption.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from store.artifacts import temporary_path, write_json

_NAME = re.compile(r"^ckpt-(\d{9})\.safetensors$")
log = logging.getLogger("store.checkpoints")


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
        node = {(int(k[1:]) if k.startswith("#") else k): fix(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        if path in lists:
            return [node[str(i)] for i in range(len(node))]
        return node

    return fix(root, "")


def save_checkpoint(
    folder: str | Path, step: int, state: dict[str, Any], meta: dict[str, Any], name: str | None = None
) -> Path:
    """Write `<name>.safetensors` + `<name>.json` sidecar in `folder` (default name
    `ckpt-<step>`, which `latest_checkpoint` finds); returns the weights path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name or f'ckpt-{step:09d}'}.safetensors"
    tensors, extra = flatten_state(state)
    tmp = temporary_path(weights)
    save_file(tensors, str(tmp))
    os.replace(tmp, weights)
    write_json(weights.with_suffix(".json"), {**meta, "step": step, "state_extra": extra})
    return weights


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file, what is wrong and what to do."""


def load_sidecar(weights: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint (its meta), without reading the weights.

    Raises FileNotFoundError naming a missing sidecar, CheckpointError one that is not a JSON object.
    """
    sidecar = Path(weights).with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"checkpoint file {sidecar} not found")
    try:
        meta = json.loads(sidecar.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"checkpoint sidecar {sidecar} is not valid JSON ({err}; {sidecar.stat().st_size} "
            "bytes): it was cut mid-way or edited. Restore it (`dvc checkout`, or copy it "
            "again) or re-export the checkpoint"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint sidecar {sidecar} holds a {type(meta).__name__}, not a JSON object")
    return meta


def load_checkpoint(weights: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (nested state, sidecar meta).

    Raises FileNotFoundError naming a missing file, and CheckpointError naming a sidecar that is
    not a JSON object (cut mid-way, edited) or weights that safetensors cannot read (truncated,
    corrupt, not a safetensors file).
    """
    weights = Path(weights)
    sidecar = weights.with_suffix(".json")
    for path in (weights, sidecar):
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} not found")
    meta = load_sidecar(weights)
    try:
        tensors = load_file(str(weights), device=str(device))
    except Exception as err:  # safetensors raises SafetensorError, OSError or its own ValueError
        raise CheckpointError(
            f"checkpoint weights {weights} cannot be read ({type(err).__name__}: {err}; "
            f"{weights.stat().st_size} bytes): the file is truncated, corrupt or not a "
            "safetensors file. Restore it (`dvc checkout`, or copy it again) or re-export "
            "it"
        ) from None
    return unflatten_state(tensors, meta.pop("state_extra", {})), meta


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], weights: str | Path, what: str) -> None:
    """``module.load_state_dict(state)``; a mismatch raises CheckpointError naming the file and
    the architecture (``what``) its sidecar described."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        detail = str(err).strip().splitlines()
        raise CheckpointError(
            f"{weights}: its weights do not fit the {what} that its sidecar describes "
            f"({' '.join(detail[:3])[:400]}): it was written by another version of the code "
            "or its files were mixed up; re-export it"
        ) from None


def latest_checkpoint(folder: str | Path) -> Path | None:
    """Newest checkpoint in `folder` that has its sidecar (i.e. was completely written)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _NAME.match(p.name)) and p.with_suffix(".json").is_file()
    )
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


def changed_keys(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """'key: old -> new' for every key whose value differs (a run's trajectory params)."""
    if old is None:
        return ["unknown (the earlier checkpoint did not record its params)"]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def set_aside(run_dir: str | Path, stage: str, changes: list[str]) -> Path | None:
    """Move an earlier run's folder (checkpoints, curves, panels) aside as ``<name>.old-<UTC time>``
    instead of deleting it, and log which params changed. Returns the new path (None: nothing there).

    A run that cannot resume (its trajectory params or data differ) never destroys the hours of
    training it holds: rename it back, with its params, to continue it.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    dest, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}"), 1
    while dest.exists():
        dest, n = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}"), n + 1
    run_dir.rename(dest)
    log.warning(
        "%s: %s holds a run with other params (%s); moved aside to %s, nothing deleted. To continue "
        "that run instead, restore its params and rename the folder back.",
        stage,
        run_dir,
        "; ".join(changes) or "none recorded",
        dest,
    )
    return dest


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` ``ckpt-*`` checkpoints (weights and sidecar) of a run."""
    for old in sorted(Path(folder).glob("ckpt-*.safetensors"))[:-keep]:
        old.unlink()
        old.with_suffix(".json").unlink(missing_ok=True)
