"""The landmark oracle (support/landmark_oracle.py) against ground truth: synthetic faces rendered
with known pose, as the real-photo issue's validation asks.

    .venv/bin/python benchmarks/landmark_oracle.py [--faces 200] [--size 128] [--pose wide] [--json]

Prints detection rates (all faces, and |yaw| <= 45 degrees) and, on the detected faces, Pearson r
and the mean absolute error (degrees) of pitch, yaw and roll; with --json ends with one JSON line
{"n", "size", "pose", "detected", "detected_yaw45", "r": {...}, "mae_deg": {...}, "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import faces as face_model  # noqa: E402
from support.landmark_oracle import POSE_NAMES, LandmarkPoseOracle  # noqa: E402


def validate(n: int, size: int, pose: str, seed: int = 11) -> dict:
    factors = face_model.sample_factors(n, torch.Generator().manual_seed(seed), pose=pose)
    truth = factors[:, [face_model.FACTOR_INDEX[k] for k in POSE_NAMES]].numpy()
    oracle, measured, start = LandmarkPoseOracle(), [], time.perf_counter()
    for lo in range(0, n, 32):
        images, _ = face_model.render_faces(factors[lo : lo + 32], size)
        measured.append(oracle.measure((images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)))
    measured = np.concatenate(measured)
    found = ~np.isnan(measured[:, 0])
    moderate = np.abs(truth[:, 1]) <= 45
    out = {
        "n": n,
        "size": size,
        "pose": pose,
        "detected": round(float(found.mean()), 3),
        "detected_yaw45": round(float(found[moderate].mean()), 3) if moderate.any() else None,
        "r": {},
        "mae_deg": {},
        "truth_std_deg": {},
    }
    for j, name in enumerate(POSE_NAMES):
        a, b = measured[found, j], truth[found, j]
        out["r"][name] = round(float(np.corrcoef(a, b)[0, 1]), 3) if found.sum() > 2 else None
        out["mae_deg"][name] = round(float(np.abs(a - b).mean()), 2) if found.any() else None
        out["truth_std_deg"][name] = round(float(b.std()), 2) if found.any() else None
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pose", default="wide", choices=("frontal", "wide"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    res = validate(args.faces, args.size, args.pose)
    print(
        f"{res['n']} faces at {res['size']} px ({res['pose']}): detected {res['detected']:.0%}, "
        f"{res['detected_yaw45']:.0%} where |yaw| <= 45"
    )
    print(f"{'':6s} {'r':>6s} {'MAE deg':>8s} {'true std':>9s}")
    for name in POSE_NAMES:
        print(f"{name:6s} {res['r'][name]:6.3f} {res['mae_deg'][name]:8.2f} {res['truth_std_deg'][name]:9.2f}")
    if args.json:
        print(json.dumps(res))


if __name__ == "__main__":
    main()
