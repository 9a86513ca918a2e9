"""Bring your own StyleGAN2 and your own photos, end to end (README, "From your photos to an
edited photo"): a folder of photos (two package portraits, one photo without a face) FFHQ-aligned
into faces.zarr, a random-weight NVlabs-layout 256 px generator (small widths) as a .pkl in
data/pretrained, `gan.init` pointing at it with `gan.kimg: 0`, `dvc repro` running every stage
on it at its own resolution, then a portrait projected and edited along the run's directions."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models.stylegan2 import Discriminator, Generator
from store.artifacts import open_store
from tests.nvlabs_pickle import write_nvlabs_pickle
from tests.test_pipeline_e2e import STAGES, TINY, _run, copy_project

pytestmark = pytest.mark.slow

CONFIG = {
    "G": {
        "z_dim": 32,
        "c_dim": 0,
        "w_dim": 32,
        "img_resolution": 256,
        "img_channels": 3,
        "mapping_kwargs": {"num_layers": 2},
        "synthesis_kwargs": {"channel_base": 1024, "channel_max": 16, "num_fp16_res": 0, "conv_clamp": 256},
    },
    "D": {
        "c_dim": 0,
        "img_resolution": 256,
        "img_channels": 3,
        "channel_base": 1024,
        "channel_max": 16,
        "conv_clamp": 256,
        "epilogue_kwargs": {"mbstd_group_size": 4},
    },
}


def _random_256_pickle(path):
    torch.manual_seed(0)
    G = Generator(32, 32, 2, 256, 1024, 16, conv_clamp=256)
    D = Discriminator(256, 1024, 16, conv_clamp=256)
    with torch.no_grad():  # noise strengths and w_avg away from their zero init, as a trained net's are
        for name, value in G.named_parameters():
            if name.endswith("noise_strength"):
                value.fill_(0.1)
        G.mapping.w_avg.normal_()
    return write_nvlabs_pickle(path, G.state_dict(), D.state_dict(), CONFIG)


def _photos(folder):
    """Two package portraits and a photo without a face (scikit-image's coffee cup)."""
    import skimage.data
    from matplotlib import cbook

    folder.mkdir(parents=True)
    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).save(folder / "grace_hopper.jpg")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.png")
    return {f"data/raw/{p.name}": p for p in sorted(folder.iterdir())}


def test_photos_and_a_256px_nvlabs_pickle_run_through_every_stage_then_a_photo_is_edited(tmp_path_factory):
    work = tmp_path_factory.mktemp("import256")
    pkl = _random_256_pickle(work / "tiny256.pkl")
    params = {
        **TINY,
        "data": {**TINY["data"], "source": "folder", "path": "data/raw", "align": "ffhq", "resolution": 64},
        "gan": {**TINY["gan"], "init": "data/pretrained/tiny256.pkl", "kimg": 0},
        "recon": {**TINY["recon"], "resolution": 16},
        "oracle": {**TINY["oracle"], "kind": "landmarks", "landmark_faces": 8, "landmark_detector": "hog"},
    }
    files = {"data/pretrained/tiny256.pkl": pkl, **_photos(work / "photos")}
    root, env, guard = copy_project(work / "repo", params, files)
    proc = _run([sys.executable, "-m", "dvc", "repro"], root, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in proc.stdout, stage
    data = root / "data"
    faces = open_store(data / "faces.zarr")
    assert faces["images"].shape == (2, 3, 64, 64)  # the two portraits, aligned
    skipped = (data / "faces_report.csv").read_text()
    assert "coffee.png" in skipped and "no face found" in skipped
    gen_meta = json.loads((data / "gan" / "generator.json").read_text())
    assert gen_meta["config"]["resolution"] == 256 and gen_meta["init_format"] == "nvlabs"
    assert gen_meta["config"]["conv_clamp"] == 256 and gen_meta["config"]["w_dim"] == 32
    latents = open_store(data / "latents.zarr")
    assert latents["images"].shape == (TINY["latents"]["n"], 3, 16, 16)  # stored at recon.resolution
    assert latents.attrs["generator_resolution"] == 256
    assert open_store(data / "semantics.zarr")["semantics"].shape == (TINY["latents"]["n"], 14)
    evaluate = json.loads((data / "metrics" / "evaluate.json").read_text())
    assert evaluate["oracle"] == "landmarks" and evaluate["measured"] == ["pitch", "yaw", "roll"]
    assert len(evaluate["not_measured"]) == 11 and "light_x" in evaluate["not_measured"]
    # random weights draw no face: nothing is correlated over a biased or empty subset
    assert evaluate["n_measured"] == 0 and evaluate["table2"]["yaw"]["yaw"] is None
    assert json.loads((data / "oracle" / "landmarks.json").read_text())["kind"] == "landmarks"
    report = data / "report"
    full = Image.open(report / "univariate_edits_full.png")
    page = Image.open(report / "univariate_edits.png")
    assert full.height >= 256 and page.width < full.width  # edits at 256 px; the page shows a downsized copy
    assert np.asarray(full).std() > 0
    assert "where a face was found; not measured: pitch" not in (report / "index.html").read_text()
    assert "Measured with the landmark oracle on the 0 of" in (report / "index.html").read_text()
    # the photo path on the run's outputs: align + project (a few steps) -> edit along yaw, a JPEG
    facesem = [sys.executable, "-m", "pipeline.cli"]
    photo = root / "data" / "raw" / "astronaut.png"
    proc = _run([*facesem, "project", str(photo), "--out", str(work / "w.zarr"), "--steps", "3", "--json"], root, env)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n"] == 1 and summary["steps"] == 3 and np.isfinite(summary["psnr_db"])
    assert open_store(work / "w.zarr")["w"].shape == (1, 32)
    edited = work / "astronaut_yaw.jpg"
    _run([*facesem, "edit", "--direction", "yaw", "--latent", str(work / "w.zarr"), "--out", str(edited)], root, env)
    with Image.open(edited) as grid:
        assert grid.format == "JPEG" and grid.height >= 256 and grid.width > grid.height
    assert not (guard / "attempts.log").exists()
