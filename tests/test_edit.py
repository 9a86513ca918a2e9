"""`facesem edit`: grids along a named direction, through Eq. 4, with clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models import faces as face_model
from pipeline import cli
from pipeline.artifacts import write_store
from pipeline.edit import edit_grid, load_direction, parse_scales
from pipeline.generators import load_generator
from pipeline.params import parse_params
from stages import faces, train_gan


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    """The linear ground-truth generator and a directions store holding its true view/light directions."""
    from tests.conftest import REPO
    d = tmp_path_factory.mktemp("edit")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["device"] = "cpu"
    raw["data"].update(n_images=48, resolution=32, n_eval=4, chunk=16, batch_size=16)
    raw["gan"].update(kind="linear", w_dim=16, resolution=32, grid=2, metric_samples=64, fid_samples=0, ppl_samples=0)
    params = parse_params(raw)
    faces.run(params, d / "faces.zarr", d / "r.csv", d / "m.json")
    train_gan.run(params, d / "faces.zarr", d / "gan", d / "run", d / "g.json")
    gen = load_generator(d / "gan" / "generator.safetensors")
    names = ["pitch", "yaw", "roll"]
    rows = gen.net.directions[[face_model.FACTOR_INDEX[n] for n in names]]
    with write_store(d / "dir.zarr", "regress", {}, "h") as group:
        group.create_array("unit", data=rows.numpy())
        group.create_array("sigma_w", data=np.ones(3, np.float32))
        group["unit"].attrs["rows"] = names
    return d, gen


def test_edit_moves_the_named_semantic_and_only_it(linear_run):
    d, gen = linear_run
    v, sigma = load_direction(d / "dir.zarr", "yaw")
    grid = edit_grid(gen, v, sigma, [0, 1], [-2.0, 0.0, 2.0])
    assert grid.shape == (6, 3, 32, 32) and grid.dtype == np.uint8
    assert np.abs(grid[0].astype(int) - grid[2].astype(int)).mean() > 5  # the face turned
    # the same edit, measured on the generator's true factors: yaw moves by 4 sigma_w x its scale
    z = torch.randn(1, gen.z_dim, generator=torch.Generator().manual_seed(0))
    from models.linear_semantics import manipulate
    w = gen.mapping(z)
    f = gen.net.factors(manipulate(w.repeat(2, 1), v, torch.tensor([-0.5, 0.5]), sigma))
    delta = (f[1] - f[0]).abs()
    yaw = face_model.FACTOR_INDEX["yaw"]
    assert delta[yaw] > 1.0 and delta[yaw] == delta.max()


def test_cli_edit_writes_a_grid_and_names_bad_input(linear_run, tmp_path, capsys):
    d, _ = linear_run
    out = tmp_path / "grid.png"
    code = cli.main(["edit", "--direction", "yaw", "--seeds", "0,1,2", "--scales", "-3:3:5", "--out", str(out),
                     "--directions", str(d / "dir.zarr"), "--generator", str(d / "gan" / "generator.safetensors"),
                     "--zoom", "1", "--device", "cpu"])
    assert code == 0
    assert Image.open(out).size == (5 * 32 + 6, 3 * 32 + 4)  # 1-px padding between and around
    assert parse_scales("-3:3:7") == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0] and parse_scales("1,2") == [1.0, 2.0]
    code = cli.main(["edit", "--direction", "smile", "--out", str(out), "--directions", str(d / "dir.zarr"),
                     "--generator", str(d / "gan" / "generator.safetensors")])
    assert code == 2 and "'smile' is not in" in capsys.readouterr().err and "pitch, yaw, roll"
    code = cli.main(["edit", "--direction", "yaw", "--scales", "a:b", "--directions", str(d / "dir.zarr")])
    assert code == 2 and "--scales must be" in capsys.readouterr().err
