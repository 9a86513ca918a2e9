"""Face detection and 68 landmarks with dlib, offline.

The models ship inside the `face-recognition-models` wheel (`shape_predictor_68_face_landmarks.dat`,
the HOG detector is built into dlib); nothing is downloaded. The package is located without
being imported (its `__init__` needs setuptools' pkg_resources, which modern environments lack).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.alignment import align_face
from support.wheel_data import package_file


def model_file(name: str = "shape_predictor_68_face_landmarks.dat") -> Path:
    """Path of a model file of the face-recognition-models wheel. Raises FileNotFoundError."""
    return package_file("face_recognition_models", f"models/{name}", "face-recognition-models (make install pins it)")


def equalized(image: np.ndarray, clip: float = 2.0, tiles: int = 4) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> the same with its L* channel (CIELAB) equalised by CLAHE (OpenCV's
    contrast-limited adaptive histogram equalisation: `clip` limit, `tiles` x `tiles` grid)."""
    import cv2  # noqa: PLC0415

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=clip, tileGridSize=(tiles, tiles)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


@dataclass
class Face:
    """One detected face: box (left, top, right, bottom) px, detector score, landmarks [68, 2] (x, y)."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> int:
        return max(self.box[2] - self.box[0], 0) * max(self.box[3] - self.box[1], 0)


class LandmarkDetector:
    """dlib's face detector + its 68-point shape predictor.

    upsample: times the photo is upsampled before detection (1 finds faces down to ~40 px).
    kind: "hog" (fast: 0.02 s per 128 px image here), "cnn" (dlib's MMOD CNN,
          mmod_human_face_detector.dat: finds more turned faces, 0.9 s per image on a CPU, but
          their landmarks are less accurate) or "hog+cnn" (the CNN only where HOG finds none).
          Measured on 160 rendered faces at 128 px with |yaw| <= 45 (README, "A landmark pose
          oracle"): found 58 % by HOG, 73 % by the CNN, 80 % by hog+cnn.
    equalize: HOG searches a copy whose luminance is CLAHE-equalised (OpenCV, clip 2, 4 x 4
          tiles; the landmarks are still read on the photo itself): there it raised HOG's
          detection from 49 % to 58 % with no loss in pose accuracy. The CNN always searches
          the photo: equalised, it found 76 % whose pose was worse (yaw r 0.73 against 0.86).
    Raises ValueError for another kind.
    """

    KINDS = ("hog", "cnn", "hog+cnn")

    def __init__(self, upsample: int = 1, kind: str = "hog", equalize: bool = True):
        import dlib  # noqa: PLC0415  (heavy, and only where faces are detected)

        if kind not in self.KINDS:
            raise ValueError(f"detector kind must be one of {', '.join(self.KINDS)}; got {kind!r}")
        self.upsample, self.kind, self.equalize = upsample, kind, equalize
        self.hog = dlib.get_frontal_face_detector() if "hog" in kind else None
        self.cnn = None
        if "cnn" in kind:
            self.cnn = dlib.cnn_face_detection_model_v1(str(model_file("mmod_human_face_detector.dat")))
        self.predictor = dlib.shape_predictor(str(model_file()))

    def boxes(self, image: np.ndarray) -> tuple[list, list[float]]:
        """uint8 [H, W, 3] RGB (contiguous) -> dlib rectangles and their detector scores."""
        if self.hog is not None:
            rects, scores, _ = self.hog.run(equalized(image) if self.equalize else image, self.upsample, 0.0)
            if len(rects) or self.cnn is None:
                return list(rects), list(scores)
        found = self.cnn(image, self.upsample)
        return [d.rect for d in found], [d.confidence for d in found]

    def faces(self, image: np.ndarray) -> list[Face]:
        """uint8 [H, W, 3] RGB -> the faces found, largest first (ties: higher score first).
        Raises ValueError for another dtype or shape."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
        image = np.ascontiguousarray(image)
        found = []
        for rect, score in zip(*self.boxes(image)):
            shape = self.predictor(image, rect)
            points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)
            found.append(Face((rect.left(), rect.top(), rect.right(), rect.bottom()), float(score), points))
        return sorted(found, key=lambda f: (-f.area, -f.score))


class FaceMeshDetector:
    """MediaPipe Face Mesh: one face's 468 landmarks (its short-range face detector and
    `face_landmark.tflite` ship inside the pinned mediapipe wheel; nothing is downloaded). A 3D
    landmarker, as the paper's; used by the landmark oracle (`oracle.landmark_detector: mediapipe`),
    not for alignment (FFHQ's is defined on dlib's 68). Measured on 160 rendered faces at 128 px
    (README, "A landmark pose oracle"): found 99 % where |yaw| <= 45 (dlib hog+cnn: 80 %).

    min_confidence: the face detector's threshold in (0, 1]. Raises ValueError outside it.
    """

    kind = "mediapipe"

    def __init__(self, min_confidence: float = 0.3):
        import os  # noqa: PLC0415

        if not 0 < min_confidence <= 1:
            raise ValueError(f"min_confidence must be in (0, 1], got {min_confidence}")
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ logging: warnings and up only
        from mediapipe.python.solutions import face_mesh  # noqa: PLC0415  (heavy, and only where pose is read)

        self.mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, min_detection_confidence=min_confidence)
        oval = {i for edge in face_mesh.FACEMESH_FACE_OVAL for i in edge}
        self.rigid_points = np.array([i for i in range(468) if i not in oval])  # the contour slides with the view

    def faces(self, image: np.ndarray) -> list[Face]:
        """uint8 [H, W, 3] RGB -> [] or the one face found: box around its landmarks, score 1,
        landmarks [468, 2] (x, y px). Raises ValueError for another dtype or shape."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
        found = self.mesh.process(np.ascontiguousarray(image)).multi_face_landmarks
        if not found:
            return []
        h, w = image.shape[:2]
        points = np.array([[p.x * w, p.y * h] for p in found[0].landmark[:468]], np.float64)
        (left, top), (right, bottom) = points.min(0).astype(int), points.max(0).astype(int)
        return [Face((int(left), int(top), int(right), int(bottom)), 1.0, points)]


DETECTOR_KINDS = (*LandmarkDetector.KINDS, FaceMeshDetector.kind)


def make_detector(kind: str, equalize: bool = True) -> LandmarkDetector | FaceMeshDetector:
    """The detector of a kind (DETECTOR_KINDS: dlib's "hog", "cnn", "hog+cnn" with `equalize`, or
    "mediapipe"). Raises ValueError naming the kinds for another."""
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"landmark detector must be one of {', '.join(DETECTOR_KINDS)}; got {kind!r}")
    return FaceMeshDetector() if kind == FaceMeshDetector.kind else LandmarkDetector(kind=kind, equalize=equalize)


def aligned_faces(
    detector: LandmarkDetector, image: np.ndarray, size: int, all_faces: bool = False
) -> list[np.ndarray]:
    """FFHQ-aligned faces of a photo uint8 [H, W, 3]: uint8 [3, size, size] each, the largest face
    first (only it unless `all_faces`). Raises ValueError("no face found ...") when dlib finds none."""
    faces = detector.faces(image)
    if not faces:
        h, w = image.shape[:2]
        raise ValueError(f"no face found ({w}x{h} px; dlib's HOG detector needs faces of about 40 px or more)")
    return [align_face(image, f.landmarks, size).transpose(2, 0, 1).copy() for f in (faces if all_faces else faces[:1])]
