"""The landmark oracle (support/landmark_oracle.py) against ground truth: synthetic faces rendered
with known pose, as the real-photo issue's validation asks.

    .venv/bin/python benchmarks/landmark_oracle.py [--faces 200] [--size 128] [--pose wide] [--fov 10]
        [--detector hog|cnn|hog+cnn|mediapipe] [--no-equalize] [--json]

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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.landmark_oracle import POSE_NAMES, LandmarkPoseOracle, validate  # noqa: E402
from support.landmarks import DETECTOR_KINDS, make_detector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pose", default="wide", choices=("frontal", "wide"))
    parser.add_argument("--detector", default="hog", choices=DETECTOR_KINDS)
    parser.add_argument(
        "--fov", type=float, default=None, help="camera field of view in degrees (the renders': 10); default f = width"
    )
    parser.add_argument(
        "--no-equalize", action="store_true", help="dlib: detect on the render itself, not a CLAHE copy"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    detector = make_detector(args.detector, equalize=not args.no_equalize)
    res = validate(LandmarkPoseOracle(detector, args.fov), args.faces, args.size, args.pose)
    res["detector"], res["equalize"] = args.detector, not args.no_equalize
    res["seconds"] = round(time.perf_counter() - start, 1)
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
