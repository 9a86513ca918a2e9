"""`facesem align IN OUT`: FFHQ-align a folder of photos (or single files) into OUT.

Each face is written as OUT/<photo name>.png (the largest face), or <name>_<k>.png for every
face with `all_faces`; OUT/align_report.csv lists every input with its faces and, for those
skipped (unreadable, too small, no face), the reason. One bad file never stops the rest.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from store.artifacts import temporary_path
from store.images import expand_inputs, read_photo
from support.landmarks import LandmarkDetector, aligned_faces


def align_photos(inputs: list[Path], out: Path, size: int, all_faces: bool = False, min_size: int = 32) -> dict:
    """Align `inputs` (files, or folders searched recursively for jpg/png/webp) into `out`.

    Returns {"photos", "aligned" (faces written), "skipped" (photos), "report"}. Raises
    FileNotFoundError when an input does not exist.
    """
    files = expand_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    detector, rows, written = LandmarkDetector(), [], 0
    for path in tqdm(files, desc="align", unit="photo"):
        try:
            faces = aligned_faces(detector, np.asarray(read_photo(path, min_size), np.uint8), size, all_faces)
        except Exception as err:  # noqa: BLE001  listed, not fatal
            rows.append({"file": str(path), "faces": 0, "written": "", "reason": str(err)})
            continue
        names = []
        for k, face in enumerate(faces):
            target = out / (f"{path.stem}.png" if not all_faces else f"{path.stem}_{k}.png")
            tmp = temporary_path(target)
            Image.fromarray(face.transpose(1, 2, 0)).save(tmp, format="PNG")
            tmp.replace(target)
            names.append(target.name)
        written += len(names)
        rows.append({"file": str(path), "faces": len(names), "written": " ".join(names), "reason": ""})
    report = out / "align_report.csv"
    with report.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "faces", "written", "reason"])
        writer.writeheader()
        writer.writerows(rows)
    skipped = sum(1 for r in rows if not r["faces"])
    return {"photos": len(files), "aligned": written, "skipped": skipped, "report": str(report)}
