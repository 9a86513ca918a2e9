"""The real-data path of stage `faces` (data.source: folder), on real photos shipped by scikit-image."""

import csv

import numpy as np
import pytest
from PIL import Image

from stages import faces as faces_stage
from store.artifacts import open_store
from tests.conftest import make_params

skdata = pytest.importorskip("skimage.data")


def _photo_folder(root):
    (root / "lfw" / "nested").mkdir(parents=True)
    Image.fromarray(skdata.astronaut()).save(root / "astronaut.jpg", quality=95)
    lfw = (skdata.lfw_subset()[:6] * 255).astype(np.uint8)  # real 25x25 face crops
    for i, face in enumerate(lfw):
        sub = root / "lfw" / ("nested" if i % 2 else "")
        Image.fromarray(face).save(sub / f"face{i}.png")
    # bad files: not an image, truncated, too small
    (root / "notes.png").write_text("this is not a png")
    good = root / "astronaut.jpg"
    (root / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "tiny.png")
    (root / "ignored.txt").write_text("not an image suffix")


def test_folder_ingest_keeps_good_reports_bad(tmp_path):
    photos = tmp_path / "photos"
    _photo_folder(photos)
    params = make_params(
        **{"data": {"source": "folder", "path": str(photos), "resolution": 32, "min_size": 16, "chunk": 4}}
    )
    out, report, metrics = tmp_path / "faces.zarr", tmp_path / "report.csv", tmp_path / "m.json"
    result = faces_stage.run(params, out, report, metrics)
    assert result["n_images"] == 7 and result["n_skipped"] == 3
    group = open_store(out)
    images = group["images"][:]
    assert images.shape == (7, 3, 32, 32) and images.dtype == np.uint8
    assert group.attrs["source"] == "folder" and "factors" not in group
    # grayscale faces became 3 equal channels; the astronaut photo kept its colour
    rows = {r["path"].split("/")[-1]: r["reason"] for r in csv.DictReader(report.open())}
    assert set(rows) == {"notes.png", "truncated.jpg", "tiny.png"}
    assert "unreadable" in rows["notes.png"] and "unreadable" in rows["truncated.jpg"]
    assert "too small" in rows["tiny.png"]
    assert images.std() > 10  # real content, not blank
    grey = [(im[0] == im[1]).all() and (im[1] == im[2]).all() for im in images]
    assert sum(grey) == 6 and not grey[0]  # sorted order: astronaut.jpg first, then the 6 LFW faces


def test_folder_without_usable_images_is_a_clear_error(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bad.jpg").write_text("nope")
    params = make_params(**{"data": {"source": "folder", "path": str(photos)}})
    with pytest.raises(ValueError, match="no usable images"):
        faces_stage.run(params, tmp_path / "f.zarr", tmp_path / "r.csv", tmp_path / "m.json")
    assert not (tmp_path / "f.zarr").exists()


def test_missing_folder_names_the_param(tmp_path):
    params = make_params(**{"data": {"source": "folder", "path": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match="data.path"):
        faces_stage.run(params, tmp_path / "f.zarr", tmp_path / "r.csv", tmp_path / "m.json")


# ------------------------------------------------------------------ pictures read right, or skipped with a reason


def _ingest(tmp_path, files: dict, **data):
    """Write files (name -> writer(path)), ingest at 32 px; -> (images by file stem, report rows by name)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, write in files.items():
        write(photos / name)
    params = make_params(
        **{"data": {"source": "folder", "path": str(photos), "resolution": 32, "min_size": 16, "chunk": 4, **data}}
    )
    result = faces_stage.run(params, tmp_path / "faces.zarr", tmp_path / "report.csv", tmp_path / "m.json")
    kept = sorted(
        p.stem
        for p in photos.rglob("*")
        if p.name not in {r["path"].split("/")[-1] for r in csv.DictReader((tmp_path / "report.csv").open())}
    )
    images = open_store(tmp_path / "faces.zarr")["images"][:]
    rows = {r["path"].split("/")[-1]: r["reason"] for r in csv.DictReader((tmp_path / "report.csv").open())}
    assert result["n_images"] == len(kept) and result["n_skipped"] == len(rows)
    return dict(zip(kept, images)), rows


def _png16(path):
    Image.fromarray(np.full((40, 40), 30000, np.uint16)).save(path)  # mode I;16


def _rgba_noise(path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: the noise must not show
    Image.fromarray(rgba, "RGBA").save(path)


def _exif_rotated(path):
    shown = np.zeros((40, 40, 3), np.uint8)
    shown[:, :20] = 255  # as displayed: the left half is white
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # pixels lie on their side
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    stored.save(path, quality=95, exif=exif)


def _bomb(path):
    """A PNG header declaring 50000 x 50000 px: Pillow raises DecompressionBombError (not an OSError)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _grey(path):
    Image.fromarray(np.full((40, 40), 77, np.uint8)).save(path)


def _colour(path):
    Image.fromarray(np.tile(np.array([200, 40, 90], np.uint8), (40, 40, 1))).save(path)


def test_16_bit_greyscale_is_scaled_not_saturated(tmp_path):
    images, rows = _ingest(tmp_path, {"deep.png": _png16})
    assert rows == {}
    np.testing.assert_array_equal(images["deep"], np.full((3, 32, 32), round(30000 / 257), np.uint8))  # 117


def test_transparent_pixels_become_the_background_param(tmp_path):
    images, _ = _ingest(tmp_path, {"alpha.png": _rgba_noise}, alpha_background=[10, 20, 30])
    expect = np.broadcast_to(np.array([10, 20, 30], np.uint8)[:, None, None], (3, 32, 32))
    np.testing.assert_array_equal(images["alpha"], expect)


def test_exif_orientation_is_applied(tmp_path):
    images, _ = _ingest(tmp_path, {"phone.jpg": _exif_rotated})
    img = images["phone"].astype(float)
    assert img[:, :, :14].mean() > 240 and img[:, :, 18:].mean() < 15  # left white, right black, as displayed


def test_a_file_pillow_fails_on_in_any_way_is_skipped_and_named(tmp_path):
    images, rows = _ingest(tmp_path, {"bomb.png": _bomb, "grey.png": _grey, "colour.png": _colour})
    assert set(images) == {"grey", "colour"}
    assert set(rows) == {"bomb.png"} and "DecompressionBombError" in rows["bomb.png"]
    # greyscale becomes three equal channels; colour keeps its channels
    np.testing.assert_array_equal(images["grey"], np.full((3, 32, 32), 77, np.uint8))
    np.testing.assert_array_equal(images["colour"][:, 5, 5], [200, 40, 90])


def test_alpha_background_is_validated():
    from support.params import ParamsError

    with pytest.raises(ParamsError, match="data.alpha_background"):
        make_params(**{"data": {"alpha_background": [0, 300, 0]}})


def test_quantize_signed_is_the_uint8_round_trip_that_stages_read():
    import torch

    from store.datasets import to_unit
    from store.images import quantize_signed, signed_to_uint8

    x = torch.cat([torch.linspace(-1.3, 1.3, 2001), torch.tensor([-1.0, 1.0, 0.0, 1 / 255, -1 / 255])])
    x = x.view(1, 1, 1, -1)
    assert torch.equal(quantize_signed(x), to_unit(torch.from_numpy(signed_to_uint8(x))))
