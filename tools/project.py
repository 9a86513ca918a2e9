"""`facesem project PHOTO... --out FILE`: photos -> latents of the pipeline's generator.

Each photo is FFHQ-aligned (its largest face; `align=False` takes a centre square instead,
e.g. for generations), resized to the generator's side and projected (support.projection).
A photo that cannot be used is skipped and listed with the reason; the rest go on.

Output: FILE.zarr (w or ws, the noise maps when asked, distances, PSNR, names, params) or
FILE.npy (w [n, w_dim] for space w, ws [n, num_ws, w_dim] for w+) with FILE.json beside it,
and FILE.png: target | reconstruction pairs, one row per photo.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from store.artifacts import open_store, temporary_path, write_json, write_store
from store.images import save_grid, signed_to_uint8
from support.generators import LatentGenerator
from support.params import ProjectParams
from support.projection import Projected, project_images, read_targets, to_generator_input

SUFFIXES = (".zarr", ".npy")


def check_output(out: Path, save_noise: bool, inputs: list[Path] = ()) -> None:
    """ValueError unless `out` is a .zarr or .npy latents file (and a .zarr when noise maps are kept),
    or when a file it writes (FILE.zarr / .npy, .json, .png) would replace one of the input photos
    (a file named in `inputs`, or an existing file inside a folder named there)."""
    if out.suffix not in SUFFIXES:
        raise ValueError(f"--out must end in .zarr or .npy, got {out.name!r}")
    if save_noise and out.suffix != ".zarr":
        raise ValueError("the noise maps (--save-noise) need a .zarr output (--out FILE.zarr)")
    for written in (out, out.with_suffix(".json"), out.with_suffix(".png")):
        if overwrites_input(written, inputs):
            raise ValueError(f"--out {out} would write {written} over an input photo; choose another --out")


def overwrites_input(written: Path, inputs: list[Path]) -> bool:
    """Whether writing `written` would replace an input photo: a file named in `inputs`, or an
    existing file inside a folder named there."""
    target = Path(written).resolve()
    sources = [Path(p).resolve() for p in inputs]
    return any(target == p or (p.is_dir() and target.is_relative_to(p) and target.exists()) for p in sources)


def read_and_project(
    gen: LatentGenerator, inputs: list[Path], params: ProjectParams, align: bool
) -> tuple[list[str], np.ndarray, Projected, list]:
    """Photos -> (names, uint8 targets [n, 3, r, r] at the generator's side r, their projection,
    skipped [(file, reason)]). ValueError naming every reason when no photo is usable."""
    names, images, skipped = read_targets(inputs, gen.resolution, align)
    if not names:
        reasons = "; ".join(f"{f}: {r}" for f, r in skipped) or "no image files"
        raise ValueError(f"no usable photo to project ({reasons})")
    return names, images, project_images(gen, to_generator_input(images, gen.resolution), params), skipped


def latents_of(projected: Projected, space: str) -> np.ndarray:
    """w [n, w_dim] for space w, ws [n, num_ws, w_dim] for w+ (float32)."""
    ws = projected.ws.numpy().astype(np.float32)
    return ws[:, 0] if space == "w" else ws


def write_latents(
    out: Path, names: list[str], projected: Projected, params: ProjectParams, generator: str, skipped: list
) -> dict:
    """Write the latents (.zarr, or .npy + FILE.json); returns the summary. ValueError (`check_output`)
    for another suffix, or noise maps bound for a .npy."""
    check_output(out, bool(projected.noise))
    w = latents_of(projected, params.space)
    summary = {
        "generator": str(generator),
        "names": names,
        "space": params.space,
        "distance_kind": params.distance,
        "perceptual_distance": [round(float(d), 6) for d in projected.distance],
        "psnr_db_per_image": [round(float(p), 3) for p in projected.psnr_db],
        "skipped": [{"file": f, "reason": r} for f, r in skipped],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".zarr":
        with write_store(out, "project", params.model_dump(), "", **summary) as group:
            group.create_array("w", data=w)
            group.create_array("perceptual_distance", data=projected.distance.astype(np.float32))
            group.create_array("psnr_db", data=projected.psnr_db.astype(np.float32))
            for k, maps in enumerate(projected.noise.values()):
                group.create_array(f"noise/{k}", data=maps.astype(np.float32))
            group.attrs["noise_buffers"] = list(projected.noise)  # noise/k is synthesis buffer k of this list
    else:
        tmp = temporary_path(out)
        with tmp.open("wb") as fh:
            np.save(fh, w)
        tmp.replace(out)
        write_json(out.with_suffix(".json"), {**summary, "params": params.model_dump()})
    return summary


def read_latents(path: str | Path) -> tuple[torch.Tensor, list[str], dict[str, np.ndarray]]:
    """A `facesem project` output -> (ws [n, w_dim] or [n, num_ws, w_dim], names, the noise maps
    {synthesis buffer name: [n, r, r]} when it holds them, else {}).

    Raises FileNotFoundError for a missing file, ValueError for an unknown suffix or shape."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"latents {path} not found (write them with `facesem project`)")
    if path.suffix == ".zarr":
        group = open_store(path)
        w, names = np.asarray(group["w"][...]), list(group.attrs["names"])
        noise = {n: np.asarray(group[f"noise/{k}"][...]) for k, n in enumerate(group.attrs.get("noise_buffers", []))}
    elif path.suffix == ".npy":
        try:
            w, noise = np.load(path, allow_pickle=False), {}
        except (ValueError, OSError, EOFError) as err:  # truncated or not an array
            raise ValueError(f"{path}: not a readable .npy of latents ({err})") from None
        sidecar = path.with_suffix(".json")
        names = (
            json.loads(sidecar.read_text())["names"]
            if sidecar.is_file()
            else [f"{path.stem}_{i}" for i in range(len(w))]
        )
    else:
        raise ValueError(f"latents must be a .zarr or .npy file from `facesem project`, got {path.name!r}")
    if w.ndim not in (2, 3) or not len(w) or not np.isfinite(w).all():
        raise ValueError(f"{path}: w must be finite [n >= 1, w_dim] or [n, num_ws, w_dim], got shape {list(w.shape)}")
    return torch.from_numpy(w.astype(np.float32)), names, noise


def check_latents(ws: torch.Tensor, gen: LatentGenerator, path: str | Path) -> None:
    """ValueError naming the file when latents ws [n, w_dim] / [n, num_ws, w_dim] do not fit `gen`."""
    want = [gen.w_dim] if ws.ndim == 2 else [gen.num_ws, gen.w_dim]
    if list(ws.shape[1:]) != want:
        raise ValueError(
            f"{path}: latents of shape {list(ws.shape)} do not fit this generator (w_dim {gen.w_dim}, "
            f"num_ws {gen.num_ws}): were they projected with another one? (--generator)"
        )


def project_photos(
    gen: LatentGenerator,
    generator_path: str,
    inputs: list[Path],
    out: Path,
    params: ProjectParams,
    align: bool = True,
    save_noise: bool = False,
) -> dict:
    """Read, project and write (see the module doc). Returns the summary with psnr_db (mean),
    perceptual_distance (mean), steps, seconds, n, skipped. ValueError when no photo is usable."""
    check_output(out, save_noise, inputs)  # before minutes of work
    names, images, projected, skipped = read_and_project(gen, inputs, params, align)
    if not save_noise:
        projected.noise = {}
    write_latents(out, names, projected, params, generator_path, skipped)
    pairs = np.stack([images, signed_to_uint8(projected.images)], 1).reshape(-1, *images.shape[1:])
    png = save_grid(pairs, out.with_suffix(".png"), ncols=2, scale=max(1, 128 // gen.resolution))
    return {
        "out": str(out),
        "png": str(png),
        "n": len(names),
        "skipped": len(skipped),
        "psnr_db": round(float(projected.psnr_db.mean()), 3),
        "perceptual_distance": round(float(projected.distance.mean()), 6),
        "distance_kind": params.distance,
        "space": params.space,
        "steps": params.steps,
        "seconds": round(projected.seconds, 2),
    }
