"""`facesem align IN OUT`: FFHQ-align a folder of photos (or single files) into OUT.

Each face is written as OUT/<photo's path in its folder, without suffix>.png (the largest face),
or <name>_<k>.png for every face with `all_faces`; two photos that would share a name (face.jpg
and face.png) keep their suffix in it (face_jpg.png, face_png.png). OUT/align_report.csv lists
every input with its faces and, for those skipped (unreadable, too small, no face), the reason.
One bad file never stops the rest; nothing is written over a photo, and files under OUT are not
read as inputs.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from store.artifacts import temporary_path
from store.images import input_files, read_photo
from support.landmarks import LandmarkDetector, aligned_faces


def output_stems(inputs: list[Path], out: Path) -> list[tuple[Path, Path]]:
    """(photo, output stem relative to `out`) for files and folders (searched recursively for
    jpg/png/webp; files under `out` skipped), unique stems. Raises FileNotFoundError for an input
    that does not exist, ValueError when `out` is an input folder or an output would be a photo."""
    out = out.resolve()
    pairs: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir() and item.resolve() == out:
            raise ValueError(f"OUT {out} is the input folder {item}: the faces would replace the photos")
        found = input_files([item])  # a folder's files under OUT are earlier outputs, not inputs
        pairs += [(f, rel) for f, rel in found if not (item.is_dir() and f.resolve().is_relative_to(out))]
    stems = [rel.with_suffix("") for _, rel in pairs]
    shared = {s for s in stems if stems.count(s) > 1}
    stems = [
        s.with_name(f"{s.name}_{rel.suffix[1:].lower()}") if s in shared else s for s, (_, rel) in zip(stems, pairs)
    ]
    for k, stem in enumerate(stems):  # what is still shared (the same name given twice) gets a counter
        if stems[:k].count(stem):
            stems[k] = stem.with_name(f"{stem.name}_{stems[:k].count(stem) + 1}")
    photos = {f.resolve() for f, _ in pairs}
    for (photo, _), stem in zip(pairs, stems):
        if out / f"{stem}.png" in photos:
            raise ValueError(f"aligning {photo} would write over the photo {out / stem}.png: choose another OUT")
    return [(photo, stem) for (photo, _), stem in zip(pairs, stems)]


def align_photos(inputs: list[Path], out: Path, size: int, all_faces: bool = False, min_size: int = 32) -> dict:
    """Align `inputs` (files, or folders searched recursively for jpg/png/webp) into `out`.

    Returns {"photos", "aligned" (faces written), "skipped" (photos), "report"}. Raises
    FileNotFoundError when an input does not exist, ValueError when `out` is an input folder.
    """
    files = output_stems(inputs, out)
    out.mkdir(parents=True, exist_ok=True)
    detector, rows, written = LandmarkDetector(), [], 0
    for path, stem in tqdm(files, desc="align", unit="photo"):
        try:
            faces = aligned_faces(detector, np.asarray(read_photo(path, min_size), np.uint8), size, all_faces)
        except Exception as err:  # noqa: BLE001  listed, not fatal
            rows.append({"file": str(path), "faces": 0, "written": "", "reason": str(err)})
            continue
        names = []
        for k, face in enumerate(faces):
            target = out / (f"{stem}.png" if not all_faces else f"{stem}_{k}.png")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_path(target)
            Image.fromarray(face.transpose(1, 2, 0)).save(tmp, format="PNG")
            tmp.replace(target)
            names.append(str(target.relative_to(out)))
        written += len(names)
        rows.append({"file": str(path), "faces": len(names), "written": " ".join(names), "reason": ""})
    report = out / "align_report.csv"
    with report.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "faces", "written", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    skipped = sum(1 for r in rows if not r["faces"])
    return {"photos": len(files), "aligned": written, "skipped": skipped, "report": str(report)}
