"""FFHQ-style alignment (models/alignment.py) with dlib's landmarks (support/landmarks.py), on the
real portraits that ship in packages and on synthetic faces of known roll."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from models import faces as face_model
from models.alignment import align_face, alignment_quad, roll_deg
from stages import faces as faces_stage
from store.artifacts import open_store
from support.landmarks import LandmarkDetector
from tests.conftest import make_params

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def detector():
    return LandmarkDetector()


def _portraits() -> dict[str, np.ndarray]:
    import matplotlib.cbook as cbook

    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    return {"astronaut": skimage_data.astronaut(), "grace_hopper": np.asarray(hopper)}


def test_quad_geometry_on_planted_landmarks():
    lm = np.zeros((68, 2))
    lm[36:42], lm[42:48] = (40.0, 50.0), (80.0, 50.0)  # eyes level, 40 px apart
    lm[48], lm[54] = (45.0, 95.0), (75.0, 95.0)  # mouth 45 px below the eyes
    quad, side = alignment_quad(lm)
    assert side == pytest.approx(max(2 * 40, 1.8 * 45) * 2)  # 2 |x|, |x| = max(2 |ee|, 1.8 |em|)
    top = quad[3] - quad[0]
    assert math.degrees(math.atan2(top[1], top[0])) == pytest.approx(0, abs=1e-9)  # upright
    centre = quad.mean(0)
    assert centre == pytest.approx([60.0, 50.0 + 0.1 * 45])  # c = eye centre + 0.1 eye-to-mouth
    rot = np.radians(20.0)
    turn = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    quad_r, _ = alignment_quad(lm @ turn.T)  # the same face rolled by 20 degrees: the square rolls too
    top_r = quad_r[3] - quad_r[0]
    assert math.degrees(math.atan2(top_r[1], top_r[0])) == pytest.approx(20.0, abs=1e-6)
    assert roll_deg(lm @ turn.T) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="68 landmarks"):
        alignment_quad(lm[:5])


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_real_portraits_come_out_upright_and_centred(detector, name):
    photo = _portraits()[name]
    faces = detector.faces(photo)
    assert faces, name
    aligned = align_face(photo, faces[0].landmarks, 256)
    assert aligned.shape == (256, 256, 3) and aligned.dtype == np.uint8
    again = detector.faces(aligned)  # the aligned face is found again, eyes level, where FFHQ puts them
    assert again
    assert abs(roll_deg(again[0].landmarks)) < 2.0
    eyes = again[0].landmarks[36:48].mean(0)
    assert abs(eyes[0] - 128) < 8 and 100 < eyes[1] < 140, eyes


def test_synthetic_faces_of_known_roll_are_levelled(detector):
    """Frontal renders at 256 px with roll in [-12, 12] degrees: the aligned square's rotation
    undoes the true roll (residual = true roll - applied rotation)."""
    f = face_model.sample_factors(16, torch.Generator().manual_seed(1), pose="frontal")
    f[:, face_model.FACTOR_INDEX["roll"]] = torch.linspace(-12, 12, 16)
    images, _ = face_model.render_faces(f, 256)
    photos = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    residuals = []
    for photo, roll in zip(photos, f[:, face_model.FACTOR_INDEX["roll"]].tolist()):
        found = detector.faces(photo)
        if found:
            quad, _ = alignment_quad(found[0].landmarks)
            top = quad[3] - quad[0]
            residuals.append(roll - math.degrees(math.atan2(top[1], top[0])))
    residuals = np.abs(residuals)
    assert len(residuals) >= 12, f"dlib found {len(residuals)} of 16 synthetic faces"
    assert np.median(residuals) < 1.5 and residuals.max() < 4.0, residuals  # measured: 0.6 and 2.7


def test_folder_ingest_aligns_faces_and_lists_photos_without_one(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, image in _portraits().items():
        Image.fromarray(image).save(photos / f"{name}.png")
    for i, face in enumerate(skimage_data.lfw_subset()[:3]):  # 25 px LFW crops: too small for the detector
        Image.fromarray((face * 255).astype(np.uint8)).save(photos / f"lfw{i}.png")
    params = make_params(
        data={"source": "folder", "path": str(photos), "align": "ffhq", "resolution": 64, "min_size": 16, "chunk": 4}
    )
    result = faces_stage.run(params, tmp_path / "faces.zarr", tmp_path / "report.csv", tmp_path / "m.json")
    assert result["n_images"] == 2 and result["n_skipped"] == 3
    assert open_store(tmp_path / "faces.zarr")["images"].shape == (2, 3, 64, 64)
    with (tmp_path / "report.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"].rsplit("/", 1)[1] for r in rows) == ["lfw0.png", "lfw1.png", "lfw2.png"]
    assert all("no face found" in r["reason"] for r in rows)


def test_facesem_align_writes_faces_and_a_report(tmp_path):
    from tools.align import align_photos

    (tmp_path / "in").mkdir()
    Image.fromarray(_portraits()["astronaut"]).save(tmp_path / "in" / "astronaut.jpg")
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    done = align_photos([tmp_path / "in"], tmp_path / "out", 128)
    assert done == {"photos": 2, "aligned": 1, "skipped": 1, "report": str(tmp_path / "out" / "align_report.csv")}
    assert Image.open(tmp_path / "out" / "astronaut.png").size == (128, 128)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        align_photos([tmp_path / "nowhere"], tmp_path / "out", 128)


def test_facesem_align_never_writes_over_a_photo_or_merges_two(tmp_path):
    """Photos sharing a name keep their suffix or folder in the output's name; OUT equal to the
    input folder is refused; OUT inside it is not read back as input on a second run."""
    from tools.align import align_photos

    photos = tmp_path / "in"
    (photos / "sub").mkdir(parents=True)
    face = Image.fromarray(_portraits()["astronaut"]).resize((256, 256))
    for path in (photos / "me.jpg", photos / "me.png", photos / "sub" / "me.png"):
        face.save(path)
    kept = {p: p.read_bytes() for p in photos.rglob("*.*")}
    done = align_photos([photos], photos / "aligned", 64)
    assert done["photos"] == 3 and done["aligned"] == 3
    written = sorted(str(p.relative_to(photos / "aligned")) for p in (photos / "aligned").rglob("*.png"))
    assert written == ["me_jpg.png", "me_png.png", "sub/me.png"]
    assert align_photos([photos], photos / "aligned", 64)["photos"] == 3  # its own outputs are not inputs
    with pytest.raises(ValueError, match="would replace the photos"):
        align_photos([photos], photos, 64)
    with pytest.raises(ValueError, match="would write over the photo"):
        align_photos([photos / "me.png"], photos, 64)
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_facesem_align_into_a_file_is_an_error_naming_it(tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "afile").write_text("mine")
    assert main(["align", str(tmp_path), str(tmp_path / "afile")]) == 2
    assert "afile" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    assert main(["align", str(tmp_path), str(tmp_path / "out"), "--size", "20000"]) == 2
    assert "--size: must be an integer side in px from 1 to 4096" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
