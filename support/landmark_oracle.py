"""A landmark oracle: head pose (pitch, yaw, roll in degrees) of a face photo from its landmarks
and OpenCV's solvePnP on a generic 3D face, the protocol the paper used for its Table 2 on FFHQ
GANs, which have no labels. The landmarks are dlib's 68 (HOG and/or MMOD CNN detector) or
MediaPipe Face Mesh's 468 (a 3D landmarker, as the paper's; `detector="mediapipe"`). SQPnP (a
global optimum) is used: the iterative solver flipped roll by 180 degrees on some faces.
Measured against ground truth by benchmarks/landmark_oracle.py (README).

The generic face is the mean 3D position of the landmarks on the project's procedural faces
(`tools/fit_landmark_model.py` -> support/data/generic_face_68.npy, generic_face_mesh_468.npy).
The camera is a pinhole with the principal point at the image centre; its focal length comes
from the image width (f = width, a photo of unknown camera: the paper's protocol) or, where the
camera is known, from its field of view (``fov_deg``: the procedural renders use
models.renderer's 10 degrees; with it the validation's pitch r rose from 0.39 to 0.56 and yaw
MAE fell from 6.7 to 4.7 degrees with dlib). The landmarks off the face contour are used (dlib:
the inner 51, brows, nose, eyes, mouth; Face Mesh: all but its 36 oval points): the contour
slides with the view. The angles follow models.renderer's convention: R = Rz(roll) Ry(yaw)
Rx(pitch), positive yaw turns the nose to image left, positive pitch down, positive roll
clockwise on screen.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models.renderer import intrinsics
from support.landmarks import FaceMeshDetector, LandmarkDetector, make_detector

GENERIC_FACE = Path(__file__).resolve().parent / "data" / "generic_face_68.npy"
GENERIC_MESH = Path(__file__).resolve().parent / "data" / "generic_face_mesh_468.npy"  # Face Mesh's 468
INNER = np.arange(17, 68)  # brows, nose, eyes, mouth
POSE_NAMES = ("pitch", "yaw", "roll")


def euler_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """R [3, 3] = Rz(roll) Ry(yaw) Rx(pitch) (models.renderer.rotation_matrix) -> (pitch, yaw, roll) in
    degrees, yaw in [-90, 90]."""
    yaw = math.asin(max(-1.0, min(1.0, -float(R[2, 0]))))
    pitch = math.atan2(float(R[2, 1]), float(R[2, 2]))
    roll = math.atan2(float(R[1, 0]), float(R[0, 0]))
    return math.degrees(pitch), math.degrees(yaw), math.degrees(roll)


class LandmarkPoseOracle:
    """Measures (pitch, yaw, roll) of face photos; NaN where dlib finds no face."""

    names = POSE_NAMES

    def __init__(self, detector: LandmarkDetector | FaceMeshDetector | str | None = None, fov_deg: float | None = None):
        """detector: a LandmarkDetector or FaceMeshDetector (anything with their ``faces(image)``),
        or its kind (support.landmarks.DETECTOR_KINDS: "hog", "cnn", "hog+cnn" for dlib's 68 landmarks, "mediapipe" for
        Face Mesh's 468; default hog).
        fov_deg: the camera's horizontal field of view in degrees, in (0, 180); None: focal
        length = image width (about 53 degrees). Raises ValueError outside (0, 180) or for
        another kind."""
        if fov_deg is not None and not 0 < fov_deg < 180:
            raise ValueError(f"fov_deg must be in (0, 180) degrees or None, got {fov_deg}")
        if not hasattr(detector, "faces"):
            detector = make_detector(detector or "hog")
        self.detector, self.fov_deg = detector, fov_deg
        mesh = isinstance(detector, FaceMeshDetector)
        self.model = np.load(GENERIC_MESH if mesh else GENERIC_FACE)  # [N, 3], world units, centred on the face
        self.points = detector.rigid_points if mesh else INNER  # the landmarks solvePnP uses

    def camera(self, width: int, height: int) -> np.ndarray:
        """Intrinsics K [3, 3] (px) for an image of this size: principal point at the centre,
        focal = width, or the renderer's camera of that field of view (models.renderer.intrinsics)."""
        if self.fov_deg is None:
            return np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], dtype=np.float64)
        k = intrinsics(width, self.fov_deg, dtype=torch.float64).numpy()
        k[1, 2] = (height - 1) / 2
        return k

    def pose(self, photo: np.ndarray) -> np.ndarray | None:
        """uint8 [H, W, 3] -> (pitch, yaw, roll) degrees [3], or None when no face is found."""
        import cv2  # noqa: PLC0415  (OpenCV loads only where pose is measured)

        faces = self.detector.faces(photo)
        if not faces:
            return None
        h, w = photo.shape[:2]
        ok, rvec, _ = cv2.solvePnP(
            self.model[self.points],
            faces[0].landmarks[self.points].astype(np.float64),
            self.camera(w, h),
            None,
            flags=cv2.SOLVEPNP_SQPNP,
        )
        if not ok:
            return None
        return np.array(euler_from_rotation(cv2.Rodrigues(rvec)[0]))

    def measure(self, images: np.ndarray) -> np.ndarray:
        """uint8 images [N, 3, H, W] -> [N, 3] degrees (pitch, yaw, roll), NaN rows where no face."""
        out = np.full((len(images), 3), np.nan)
        for i, image in enumerate(images):
            found = self.pose(np.ascontiguousarray(image.transpose(1, 2, 0)))
            if found is not None:
                out[i] = found
        return out


def validate(oracle: LandmarkPoseOracle, n: int, size: int, pose: str = "wide", seed: int = 11) -> dict:
    """The oracle against ground truth: `n` procedural faces (models.faces, `pose` preset) rendered
    at `size` px with known pitch / yaw / roll. Returns detection rates (all, |yaw| <= 45) and, on
    the detected faces, Pearson r, r^2 and mean absolute error (degrees) per angle (None when fewer
    than 3 faces were found), and the true spread."""
    from models import faces as face_model  # noqa: PLC0415

    factors = face_model.sample_factors(n, torch.Generator().manual_seed(seed), pose=pose)
    truth = factors[:, [face_model.FACTOR_INDEX[k] for k in POSE_NAMES]].numpy()
    measured = []
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
        "fov_deg": oracle.fov_deg,
        "detected": round(float(found.mean()), 3),
        "detected_yaw45": round(float(found[moderate].mean()), 3) if moderate.any() else None,
        "r": {},
        "r2": {},
        "mae_deg": {},
        "truth_std_deg": {},
    }
    for j, name in enumerate(POSE_NAMES):
        a, b = measured[found, j], truth[found, j]
        r = float(np.corrcoef(a, b)[0, 1]) if found.sum() > 2 else None
        out["r"][name] = None if r is None else round(r, 3)
        out["r2"][name] = None if r is None else round(r * r, 4)
        out["mae_deg"][name] = round(float(np.abs(a - b).mean()), 2) if found.any() else None
        out["truth_std_deg"][name] = round(float(b.std()), 2) if found.any() else None
    return out
