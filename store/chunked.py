"""Chunked sample stores that one process or several shards fill (sample_latents, decompose).

A store of n samples is cut into chunks of `chunk` samples along axis 0. A stage supplies
`fill(k) -> {array: values}` for chunk k, depending only on k and the params, so any split
into shards reproduces the single-process store exactly. Modes (`add_shard_args`):

* default: one process, written under a temporary name and renamed when complete;
* `--prepare`: create the store at its final path, marked incomplete, with a `written`
  flag per chunk;
* `--shard i/n`: fill chunks i, i+n, i+2n, ... of a prepared store (any process, any host
  that sees the path);
* `--finalize`: check that every chunk is written, then mark the store complete.

Each chunk's compute time is kept in `chunk_seconds`; the complete store's `seconds` attr is
their sum (worker-seconds when sharded).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from store.artifacts import create_store, mark_complete, write_store

Mode = None | str | tuple[int, int]  # None (single process) | "prepare" | "finalize" | (i, n)


def n_chunks(n: int, chunk: int) -> int:
    return -(-n // chunk)


def run_chunked(
    out: Path,
    stage: str,
    section: dict[str, Any],
    params_hash: str,
    attrs: dict[str, Any],
    layout: Callable[[zarr.Group], None],
    fill: Callable[[int], dict[str, np.ndarray]],
    n: int,
    chunk: int,
    mode: Mode = None,
) -> None:
    """Write (part of) a chunked store; `layout(group)` creates its arrays, `fill(k)` makes chunk k."""
    count = n_chunks(n, chunk)

    def make(group: zarr.Group) -> None:
        layout(group)
        group.create_array("written", shape=(count,), dtype="bool", fill_value=False)
        group.create_array("chunk_seconds", shape=(count,), dtype="float32", fill_value=0.0)

    def write(group: zarr.Group, chunks) -> None:
        chunks = list(chunks)
        total = sum(min(chunk, n - k * chunk) for k in chunks)
        with tqdm(total=total, desc=stage, unit="img") as bar:  # samples/s and ETA, chunk by chunk
            for k in chunks:
                started = time.perf_counter()
                for name, values in fill(k).items():
                    group[name][k * chunk : k * chunk + len(values)] = values
                group["chunk_seconds"][k] = time.perf_counter() - started
                group["written"][k] = True
                bar.update(min(chunk, n - k * chunk))

    def record_seconds(group: zarr.Group) -> None:  # summed over chunks: worker-seconds when sharded
        group.attrs["seconds"] = round(float(group["chunk_seconds"][:].sum()), 2)

    if mode is None:
        with write_store(out, stage, section, params_hash, **attrs) as group:
            make(group)
            write(group, range(count))
            record_seconds(group)
    elif mode == "prepare":
        make(create_store(out, stage, section, params_hash, **attrs))
    elif mode == "finalize":
        group = zarr.open_group(str(out), mode="r+")
        missing = np.flatnonzero(~group["written"][:])
        if missing.size:
            raise RuntimeError(f"{out}: chunks {missing.tolist()} were not written; run their shards")
        record_seconds(group)
        mark_complete(out)
    else:
        i, parts = mode
        group = zarr.open_group(str(out), mode="r+")
        if group.attrs.get("params_hash") != params_hash:
            raise RuntimeError(
                f"{out} was prepared with params hash {group.attrs.get('params_hash')}, "
                f"these params have {params_hash}: run --prepare again"
            )
        write(group, range(i, count, parts))


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must be i/n (two integers), got {text!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard must be i/n with 0 <= i < n, got {text!r}")
    return i, n


def add_shard_args(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--shard", type=_shard, help="i/n: write chunks i, i+n, ... of a prepared store")
    mode.add_argument("--prepare", action="store_true", help="create the empty (incomplete) store")
    mode.add_argument("--finalize", action="store_true", help="check all chunks, mark complete")


def shard_mode(args: argparse.Namespace) -> Mode:
    return "prepare" if args.prepare else "finalize" if args.finalize else args.shard
