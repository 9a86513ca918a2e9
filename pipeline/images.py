"""Image I/O shared by stages: reading a folder of face photos, saving image grids."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (nested), sorted for a deterministic order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"data.path {str(folder)!r} is not a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_face_image(path: Path, resolution: int, min_size: int, crop: str) -> np.ndarray:
    """One photo -> uint8 [3, resolution, resolution]; raises ValueError with the reason
    when the file is unreadable, truncated or smaller than `min_size` pixels."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: truncated files fail here
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"unreadable: {err}") from None
    w, h = rgb.size
    if min(w, h) < min_size:
        raise ValueError(f"too small: {w}x{h} < data.min_size={min_size}")
    if crop == "center":
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    rgb = rgb.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy()


def to_uint8(images) -> np.ndarray:
    """float images in [0, 1] (torch or numpy) -> uint8, same shape."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int, scale: int = 1, pad: int = 1) -> Image.Image:
    """uint8 [N, 3, H, W] -> one PIL image, `ncols` per row, nearest-upscaled by `scale`."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y:y + h, x:x + w] = img.transpose(1, 2, 0)
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid


def save_grid(images: np.ndarray, path: str | Path, ncols: int, scale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    image_grid(images, ncols, scale).save(tmp)
    tmp.replace(path)
    return path
