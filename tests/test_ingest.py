"""The real-data path of stage `faces` (data.source: folder), on real photos shipped by scikit-image."""
import csv

import numpy as np
import pytest
from PIL import Image

from pipeline.artifacts import open_store
from pipeline.params import parse_params
from stages import faces as faces_stage

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
    params = parse_params({"data": {"source": "folder", "path": str(photos), "resolution": 32,
                                    "min_size": 16, "chunk": 4}})
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


def test_folder_without_usable_images_is_a_clear_error(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bad.jpg").write_text("nope")
    params = parse_params({"data": {"source": "folder", "path": str(photos)}})
    with pytest.raises(ValueError, match="no usable images"):
        faces_stage.run(params, tmp_path / "f.zarr", tmp_path / "r.csv", tmp_path / "m.json")
    assert not (tmp_path / "f.zarr").exists()


def test_missing_folder_names_the_param(tmp_path):
    params = parse_params({"data": {"source": "folder", "path": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match="data.path"):
        faces_stage.run(params, tmp_path / "f.zarr", tmp_path / "r.csv", tmp_path / "m.json")
