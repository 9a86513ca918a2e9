"""Stage `faces`: face images and their ground truth -> data/faces.zarr.

`data.source: synthetic` renders procedural 3D faces (models.faces) with the project's
renderer and stores every ground-truth factor as a named column, ground-truth canonical
depth/albedo for the first `data.n_eval` faces and the region masks. `data.source: folder`
ingests a folder of real, roughly aligned face photos into the same layout (no ground
truth) and lists the files it skipped, with the reason, in the report CSV.
"""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models import faces as face_model
from store.artifacts import write_json, write_store
from store.images import Skipped, find_images, load_face_image, read_photo, to_uint8
from support.device import select_device
from support.landmarks import LandmarkDetector, aligned_faces
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.faces")


def run(params: Params, out: Path, report: Path, metrics: Path) -> dict:
    """Write faces.zarr + the ingest report + metrics; returns the metrics."""
    start = time.perf_counter()
    if params.data.source == "synthetic":
        result = write_synthetic(params, out)
        write_report(report, [])
    else:
        result, skipped = ingest_folder(params, out)
        write_report(report, skipped)
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_json(metrics, result)
    return result


def write_synthetic(params: Params, out: Path) -> dict:
    data_params = params.data
    device = select_device(params.device)
    factors = face_model.sample_factors(
        data_params.n_images, torch.Generator().manual_seed(data_params.seed), pose=data_params.pose
    )
    n, res, n_eval = data_params.n_images, data_params.resolution, min(data_params.n_eval, data_params.n_images)
    regions = face_model.region_masks(res)
    with write_store(
        out, "faces", data_params.model_dump(), params.section_hash("data"), source="synthetic", resolution=res, n=n
    ) as group:
        images = group.create_array(
            "images", shape=(n, 3, res, res), chunks=(data_params.chunk, 3, res, res), dtype="uint8"
        )
        group.create_array("factors", data=factors.numpy(), chunks=(data_params.chunk, factors.shape[1]))
        group["factors"].attrs["columns"] = list(face_model.FACTOR_NAMES)
        group.create_array("regions", data=np.stack([m.numpy() for m in regions.values()]))
        group["regions"].attrs["names"] = list(regions)
        gt_depth = group.create_array(
            "gt/depth",
            shape=(n_eval, 1, res, res),  # [n, 1, r, r] like semantics.zarr's depth (albedo: [n, 3, r, r])
            dtype="float32",
            chunks=(min(data_params.chunk, max(n_eval, 1)), 1, res, res),
        )
        gt_albedo = group.create_array(
            "gt/albedo",
            shape=(n_eval, 3, res, res),
            dtype="float32",
            chunks=(min(data_params.chunk, max(n_eval, 1)), 3, res, res),
        )
        with torch.no_grad(), tqdm(total=n, desc="faces", unit="img") as bar:
            for lo in range(0, n, data_params.chunk):  # chunk-aligned writes
                hi = min(lo + data_params.chunk, n)
                block = []
                for b in range(lo, hi, data_params.batch_size):
                    f = factors[b : min(b + data_params.batch_size, hi)].to(device)
                    img, _, depth, albedo = face_model.render_faces(f, res, data_params.asymmetry, return_maps=True)
                    block.append(to_uint8(img))
                    if b < n_eval:
                        e = min(b + len(f), n_eval)
                        gt_depth[b:e] = depth[: e - b, None].cpu().numpy()
                        gt_albedo[b:e] = albedo[: e - b].cpu().numpy()
                    bar.update(len(f))
                images[lo:hi] = np.concatenate(block)
    yaw = factors[:, face_model.FACTOR_NAMES.index("yaw")].numpy()
    return {
        "n_images": n,
        "n_skipped": 0,
        "source": "synthetic",
        "resolution": res,
        "yaw_std_deg": round(float(yaw.std()), 3),
        "frac_abs_yaw_gt_45": round(float((np.abs(yaw) > 45).mean()), 4),
        # every ground-truth factor's spread (pose in degrees): what a GAN trained on it can vary
        "factor_std": {
            n: round(float(s), 4) for n, s in zip(face_model.FACTOR_NAMES, factors.std(0, correction=0).tolist())
        },
    }


def ingest_folder(params: Params, out: Path) -> tuple[dict, list[Skipped]]:
    data_params = params.data
    files = find_images(data_params.path)
    kept, skipped = [], []
    background = tuple(data_params.alpha_background or (0, 0, 0))
    detector = LandmarkDetector() if data_params.align else None
    for path in tqdm(files, desc="ingest", unit="file"):
        try:
            if detector is None:
                kept.append(
                    load_face_image(path, data_params.resolution, data_params.min_size, data_params.crop, background)
                )
            else:  # FFHQ alignment: no face -> skipped with the reason, like any unusable file
                photo = np.asarray(read_photo(path, data_params.min_size, background), dtype=np.uint8)
                kept += aligned_faces(detector, photo, data_params.resolution, data_params.align == "ffhq_all")
        except Exception as err:  # noqa: BLE001  one bad file never stops the stage: it is listed instead
            reason = str(err) if isinstance(err, ValueError) else f"failed: {type(err).__name__}: {err}"
            skipped.append(Skipped(str(path), reason))
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    if not kept:
        raise ValueError(
            f"data.path {data_params.path!r}: no usable images among {len(files)} files "
            f"(suffixes {', '.join(('jpg', 'jpeg', 'png', 'webp'))}; "
            f"{len(skipped)} skipped)"
        )
    images = np.stack(kept)
    with write_store(
        out,
        "faces",
        data_params.model_dump(),
        params.section_hash("data"),
        source="folder",
        resolution=data_params.resolution,
        n=len(images),
    ) as group:
        group.create_array("images", data=images, chunks=(data_params.chunk, *images.shape[1:]))
    return (
        {"n_images": len(images), "n_skipped": len(skipped), "source": "folder", "resolution": data_params.resolution},
        skipped,
    )


def write_report(path: Path, skipped: list[Skipped]) -> None:
    """CSV of the files that could not be used (header only when none)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "reason"])
        writer.writerows((s.path, s.reason) for s in skipped)


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["out", "report", "metrics"])
    print(run(params, Path(args.out), Path(args.report), Path(args.metrics)))


if __name__ == "__main__":
    main()
