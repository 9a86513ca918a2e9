"""Image I/O shared by stages: reading a folder of face photos, saving image grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from store.artifacts import temporary_path

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


def input_files(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """Photos named on a command line, in order, each with its path relative to the folder it was
    found in (a file given by name: its name): files as given, folders searched (`find_images`).
    Raises FileNotFoundError naming an input that does not exist."""
    files: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += [(f, f.relative_to(item)) for f in find_images(item)]
        elif item.is_file():
            files.append((item, Path(item.name)))
        else:
            raise FileNotFoundError(f"{item} not found")
    return files


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """The photos of `input_files`, without their relative paths."""
    return [f for f, _ in input_files(inputs)]


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16/32-bit integer data scaled from the 16-bit range, alpha
    composited over ``background``; raises ValueError for data with no defined range (mode F)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im, dtype=np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{im.mode} pixels outside the 16-bit range ({arr.min():g}..{arr.max():g})")
        im = Image.fromarray(np.rint(arr / 257.0).astype(np.uint8), "L")
    elif im.mode == "F":
        raise ValueError("floating-point pixels (mode F) have no defined range; convert to 8 or 16 bits")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def read_photo(path: Path, min_size: int, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """One photo as an RGB PIL image: the EXIF orientation applied (as photo viewers do), 16-bit
    greyscale scaled to 8 bits, transparency composited over ``background`` (RGB 0..255,
    data.alpha_background). Raises ValueError with the reason for a file that cannot be used:
    unreadable, truncated, smaller than ``min_size``, floating-point pixels (no defined range).
    A uniform image (e.g. fully transparent) is read, not judged: it is a valid image."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: truncated files fail here
            rgb = _to_rgb(ImageOps.exif_transpose(im), tuple(background))
    except ValueError:
        raise
    except Exception as err:  # Pillow raises many kinds (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"unreadable: {type(err).__name__}: {err}") from None
    w, h = rgb.size
    if min(w, h) < min_size:
        raise ValueError(f"too small: {w}x{h} < data.min_size={min_size}")
    return rgb


def load_face_image(
    path: Path, resolution: int, min_size: int, crop: str, background: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """One photo (see `read_photo`) -> uint8 [3, resolution, resolution]: center-cropped
    (``crop``) and resized with Lanczos. Raises ValueError naming why a file cannot be used."""
    rgb = read_photo(path, min_size, background)
    w, h = rgb.size
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


def signed_to_uint8(images) -> np.ndarray:
    """float images in [-1, 1] (a generator's output range; torch or numpy) -> uint8 in [0, 255],
    same shape; values outside the range are clipped."""
    return to_uint8(images * 0.5 + 0.5)


def quantize_signed(images):
    """Float images in [-1, 1] (torch) -> the same images after a round trip through uint8
    (`signed_to_uint8`, then `store.datasets.to_unit`): what a stage reading stored generations
    sees. Same shape, device and dtype; values on the 256-level grid of [-1, 1]."""
    return ((images * 0.5 + 0.5) * 255.0).round().clamp(0, 255) / 127.5 - 1.0


def image_grid(images: np.ndarray, ncols: int, scale: int = 1, pad: int = 1) -> Image.Image:
    """uint8 [N, 3, H, W] -> one PIL image, `ncols` per row, nearest-upscaled by `scale`."""
    n, c, h, w = images.shape
    nrows = -(-n // ncols)
    canvas = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), 255, np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = img.transpose(1, 2, 0)
    grid = Image.fromarray(canvas)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.Resampling.NEAREST)
    return grid


GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def save_grid(images: np.ndarray, path: str | Path, ncols: int, scale: int = 1) -> Path:
    """Write uint8 images [N, 3, H, W] as one grid image, in the format its suffix names (.png,
    .jpg / .jpeg: JPEG quality 95, .webp), under a temporary name then renamed into place.
    Raises ValueError naming the suffix for any other (nothing is written)."""
    path = Path(path)
    fmt = GRID_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path.name}: the image format comes from the suffix: one of {', '.join(GRID_FORMATS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        image_grid(images, ncols, scale).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure to `path` (format from its suffix) under a temporary name, then
    rename it into place, so a reader never sees half a file; closes the figure. Returns `path`."""
    import matplotlib.pyplot as plt  # noqa: PLC0415  (matplotlib loads only where figures are drawn)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
