"""`facesem inspect`: artifacts at any git revision or `dvc exp`, summaries, exports, diffs.

A `Source` is one version of the repository: the work tree (read from disk), or a git
revision / `dvc exp` name read through DVC's fsspec file system (`dvc.api.DVCFileSystem`):
nothing is checked out and the work tree is never touched. Zarr stores are opened from it
through `zarr.storage.FsspecStore`; statistics are computed block by block along the first
axis, so a large array is never loaded at once.

The functions return plain values or pandas tables; `pipeline.cli.cmd_inspect` prints them.
Errors are `InspectError` (a ValueError) or `IncompleteArtifactError`, each naming the
artifact, array or revision at fault.
"""

from __future__ import annotations

import asyncio
import json
import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from store.artifacts import IncompleteArtifactError

WORKSPACE = "workspace"  # a revision name meaning the work tree (as in `dvc metrics show`)
ARTIFACT_GLOB = "data/*.zarr"
METRICS_GLOB = "data/metrics/*.json"
PARAMS_FILE = "params.yaml"
BLOCK_BYTES = 64 * 2**20  # statistics read at most about this much at a time
PROVENANCE_KEYS = ("stage", "params_hash", "complete", "git_rev", "created")


class InspectError(ValueError):
    """A clear, user-facing error: an unknown artifact, array or revision, a bad export."""


# ---------------------------------------------------------------- versions of the repository


@dataclass
class Source:
    """The work tree (`rev` None) or one revision read through DVCFileSystem (`fs`)."""

    root: Path
    rev: str | None = None
    sha: str | None = None
    fs: Any = None
    _async_fs: Any = None

    @property
    def label(self) -> str:
        if self.rev is None:
            return "work tree"
        if self.sha and not self.sha.startswith(self.rev):
            return f"{self.rev} ({self.sha[:7]})"
        return self.rev

    def _local(self, rel: str) -> Path:
        return self.root / rel  # an absolute `rel` stays itself

    def glob(self, pattern: str) -> list[str]:
        if self.fs is None:
            return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob(pattern))
        return sorted(p.lstrip("/") for p in self.fs.glob(pattern))

    def isdir(self, rel: str) -> bool:
        return self._local(rel).is_dir() if self.fs is None else self.fs.isdir(rel)

    def read_text(self, rel: str) -> str | None:
        """A text file of this version; None when it does not exist there."""
        if self.fs is None:
            path = self._local(rel)
            return path.read_text() if path.is_file() else None
        if not self.fs.isfile(rel):
            return None
        with self.fs.open(rel, "r") as handle:
            return handle.read()

    def zarr_store(self, rel: str):
        if self.fs is None:
            return zarr.storage.LocalStore(self._local(rel), read_only=True)
        if self._async_fs is None:
            # zarr reads through an async file system; fsspec's wrapper runs each call of the
            # sync DVCFileSystem in a worker thread. DVCFileSystem is not safe for concurrent
            # calls (measured: on a fresh DVC index, about 1 run in 4 lost an array's metadata),
            # so the calls go one at a time.
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            self._async_fs = AsyncFileSystemWrapper(self.fs, asynchronous=True, semaphore=asyncio.Semaphore(1))
        return zarr.storage.FsspecStore(self._async_fs, path=rel, read_only=True)

    def token(self, rel: str) -> str | None:
        """DVC's content hash of `rel` at this revision (equal hashes: equal contents)."""
        if self.fs is None:
            return None
        try:
            return self.fs.info(rel).get("dvc_info", {}).get("md5")
        except Exception:  # noqa: BLE001  (a hash is an optimisation only)
            return None


def resolve_revision(root: Path, rev: str) -> str:
    """The commit of a git revision (sha, branch, tag, HEAD~1...) or of a `dvc exp` name."""
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError
    from scmrepo.git import Git

    try:
        scm = Git(str(root))
    except (SCMError, DvcException) as err:
        raise InspectError(f"cannot read revision {rev!r}: {root} is not a git repository ({err})") from None
    try:
        try:
            return scm.resolve_rev(rev)
        except SCMError:
            pass
        from dvc.repo.experiments.utils import resolve_name

        try:
            ref = resolve_name(scm, rev).get(rev)
        except (SCMError, DvcException) as err:  # e.g. an ambiguous experiment name
            raise InspectError(f"revision {rev!r}: {err}") from None
        if ref is None:
            raise InspectError(
                f"unknown revision {rev!r}: neither a git revision nor a `dvc exp` "
                f"name in {root} (see `git log`, `dvc exp list`)"
            )
        return scm.get_ref(str(ref))
    finally:
        scm.close()


def open_source(root: Path, rev: str | None = None) -> Source:
    """The work tree for `rev` None or 'workspace', else that revision through DVC."""
    root = Path(root)
    if rev is None or rev == WORKSPACE:
        return Source(root)
    from dvc.api import DVCFileSystem

    sha = resolve_revision(root, rev)
    return Source(root, rev, sha, DVCFileSystem(str(root), rev=sha))


# ---------------------------------------------------------------- artifacts and arrays


def split_address(address: str, root: Path | None = None) -> tuple[str, str | None]:
    """'ARTIFACT[/ARRAY]' -> (store path relative to the root, array path or None).

    faces, faces.zarr, data/faces.zarr -> data/faces.zarr; faces/images, faces.zarr/images,
    data/faces.zarr/gt/depth -> the store and the array inside it. An absolute path inside
    `root` becomes relative; one outside it stays absolute (work tree only).
    """
    text = address.strip()
    if not text:
        raise InspectError("empty artifact name")
    if root is not None and Path(text).is_absolute():
        try:
            text = Path(text).relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    absolute = text.startswith("/")
    parts = [p for p in posixpath.normpath(text).split("/") if p]
    for i, part in enumerate(parts):
        if part.endswith(".zarr"):
            store, inner = parts[: i + 1], parts[i + 1 :]
            break
    else:
        store, inner = [parts[0] + ".zarr"], parts[1:]
    if len(store) == 1 and not absolute:
        store = ["data", *store]
    return ("/" if absolute else "") + "/".join(store), ("/".join(inner) or None)


def list_artifacts(source: Source) -> list[str]:
    """The stores under data/ in this version."""
    return [p for p in source.glob(ARTIFACT_GLOB) if source.isdir(p)]


def open_artifact(source: Source, rel: str, require_complete: bool = True) -> zarr.Group:
    """Open a store of this version read-only; refuse an unknown, unreadable or incomplete one."""
    try:
        exists = source.isdir(rel)
    except Exception as err:  # noqa: BLE001  (DVC raises several types)
        raise InspectError(f"artifact {rel} at {source.label} cannot be read: {err}") from None
    if not exists:
        known = ", ".join(list_artifacts(source)) or "none"
        raise InspectError(f"unknown artifact {rel!r} at {source.label} (artifacts there: {known})")
    try:
        group = zarr.open_group(source.zarr_store(rel), mode="r")
    except Exception as err:  # noqa: BLE001  (zarr and DVC raise several types)
        hint = "" if source.fs is None else " (are its data in the local DVC cache? `dvc fetch`)"
        raise IncompleteArtifactError(
            f"artifact {rel} at {source.label} is not a readable Zarr group{hint}: {err}"
        ) from None
    if require_complete and group.attrs.get("complete") is not True:
        raise IncompleteArtifactError(
            f"artifact {rel} at {source.label} is incomplete (no 'complete: true' attribute; written "
            f"by stage {group.attrs.get('stage', '?')!r}): it was interrupted; re-run that stage"
        )
    return group


def iter_arrays(group: zarr.Group) -> list[tuple[str, zarr.Array]]:
    """Every array of a store, nested ones as 'gt/depth', sorted by name."""
    arrays = [(name, node) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)]
    return sorted(arrays, key=lambda kv: kv[0])


def select_arrays(group: zarr.Group, name: str | None, where: str) -> list[tuple[str, zarr.Array]]:
    """All arrays, one array, or the arrays of one subgroup; unknown names fail clearly."""
    arrays = iter_arrays(group)
    if name is None:
        return arrays
    chosen = [(n, a) for n, a in arrays if n == name or n.startswith(name.rstrip("/") + "/")]
    if not chosen:
        known = ", ".join(n for n, _ in arrays) or "none"
        raise InspectError(f"unknown array {name!r} in {where} (arrays there: {known})")
    return chosen


def get_array(group: zarr.Group, name: str, where: str) -> zarr.Array:
    for n, arr in select_arrays(group, name, where):
        if n == name:
            return arr
    raise InspectError(f"{name!r} in {where} is a group, not an array: name one of its arrays")


# ---------------------------------------------------------------- statistics, block-wise


def is_numeric(arr: zarr.Array) -> bool:
    try:
        dtype = np.dtype(arr.dtype)
    except TypeError:
        return False
    return dtype.kind in "biuf"


def iter_blocks(arr: zarr.Array, budget: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
    """The array in slices along axis 0, whole chunks at a time, about `budget` bytes each
    once converted to float64."""
    if arr.ndim == 0:
        yield np.asarray(arr[()])
        return
    row_bytes = max(1, math.prod(arr.shape[1:]) * max(8, np.dtype(arr.dtype).itemsize))  # as float64
    chunk = max(1, arr.chunks[0])
    step = max(chunk, budget // row_bytes // chunk * chunk)
    for start in range(0, arr.shape[0], step):
        yield np.asarray(arr[start : start + step])


def array_stats(arr: zarr.Array, budget: int = BLOCK_BYTES) -> dict[str, float]:
    """min, max, mean, std over the finite values and the count of non-finite ones, read
    block by block (Chan's parallel merge of count, mean and squared deviations)."""
    nan = float("nan")
    if not is_numeric(arr) or arr.size == 0:
        return {"min": nan, "max": nan, "mean": nan, "std": nan, "nonfinite": 0}
    n, mean, m2, lo, hi, bad = 0, 0.0, 0.0, math.inf, -math.inf, 0
    for block in iter_blocks(arr, budget):
        x = block.astype(np.float64, copy=False).ravel()
        finite = np.isfinite(x)
        if not finite.all():
            bad += int(x.size - finite.sum())
            x = x[finite]
        if x.size == 0:
            continue
        nb, mb = x.size, float(x.mean())
        m2b = float(np.square(x - mb).sum())
        delta, total = mb - mean, n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    if n == 0:
        return {"min": nan, "max": nan, "mean": nan, "std": nan, "nonfinite": bad}
    return {"min": lo, "max": hi, "mean": mean, "std": math.sqrt(m2 / n), "nonfinite": bad}


# ---------------------------------------------------------------- listing and summary


def artifact_rows(rel: str, group: zarr.Group) -> list[dict[str, Any]]:
    """One listing row per array: shape, dtype, chunks, stored size, producing stage, params
    hash, completeness (the columns of `store.artifacts.summarize`)."""
    attrs = dict(group.attrs)
    return [
        {
            "artifact": Path(rel).name,
            "array": name,
            "shape": tuple(arr.shape),
            "dtype": str(arr.dtype),
            "chunks": tuple(arr.chunks),
            "stored_mb": round(int(arr.nbytes_stored()) / 2**20, 2),
            "stage": attrs.get("stage"),
            "params_hash": attrs.get("params_hash"),
            "complete": attrs.get("complete") is True,
        }
        for name, arr in iter_arrays(group)
    ]


def listing(source: Source) -> tuple[pd.DataFrame, list[str]]:
    """All artifacts of a version, one row per array, and the errors of unreadable stores
    (each of those gets one '(unreadable)' row)."""
    rows, errors = [], []
    for rel in list_artifacts(source):
        try:
            rows.extend(artifact_rows(rel, open_artifact(source, rel, require_complete=False)))
        except (InspectError, IncompleteArtifactError) as err:
            rows.append({"artifact": Path(rel).name, "array": "(unreadable)", "complete": False})
            errors.append(str(err))
    return pd.DataFrame(rows), errors


def summarize_arrays(arrays: list[tuple[str, zarr.Array]]) -> pd.DataFrame:
    """shape, dtype, chunks and block-wise min / max / mean / std per array."""
    return pd.DataFrame(
        [
            {
                "array": name,
                "shape": tuple(arr.shape),
                "dtype": str(arr.dtype),
                "chunks": tuple(arr.chunks),
                **array_stats(arr),
            }
            for name, arr in arrays
        ]
    )


def summary(source: Source, address: str) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """(provenance attrs, per-array table, the attrs of the array named, if one) of a store."""
    rel, name = split_address(address, source.root)
    where = f"{rel} at {source.label}"
    group = open_artifact(source, rel)
    arrays = select_arrays(group, name, where)
    attrs = {key: group.attrs.get(key) for key in PROVENANCE_KEYS}
    array_attrs = dict(arrays[0][1].attrs) if name is not None and len(arrays) == 1 else {}
    return attrs, summarize_arrays(arrays), array_attrs


# ---------------------------------------------------------------- exports


def grid_images(arr: zarr.Array, rows: int, where: str) -> np.ndarray:
    """The first `rows` images of a uint8 [N, 3, H, W] (or [N, 1, H, W]) array."""
    if np.dtype(arr.dtype) != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise InspectError(
            f"{where} is {arr.dtype} {tuple(arr.shape)}: a PNG export needs uint8 "
            "images [N, 3, H, W]; export other arrays to .csv"
        )
    images = np.asarray(arr[:rows])
    return np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images


def export_png(
    arr: zarr.Array, out: str | Path, rows: int | None, where: str, zoom: int = 1, ncols: int | None = None
) -> str:
    from store.images import save_grid

    images = grid_images(arr, rows or 16, where)
    ncols = ncols or math.ceil(math.sqrt(len(images)))
    path = save_grid(images, out, ncols=ncols, scale=zoom)
    from PIL import Image

    with Image.open(path) as im:
        size = im.size
    return f"{path}: {len(images)} images of {where}, {ncols} per row, {size[0]}x{size[1]} px"


def csv_table(arr: zarr.Array, rows: int | None, name: str, where: str) -> pd.DataFrame:
    """The first `rows` rows of a 1-D or 2-D array, named by its `rows` / `columns` attrs."""
    if arr.ndim not in (1, 2):
        raise InspectError(
            f"{where} has shape {tuple(arr.shape)}: a CSV export needs a 1-D or 2-D array (images: export to .png)"
        )
    data = np.asarray(arr[:rows] if rows else arr[:])
    attrs = dict(arr.attrs)
    if arr.ndim == 1:
        columns = [posixpath.basename(name)]
        data = data[:, None]
    else:
        columns = list(attrs.get("columns") or [])
        if len(columns) != arr.shape[1]:
            columns = list(range(arr.shape[1]))
    names = list(attrs.get("rows") or [])
    index = names[: len(data)] if len(names) == arr.shape[0] else list(range(len(data)))
    return pd.DataFrame(data, columns=columns, index=pd.Index(index, name="row"))


def export(source: Source, address: str, out: str | Path, rows: int | None = None, zoom: int = 1) -> str:
    """Write ARTIFACT/ARRAY of this version to `out` (.png grid or .csv); returns a summary line."""
    if rows is not None and rows < 1:
        raise InspectError(f"--rows must be at least 1, not {rows}")
    rel, name = split_address(address, source.root)
    if name is None:
        raise InspectError(f"--export needs an array: ARTIFACT/ARRAY, e.g. {Path(rel).stem}/images")
    where = f"{rel}/{name} at {source.label}"
    arr = get_array(open_artifact(source, rel), name, f"{rel} at {source.label}")
    suffix = Path(out).suffix.lower()
    if suffix == ".png":
        return export_png(arr, out, rows, where, zoom)
    if suffix == ".csv":
        table = csv_table(arr, rows, name, where)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out)
        return f"{out}: {len(table)} rows x {table.shape[1]} columns of {where}"
    raise InspectError(f"--export {out}: unknown format {suffix or '(none)'!r}; use .png or .csv")


# ---------------------------------------------------------------- diffs between two versions


ABSENT = "(absent)"


def flatten(obj: Any, prefix: str = "", lists: bool = True) -> dict[str, Any]:
    """Nested dicts (and lists, unless `lists` is False) -> {'a.b[0]': leaf}."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key), lists))
        return out
    if isinstance(obj, list) and lists:
        out = {}
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}[{i}]", lists))
        return out
    return {prefix: obj}


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def params_diff(old: dict, new: dict) -> pd.DataFrame:
    """The params keys whose values differ ('(absent)' on the side that lacks the key)."""
    a, b = flatten(old or {}, lists=False), flatten(new or {}, lists=False)
    rows = [
        {"key": key, "old": a.get(key, ABSENT), "new": b.get(key, ABSENT)}
        for key in sorted(a.keys() | b.keys())
        if a.get(key, ABSENT) != b.get(key, ABSENT)
    ]
    return pd.DataFrame(rows, columns=["key", "old", "new"])


def metrics_diff(old: dict[str, dict], new: dict[str, dict]) -> pd.DataFrame:
    """Changed numeric leaves of the metrics files {file: payload}: old, new, new - old."""
    rows = []
    for file in sorted(old.keys() | new.keys()):
        a = {k: v for k, v in flatten(old.get(file, {})).items() if is_number(v)}
        b = {k: v for k, v in flatten(new.get(file, {})).items() if is_number(v)}
        for key in sorted(a.keys() | b.keys()):
            va, vb = a.get(key), b.get(key)
            both_nan = va is not None and vb is not None and math.isnan(va) and math.isnan(vb)
            if (va == vb or both_nan) and (key in a) == (key in b):
                continue
            delta = vb - va if va is not None and vb is not None else None
            rows.append({"file": file, "key": key, "old": va, "new": vb, "delta": delta})
    return pd.DataFrame(rows, columns=["file", "key", "old", "new", "delta"])


def read_params(source: Source) -> dict:
    import yaml

    text = source.read_text(PARAMS_FILE)
    return (yaml.safe_load(text) or {}) if text is not None else {}


def read_metrics(source: Source) -> dict[str, dict]:
    out = {}
    for rel in source.glob(METRICS_GLOB):
        text = source.read_text(rel)
        if text is not None:
            try:
                out[Path(rel).name] = json.loads(text)
            except json.JSONDecodeError as err:
                raise InspectError(f"metrics file {rel} at {source.label} is not valid JSON: {err}") from None
    return out


def artifact_stats(
    source: Source, rel: str, name: str | None = None, cache: dict | None = None
) -> dict[str, dict[str, Any]]:
    """{array: {shape, mean, std}} of one store; `cache` reuses results by DVC content hash."""
    key = (source.token(rel), name)
    if cache is not None and key[0] is not None and key in cache:
        return cache[key]
    group = open_artifact(source, rel)
    stats = {
        n: {"shape": tuple(a.shape), **{k: v for k, v in array_stats(a).items() if k in ("mean", "std")}}
        for n, a in select_arrays(group, name, f"{rel} at {source.label}")
    }
    if cache is not None and key[0] is not None:
        cache[key] = stats
    return stats


def arrays_diff(old: dict[str, dict], new: dict[str, dict]) -> pd.DataFrame:
    """{artifact: {array: stats}} at two versions -> shape change, mean and std of each array."""
    rows, nan = [], float("nan")
    for artifact in sorted(old.keys() & new.keys()):
        a, b = old[artifact], new[artifact]
        for name in sorted(a.keys() | b.keys()):
            sa, sb = a.get(name, {}), b.get(name, {})
            row = {
                "artifact": Path(artifact).name,
                "array": name,
                "old_shape": sa.get("shape"),
                "new_shape": sb.get("shape"),
                "old_mean": sa.get("mean", nan),
                "new_mean": sb.get("mean", nan),
                "old_std": sa.get("std", nan),
                "new_std": sb.get("std", nan),
            }
            same = sa == sb or (
                sa.get("shape") == sb.get("shape")
                and all(
                    np.isclose(sa.get(k, nan), sb.get(k, nan), rtol=1e-12, atol=0, equal_nan=True)
                    for k in ("mean", "std")
                )
            )
            row["changed"] = "" if same else "*"
            rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            "artifact",
            "array",
            "old_shape",
            "new_shape",
            "old_mean",
            "new_mean",
            "old_std",
            "new_std",
            "changed",
        ],
    )


@dataclass
class Diff:
    old: str
    new: str
    params: pd.DataFrame
    metrics: pd.DataFrame
    arrays: pd.DataFrame
    notes: list[str]


def diff(root: Path, rev1: str, rev2: str, address: str | None = None) -> Diff:
    """params, metrics and array statistics of two versions (`address`: one artifact / array)."""
    a, b = open_source(root, rev1), open_source(root, rev2)
    notes: list[str] = []
    if address is not None:
        rel, name = split_address(address, root)
        missing = [s.label for s in (a, b) if not s.isdir(rel)]
        if len(missing) == 2:
            raise InspectError(f"unknown artifact {rel!r} at both {a.label} and {b.label}")
        artifacts = [rel]
    else:
        name, found_a, found_b = None, set(list_artifacts(a)), set(list_artifacts(b))
        artifacts = sorted(found_a & found_b)
        for only, src in ((found_a - found_b, a), (found_b - found_a, b)):
            if only:
                notes.append(f"only at {src.label}: {', '.join(sorted(only))}")
    stats: tuple[dict, dict] = ({}, {})
    cache: dict = {}
    for rel in artifacts:
        per = []
        for src in (a, b):
            try:
                per.append(artifact_stats(src, rel, name, cache))
            except (InspectError, IncompleteArtifactError) as err:
                notes.append(str(err))
                per.append(None)
        if None not in per:
            stats[0][rel], stats[1][rel] = per
    return Diff(
        a.label,
        b.label,
        params_diff(read_params(a), read_params(b)),
        metrics_diff(read_metrics(a), read_metrics(b)),
        arrays_diff(*stats),
        notes,
    )


# ---------------------------------------------------------------- text


def table_text(table: pd.DataFrame) -> str:
    with pd.option_context(
        "display.width",
        250,
        "display.max_columns",
        30,
        "display.max_colwidth",
        60,
        "display.float_format",
        "{:.6g}".format,
    ):
        return table.to_string(index=False)


def listing_text(source: Source) -> str:
    table, errors = listing(source)
    if table.empty:
        where = "data/" if source.rev is None else f"data/ at {source.label}"
        return f"no artifacts under {where} yet: run `facesem run`"
    head = "" if source.rev is None else f"artifacts at {source.label}\n"
    return head + table_text(table) + "".join(f"\nnote: {error}" for error in errors)


def summary_text(source: Source, address: str) -> str:
    attrs, table, array_attrs = summary(source, address)
    rel, _ = split_address(address, source.root)
    lines = [f"{rel} at {source.label}"]
    lines += [f"  {key:<12} {attrs[key]}" for key in PROVENANCE_KEYS]
    for key, value in array_attrs.items():
        text = json.dumps(value)
        lines.append(f"  {key:<12} {text if len(text) <= 120 else text[:117] + '...'}")
    return "\n".join(lines) + "\n" + table_text(table)


def diff_text(result: Diff) -> str:
    out = [f"old = {result.old}, new = {result.new}", "", f"params ({len(result.params)} changed)"]
    out.append(table_text(result.params) if len(result.params) else "  (no change)")
    out += ["", f"metrics ({METRICS_GLOB}, {len(result.metrics)} numeric values changed)"]
    out.append(table_text(result.metrics) if len(result.metrics) else "  (no change)")
    out += ["", "arrays (shape, mean, std; * = changed)"]
    out.append(table_text(result.arrays) if len(result.arrays) else "  (no artifact at both)")
    out += [f"note: {note}" for note in result.notes]
    return "\n".join(out)
