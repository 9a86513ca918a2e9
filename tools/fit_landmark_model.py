"""Fit the generic 3D face of the landmark oracle: the mean 3D position of the landmarks (dlib's 68,
or MediaPipe Face Mesh's 468) on the project's procedural faces, lifted with their ground-truth
canonical depth.

    .venv/bin/python -m tools.fit_landmark_model [--faces 256] [--size 256] [--seed 7] [--detector hog|mediapipe]

Renders frontal faces with the view at zero (canonical frame = camera frame), finds the
landmarks, reads each landmark's 3D point P = depth(u, v) K^-1 [u, v, 1] off the ground truth
(bilinear depth, the renderer's camera), centres it on the face centre c0 = (0, 0, 1) and
averages over the faces found. Writes support/data/generic_face_68.npy (dlib) or
generic_face_mesh_468.npy (mediapipe) ([N, 3] float64, world units, x right, y down, z away from
the camera) and its provenance .json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models import faces as face_model
from models.renderer import FACE_CENTRE, VIEW_NAMES, intrinsics
from support.landmarks import make_detector

DATA = Path(__file__).resolve().parents[1] / "support" / "data"
OUT = {"hog": DATA / "generic_face_68.npy", "mediapipe": DATA / "generic_face_mesh_468.npy"}


def lift(landmarks: np.ndarray, depth: np.ndarray, size: int, fov_deg: float = 10.0) -> np.ndarray:
    """Landmarks [N, 2] (x, y px) + canonical depth [size, size] -> 3D points [N, 3] minus c0."""
    k = intrinsics(size, fov_deg).double().numpy()
    u, v = landmarks[:, 0], landmarks[:, 1]
    u0, v0 = np.clip(np.floor(u).astype(int), 0, size - 2), np.clip(np.floor(v).astype(int), 0, size - 2)
    du, dv = u - u0, v - v0
    d = (
        depth[v0, u0] * (1 - du) * (1 - dv)
        + depth[v0, u0 + 1] * du * (1 - dv)
        + depth[v0 + 1, u0] * (1 - du) * dv
        + depth[v0 + 1, u0 + 1] * du * dv
    )
    rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], 1)
    return d[:, None] * rays - np.asarray(FACE_CENTRE)


def fit(n_faces: int, size: int, seed: int, detector: str = "hog") -> tuple[np.ndarray, dict]:
    factors = face_model.sample_factors(n_faces, torch.Generator().manual_seed(seed), pose="frontal")
    for name in VIEW_NAMES:
        factors[:, face_model.FACTOR_INDEX[name]] = 0.0
    finder, points = make_detector(detector), []
    for lo in tqdm(range(0, n_faces, 16), desc="fit", unit="batch"):
        images, _, depth, _ = face_model.render_faces(factors[lo : lo + 16], size, return_maps=True)
        photos = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for photo, d in zip(photos, depth.double().numpy()):
            found = finder.faces(photo)
            if found:
                points.append(lift(found[0].landmarks, d, size))
    model = np.mean(points, axis=0)
    info = {
        "what": f"mean 3D position of {'Face Mesh' if detector == 'mediapipe' else 'dlib'}'s landmarks on the "
        "procedural faces (models.faces), minus c0",
        "detector": detector,
        "units": "world units of models.renderer (a 64 px image spans about 0.175 at z = 1); x right, y down, z away",
        "faces_rendered": n_faces,
        "faces_found": len(points),
        "size_px": size,
        "seed": seed,
        "spread_mean": float(np.std(points, axis=0).mean()),
        "command": (
            f"python -m tools.fit_landmark_model --faces {n_faces} --size {size} --seed {seed} --detector {detector}"
        ),
    }
    return model, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=256)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--detector", default="hog", choices=tuple(OUT))
    args = parser.parse_args()
    model, info = fit(args.faces, args.size, args.seed, args.detector)
    out = OUT[args.detector]
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, model)
    out.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{out}: {info['faces_found']} of {info['faces_rendered']} faces")


if __name__ == "__main__":
    main()
