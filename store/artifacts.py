"""Zarr v3 artifact stores: provenance attributes, completeness, atomic writes.

Every store a stage writes carries in its attributes the producing `stage`, the
`params_hash` of the params sections it used (and those params), the git revision
`git_rev`, the creation time `created`, and `complete: true`, written last. Readers refuse
a store without it. `write_store` builds the store under a temporary name beside the final
path and renames it into place only after success, so a crash never leaves a half store
under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zarr


class IncompleteArtifactError(RuntimeError):
    """A store exists but was not completely written (no `complete: true` attribute)."""


def git_revision(cwd: str | Path | None = None) -> str:
    """`git rev-parse HEAD` (+ '-dirty' when tracked files are modified); 'unknown' outside git."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def provenance(stage: str, params: dict[str, Any], params_hash: str) -> dict[str, Any]:
    """The attributes every artifact carries, except `complete`."""
    return {
        "stage": stage,
        "params_hash": params_hash,
        "params": json.loads(json.dumps(params)),
        "git_rev": git_revision(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _replace(tmp: Path, final: Path) -> None:
    """Move `tmp` to `final`, replacing what was there; `final` is never half-written."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def temporary_path(final: str | Path) -> Path:
    """A fresh temporary name beside ``final`` (``.NAME.tmp-PID-RANDOM``), after removing the stale
    temporaries of ``final`` that a killed writer left (their PID no longer runs on this host)."""
    final = Path(final)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        pid = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def write_store(
    path: str | Path, stage: str, params: dict[str, Any], params_hash: str, **attrs: Any
) -> Iterator[zarr.Group]:
    """Create a new Zarr group for `stage` and move it to `path` atomically on success.

    Yields the group to fill; extra keyword attributes are stored too. On an exception
    the temporary store is deleted and whatever was at `path` is left untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(final)
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update({**provenance(stage, params, params_hash), **attrs, "complete": False})
        yield group
        group.attrs["complete"] = True  # written last
        _replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def create_store(path: str | Path, stage: str, params: dict[str, Any], params_hash: str, **attrs: Any) -> zarr.Group:
    """Create a store at its final path, marked incomplete, for writers that fill disjoint
    regions (shards) in separate processes; `mark_complete` seals it once all are written."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update({**provenance(stage, params, params_hash), **attrs, "complete": False})
    return group


def mark_complete(path: str | Path) -> None:
    zarr.open_group(str(path), mode="r+").attrs["complete"] = True


def open_store(path: str | Path) -> zarr.Group:
    """Open a store read-only; refuse one that is missing or not marked complete."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"artifact {path} does not exist: run the stage that writes it (`dvc repro` or `facesem run`)"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as err:  # zarr raises several types for a broken store
        raise IncompleteArtifactError(f"artifact {path} is not a readable Zarr group: {err}") from err
    if group.attrs.get("complete") is not True:
        raise IncompleteArtifactError(
            f"artifact {path} is incomplete (no 'complete: true' attribute; written by stage "
            f"{group.attrs.get('stage', '?')!r}): it was interrupted; re-run that stage"
        )
    return group


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically (metrics, reports)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def summarize(path: str | Path) -> list[dict[str, Any]]:
    """One row per array of a store: name, shape, dtype, chunks, stored bytes, provenance."""
    path = Path(path)
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    rows = []
    for name, arr in sorted(group.arrays(), key=lambda kv: kv[0]):
        rows.append(_row(path, name, arr, attrs))
    for gname, sub in sorted(group.groups(), key=lambda kv: kv[0]):
        for name, arr in sorted(sub.arrays(), key=lambda kv: kv[0]):
            rows.append(_row(path, f"{gname}/{name}", arr, attrs))
    return rows


def _row(path: Path, name: str, arr: zarr.Array, attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "artifact": path.name,
        "array": name,
        "shape": tuple(arr.shape),
        "dtype": str(arr.dtype),
        "chunks": tuple(arr.chunks),
        "stored_bytes": int(arr.nbytes_stored()),
        "stage": attrs.get("stage"),
        "params_hash": attrs.get("params_hash"),
        "complete": attrs.get("complete") is True,
    }


def read_json(path: str | Path) -> dict:
    """A JSON file's object, or {} when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}
