"""`facesem edit`: grids along a named direction, through Eq. 4, with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models import faces as face_model
from pipeline import cli
from stages import faces, train_gan
from store.artifacts import write_store
from support.edit import edit_grid, load_direction, parse_scales
from support.generators import load_generator
from support.params import parse_params


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
    code = cli.main(
        [
            "edit",
            "--direction",
            "yaw",
            "--seeds",
            "0,1,2",
            "--scales",
            "-3:3:5",
            "--out",
            str(out),
            "--directions",
            str(d / "dir.zarr"),
            "--generator",
            str(d / "gan" / "generator.safetensors"),
            "--zoom",
            "1",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert Image.open(out).size == (5 * 32 + 6, 3 * 32 + 4)  # 1-px padding between and around
    assert parse_scales("-3:3:7") == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0] and parse_scales("1,2") == [1.0, 2.0]
    code = cli.main(
        [
            "edit",
            "--direction",
            "smile",
            "--out",
            str(out),
            "--directions",
            str(d / "dir.zarr"),
            "--generator",
            str(d / "gan" / "generator.safetensors"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "'smile' is not in" in err and "available: pitch, yaw, roll" in err
    code = cli.main(["edit", "--direction", "yaw", "--scales", "a:b", "--directions", str(d / "dir.zarr")])
    assert code == 2 and "--scales must be" in capsys.readouterr().err


def test_cli_edit_names_a_truncated_generator(linear_run, tmp_path, capsys):
    d, _ = linear_run
    broken = tmp_path / "generator.safetensors"
    source = d / "gan" / "generator.safetensors"
    broken.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    broken.with_suffix(".json").write_text(source.with_suffix(".json").read_text())
    code = cli.main(
        [
            "edit",
            "--direction",
            "yaw",
            "--directions",
            str(d / "dir.zarr"),
            "--generator",
            str(broken),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "x.png"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint weights {broken} cannot be read" in err and "truncated" in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["edit", "--direction", "yaw", "--scales", "1:2:0"], "--scales must be start:stop:count (1 <= count <= 256)"),
        (["edit", "--direction", "yaw", "--scales", "-1:1:-3"], "--scales must be"),
        (["edit", "--direction", "yaw", "--scales", "0,inf"], "finite"),
        (["edit", "--direction", "yaw", "--scales", "1:2:2.5"], "--scales must be"),
        (["edit", "--direction", "yaw", "--seeds", "0,x"], "--seeds must be a comma list of at most 256 integers"),
        (["edit", "--direction", "yaw", "--seeds", "-1"], "--seeds must be"),
        (["edit", "--direction", "yaw", "--zoom", "0"], "argument --zoom: must be a positive finite int, got '0'"),
        (["inspect", "faces", "--rows", "-2"], "argument --rows: must be a positive finite int"),
        (["serve", "--interval", "nan", "--dry-run"], "argument --interval: must be a positive finite float"),
        (["serve", "--interval", "0", "--dry-run"], "argument --interval"),
        (["serve", "--limit", "two", "--dry-run"], "argument --limit: must be a positive finite int, got 'two'"),
    ],
)
def test_nonsense_arguments_exit_2_naming_the_argument(args, fragment, capsys):
    assert cli.main(args) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize("text", ["1:2:1000000", "1:2:0", ",".join(["1"] * 257), "a:b:c", "0,inf"])
def test_scales_out_of_range_are_refused_naming_them(text):
    with pytest.raises(ValueError, match="--scales must be"):
        parse_scales(text)


@pytest.mark.parametrize("text", ["99999999999999999999", "-1", "x", ""])
def test_seeds_out_of_range_are_refused_naming_them(text):
    from support.edit import parse_seeds

    with pytest.raises(ValueError, match=r"--seeds must be .* got"):
        parse_seeds(text)
