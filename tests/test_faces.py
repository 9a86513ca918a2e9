"""Tests of the procedural face model: factor table, sampling, maps, locality, rendering."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp

from models import faces as F
from models.renderer import LIGHT_NAMES, VIEW_NAMES

SIZE = 32
IDX = F.FACTOR_INDEX


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _bases(n: int, seed: int) -> torch.Tensor:
    """Random faces plus two faces with every localized factor at a random bound."""
    g = _gen(seed)
    faces = F.sample_factors(n, g, "wide")
    low, high = F.bounds()
    extreme = faces[:2].clone()
    pick = torch.rand(2, len(F.FACTORS), generator=g) < 0.5
    extreme[:, 14:] = torch.where(pick, low, high)[:, 14:]
    return torch.cat([faces, extreme])


# --- factor table -----------------------------------------------------------------
def test_factor_table():
    assert F.UNIVARIATE == VIEW_NAMES + LIGHT_NAMES
    assert F.FACTOR_NAMES[:14] == F.UNIVARIATE
    assert len(set(F.FACTOR_NAMES)) == len(F.FACTOR_NAMES)
    assert F.LOCAL_NAMES == F.FACTOR_NAMES[14:]
    assert len(F.LOCAL_NAMES) >= 20
    groups = [f.group for f in F.FACTORS]
    assert groups[:6] == ["view"] * 6 and groups[6:14] == ["light"] * 8
    assert {f.group for f in F.FACTORS[14:]} == {"shape", "albedo"}
    for f in F.FACTORS:
        assert f.low < f.high and f.low <= f.neutral <= f.high, f.name
        assert f.region in F.REGIONS and f.doc.strip(), f.name
    assert {f.region for f in F.FACTORS[14:]} == set(F.REGIONS)


# --- sampling ---------------------------------------------------------------------
@pytest.mark.parametrize("pose", ["frontal", "wide"])
def test_sampling_deterministic_and_in_range(pose):
    a = F.sample_factors(500, _gen(3), pose)
    b = F.sample_factors(500, _gen(3), pose)
    c = F.sample_factors(500, _gen(4), pose)
    assert a.shape == (500, len(F.FACTORS)) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    low, high = F.bounds()
    assert ((a >= low) & (a <= high)).all()
    assert (a.std(0) > 0).all(), "every factor varies"
    # binary-like attributes: absent in many faces, present in some
    for name in ("eyeglasses", "beard", "bangs"):
        present = (a[:, IDX[name]] > 0).float().mean()
        assert 0.05 < present < 0.6, name


def test_pose_presets():
    yaw = {p: F.sample_factors(4000, _gen(0), p)[:, IDX["yaw"]] for p in F.POSES}
    assert 12 < yaw["frontal"].std() < 22
    profile = {p: (y.abs() > 45).float().mean() for p, y in yaw.items()}
    assert profile["wide"] > 0.15 > 0.03 > profile["frontal"]
    assert yaw["wide"].abs().max() > 75
    with pytest.raises(ValueError):
        F.sample_factors(2, _gen(0), "sideways")


# --- maps ---------------------------------------------------------------------------
def test_maps_ranges_hold_for_extreme_vectors():
    g = _gen(1)
    wild = torch.cat(
        [
            torch.randn(6, len(F.FACTORS), generator=g) * 1e4,
            torch.full((1, len(F.FACTORS)), -1e6),
            torch.full((1, len(F.FACTORS)), 1e6),
            F.sample_factors(4, g),
        ]
    )
    for size in (SIZE, 64):
        depth, albedo = F.canonical_maps(wild, size)
        assert depth.shape == (12, size, size) and albedo.shape == (12, 3, size, size)
        assert torch.isfinite(depth).all() and torch.isfinite(albedo).all()
        assert depth.min() >= 0.9 and depth.max() <= 1.1
        assert albedo.min() >= 0.0 and albedo.max() <= 1.0
    normal = F.canonical_maps(F.sample_factors(32, g), 64)[0]
    face = normal[:, 20:44, 20:44]
    assert 0.9 < face.min() and face.max() < 1.01, "the face lies in front of the background"
    assert (normal[:, 0, 0] > 1.09).float().mean() > 0.5, "background plane near 1.1"


def _symmetric_faces(n, seed):
    f = F.sample_factors(n, _gen(seed), "wide")
    for name in ("yaw", "roll", "tx", "light_x"):
        f[:, IDX[name]] = 0.0
    return f


def test_mirror_symmetry_without_asymmetry():
    f = _symmetric_faces(6, 5)
    depth, albedo = F.canonical_maps(f, SIZE, asymmetry=0.0)
    assert torch.allclose(depth, depth.flip(-1), atol=1e-6)
    assert torch.allclose(albedo, albedo.flip(-1), atol=1e-5)
    image, mask = F.render_faces(f, SIZE, asymmetry=0.0)
    assert torch.equal(mask, mask.flip(-1))
    assert (image - image.flip(-1)).abs().max() < 1e-3


def test_asymmetry_breaks_mirror_symmetry():
    f = _symmetric_faces(6, 5)
    depth, albedo = F.canonical_maps(f, SIZE, asymmetry=1.0)
    assert (depth - depth.flip(-1)).abs().amax((1, 2)).min() > 1e-4
    assert (albedo - albedo.flip(-1)).abs().amax((1, 2, 3)).min() > 1e-2
    image, _ = F.render_faces(f, SIZE, asymmetry=1.0)
    assert (image - image.flip(-1)).abs().amax((1, 2, 3)).min() > 1e-2


# --- regions and locality -------------------------------------------------------------
def test_semantic_regions_partition_the_image():
    for size in (SIZE, 64, 65):
        m = F.region_masks(size)
        parts = torch.stack([m[f"region:{r}"] for r in F.REGIONS]).int()
        assert parts.shape == (3, size, size) and (parts.sum(0) == 1).all()
        assert (parts.sum((1, 2)) > size).all(), "no region is empty"
        assert set(m) == set(F.LOCAL_NAMES) | {f"region:{r}" for r in F.REGIONS}


def test_factor_masks_overlap_their_region():
    m = F.region_masks(64)
    for f in F.FACTORS[14:]:
        mask = m[f.name]
        assert mask.dtype == torch.bool and mask.any() and not mask.all(), f.name
        share = (mask & m[f"region:{f.region}"]).sum() / mask.sum()
        assert share > 0.3, (f.name, float(share))


@pytest.mark.parametrize("size", [SIZE, 64])
def test_each_local_factor_changes_only_its_region(size):
    bases = _bases(6, seed=size)
    low, high = F.bounds()
    masks = F.region_masks(size)
    for name in F.LOCAL_NAMES:
        i, group = IDX[name], F.FACTORS[IDX[name]].group
        maps = []
        for t in (0.0, 0.45, 1.0):  # hues are cyclic: low and high are the same colour
            x = bases.clone()
            x[:, i] = low[i] + t * (high[i] - low[i])
            maps.append(F.canonical_maps(x, size))
        for (d0, a0), (d1, a1) in ((maps[0], maps[1]), (maps[1], maps[2])):
            depth_change = (d1 - d0).abs()
            change = depth_change + (a1 - a0).abs().sum(1)
            assert change[:, ~masks[name]].max() == 0.0, f"{name} changes pixels outside its region"
            changed = (change > 1e-4).flatten(1).any(1)
            assert changed.float().mean() >= 0.5, f"{name} changes nothing in most faces"
            if group == "albedo":
                assert depth_change.max() == 0.0, f"albedo factor {name} changes depth"
            else:
                assert depth_change.max() > 1e-4, f"shape factor {name} leaves depth unchanged"


def test_gradients_are_finite_and_live_in_the_region():
    g = _gen(7)
    base = F.sample_factors(3, g)
    masks = F.region_masks(SIZE)
    for name in F.LOCAL_NAMES:
        f = F.FACTORS[IDX[name]]
        x = base.clone()
        x[:, IDX[name]] = f.low + (f.high - f.low) * torch.tensor([0.35, 0.5, 0.65])
        tangent = torch.zeros_like(x)
        tangent[:, IDX[name]] = 1.0
        _, (d_depth, d_albedo) = jvp(lambda z: F.canonical_maps(z, SIZE), (x,), (tangent,))
        d = d_depth.abs() + d_albedo.abs().sum(1)
        assert torch.isfinite(d).all(), name
        assert d[:, ~masks[name]].max() == 0.0, name
        # (a part can be hidden in one face, e.g. ears under long hair)
        assert (d[:, masks[name]].amax(1) > 1e-5).any(), f"{name}: zero gradient inside its region"
    # reverse mode through everything, including the renderer's inputs
    x = base.clone().requires_grad_(True)
    depth, albedo = F.canonical_maps(x, SIZE)
    (depth.sum() + albedo.sum()).backward()
    assert torch.isfinite(x.grad).all() and (x.grad[:, 14:] != 0).any(1).all()


def test_cropped_parts_equal_whole_image_parts():
    f = _bases(4, seed=11)
    for size in (SIZE, 64):
        d1, a1 = F.canonical_maps(f, size)
        d2, a2 = F.canonical_maps(f, size, _crop_parts=False)
        assert torch.allclose(d1, d2, atol=1e-6) and torch.allclose(a1, a2, atol=1e-5)


# --- rendering ---------------------------------------------------------------------
def test_render_faces():
    f = F.sample_factors(6, _gen(2), "wide")
    f[:3, IDX["yaw"]] = torch.tensor([0.0, 60.0, -80.0])
    image, mask = F.render_faces(f, SIZE, background=0.5)
    assert image.shape == (6, 3, SIZE, SIZE) and mask.shape == (6, 1, SIZE, SIZE)
    assert image.min() >= 0.0 and image.max() <= 1.0
    missed = (mask == 0).expand_as(image)
    assert missed.any() and (image[missed] == 0.5).all(), "rays that miss show the background value"
    centre = image[:, :, 12:20, 12:20]
    assert centre.std((1, 2, 3)).min() > 0.01, "faces are not flat colour"
    assert (mask[:, :, 12:20, 12:20] == 1).all(), "the face is hit at the centre"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(0)
    f = F.sample_factors(4, g, device="cuda")
    depth, albedo = F.canonical_maps(f, SIZE)
    assert depth.is_cuda and albedo.is_cuda
    cpu = F.canonical_maps(f.cpu(), SIZE)
    assert torch.allclose(depth.cpu(), cpu[0], atol=1e-5)
    assert torch.allclose(albedo.cpu(), cpu[1], atol=1e-4)
    image, mask = F.render_faces(f, SIZE)
    assert image.is_cuda and mask.is_cuda
    assert F.region_masks(SIZE, "cuda")["nose_length"].is_cuda
