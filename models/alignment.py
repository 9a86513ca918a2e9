"""FFHQ-style face alignment from 68 facial landmarks (no I/O).

The procedure the FFHQ dataset was built with (Karras et al., "A Style-Based Generator
Architecture for GANs", CVPR 2019; NVlabs ffhq-dataset, `recreate_aligned_images`), written
from its description: from the eye centres and the mouth corners,

    e = (eye_l + eye_r) / 2,  ee = eye_r - eye_l,  em = (mouth_l + mouth_r) / 2 - e
    x = ee - rot90(em),  x <- x / |x| * max(2 |ee|, 1.8 |em|),  y = rot90(x),  c = e + 0.1 em

give an oriented square (corners c - x - y, c - x + y, c + x + y, c + x - y, side 2 |x|) that is
cropped with a margin, padded beyond the photo by reflection blended into a blurred copy (so the
padding does not read as content), rotated upright and resampled to the output side.

Landmarks are dlib's 68-point layout (iBUG 300-W): eyes 36-41 (subject's right, image left) and
42-47, mouth corners 48 and 54. Images are uint8 [H, W, 3] (HWC, RGB); coordinates are (x, y)
pixels, x to the right, y down.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # image left / image right
MOUTH_LEFT, MOUTH_RIGHT = 48, 54


def _rot90(v: np.ndarray) -> np.ndarray:
    """(dx, dy) -> (-dy, dx): a quarter turn (clockwise on screen, y down)."""
    return np.array([-v[1], v[0]])


def alignment_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """68 landmarks [68, 2] (x, y px) -> (quad [4, 2]: the corners of the aligned square in the
    photo, in the order top-left, bottom-left, bottom-right, top-right of the output; its side in px).

    Raises ValueError for another landmark count or a degenerate (zero-size) face.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected 68 landmarks [68, 2], got {lm.shape}")
    eye_l, eye_r = lm[LEFT_EYE].mean(0), lm[RIGHT_EYE].mean(0)
    eye_avg, eye_to_eye = (eye_l + eye_r) / 2, eye_r - eye_l
    eye_to_mouth = (lm[MOUTH_LEFT] + lm[MOUTH_RIGHT]) / 2 - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    norm = float(np.hypot(*x))
    if norm < 1e-6:
        raise ValueError("degenerate landmarks: the eyes and mouth coincide")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = _rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(np.hypot(*x) * 2)


def roll_deg(landmarks: np.ndarray) -> float:
    """In-plane angle of the line from the image-left to the image-right eye centre, degrees
    (0: level; positive: the image-right eye is lower)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    d = lm[RIGHT_EYE].mean(0) - lm[LEFT_EYE].mean(0)
    return math.degrees(math.atan2(d[1], d[0]))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int, supersample: int = 4) -> np.ndarray:
    """Photo uint8 [H, W, 3] + its 68 landmarks -> the FFHQ-aligned face, uint8 [size, size, 3].

    The oriented square is resampled bilinearly at `supersample` x `size`, then reduced with a
    Lanczos filter (FFHQ: 4096 -> 1024). Raises ValueError for a bad image or landmarks.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    quad, qsize = alignment_quad(landmarks)
    img = Image.fromarray(image)
    # a much larger face than the output: shrink the photo first (antialiased), as FFHQ does
    shrink = int(math.floor(qsize / size * 0.5))
    if shrink > 1:
        img = img.resize((round(img.width / shrink), round(img.height / shrink)), Image.Resampling.LANCZOS)
        quad, qsize = quad / shrink, qsize / shrink
    border = max(int(round(qsize * 0.1)), 3)
    lo, hi = np.floor(quad.min(0)).astype(int), np.ceil(quad.max(0)).astype(int)
    # crop to the square's bounding box plus a border, inside the photo
    crop = (
        max(lo[0] - border, 0),
        max(lo[1] - border, 0),
        min(hi[0] + border, img.width),
        min(hi[1] + border, img.height),
    )
    if crop[2] - crop[0] < img.width or crop[3] - crop[1] < img.height:
        img = img.crop(crop)
        quad = quad - np.array(crop[:2])
    # what the square still needs beyond the photo: reflect, then fade into a blurred copy
    left, top = np.array(crop[:2])
    need = [left - lo[0], top - lo[1], hi[0] - left - img.width, hi[1] - top - img.height]  # beyond each edge
    pad = np.maximum(np.array(need, dtype=int) + border, 0)  # left, top, right, bottom
    if pad.max() > border - 4:
        pad = np.maximum(pad, int(round(qsize * 0.3)))
        arr = np.pad(np.asarray(img, np.float32), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), mode="reflect")
        h, w = arr.shape[:2]
        yy, xx = np.ogrid[:h, :w]
        edge = np.minimum(
            np.minimum(xx / max(pad[0], 1), (w - 1 - xx) / max(pad[2], 1)),
            np.minimum(yy / max(pad[1], 1), (h - 1 - yy) / max(pad[3], 1)),
        )
        mask = (1.0 - edge)[..., None]  # 1 at the outer edge, 0 at the photo's, negative further inside
        blur = qsize * 0.02
        arr += (gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)))
        quad = quad + pad[:2]
    big = size * supersample
    out = img.transform((big, big), Image.Transform.QUAD, (quad + 0.5).flatten().tolist(), Image.Resampling.BILINEAR)
    if big != size:
        out = out.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)
