"""Stage train_oracle: held-out accuracy beats a trivial predictor; real data is skipped clearly."""

from __future__ import annotations

import json

import numpy as np
import torch
import yaml

from models.oracle import r2_scores
from stages import faces, train_oracle
from store.artifacts import write_store
from store.checkpoints import load_checkpoint
from support.params import parse_params


def params(repo_root):
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=480, resolution=32, n_eval=4, chunk=160, batch_size=160)
    raw["gan"].update(resolution=16)
    raw["oracle"].update(epochs=6, batch_size=32, width=8, holdout=0.2)
    return parse_params(raw)


def test_r2_scores_of_trivial_and_perfect_predictors():
    y = torch.randn(100, 3)
    np.testing.assert_allclose(r2_scores(y, y).numpy(), 1.0)
    np.testing.assert_allclose(r2_scores(y.mean(0).expand_as(y), y).numpy(), 0.0, atol=1e-6)


def test_oracle_beats_the_mean_predictor_on_held_out_faces(repo_root, tmp_path):
    p = params(repo_root)
    faces.run(p, tmp_path / "faces.zarr", tmp_path / "r.csv", tmp_path / "m.json")
    result = train_oracle.run(p, tmp_path / "faces.zarr", tmp_path / "oracle", tmp_path / "o.json")
    r2 = result["oracle_r2"]
    # the mean predictor scores R^2 = 0 on held-out data; pose and light are easy to see even at 16 px
    assert r2["yaw"] > 0.5 and r2["light_x"] > 0.3, r2
    assert np.mean([r2[k] for k in ("pitch", "yaw", "roll", "light_x", "light_y")]) > 0.3
    assert set(result["flagged"]) == {k for k, v in r2.items() if v < p.oracle.r2_threshold}
    meta = load_checkpoint(tmp_path / "oracle" / "oracle.safetensors")[1]
    assert meta["oracle_r2"] == r2 and json.loads((tmp_path / "o.json").read_text())["oracle_r2"] == r2


def test_real_data_skips_the_oracle_with_a_reason(repo_root, tmp_path):
    with write_store(tmp_path / "faces.zarr", "faces", {}, "h", source="folder") as group:
        group.create_array("images", data=np.zeros((4, 3, 32, 32), np.uint8))
    result = train_oracle.run(params(repo_root), tmp_path / "faces.zarr", tmp_path / "oracle", tmp_path / "o.json")
    assert result["skipped"] and "real data" in result["reason"]


def test_the_landmark_oracle_with_the_default_detector_validates_itself(repo_root, tmp_path):
    """oracle.kind: landmarks with the default detector (Face Mesh): validated on renders of known
    pose, r^2 per pose angle under the learned oracle's keys, the detector recorded."""
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())
    raw["oracle"].update(kind="landmarks", landmark_faces=24, landmark_fov_deg=10.0)
    p = parse_params(raw)
    result = train_oracle.run(p, tmp_path / "faces.zarr", tmp_path / "oracle", tmp_path / "o.json")
    assert result["detector"] == "mediapipe" and set(result["oracle_r2"]) == {"pitch", "yaw", "roll"}
    assert result["validation"]["detected"] >= 0.7 and result["oracle_r2"]["yaw"] > 0.7
    assert "(mediapipe) finds" in result["validation_space"]
    assert json.loads((tmp_path / "oracle" / "landmarks.json").read_text()) == result
