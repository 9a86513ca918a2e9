"""Tests of models/decomposition.py: shapes, output ranges, depth handling, the mutual confidence net."""

import pytest
import torch

from models import decomposition as dm
from models.renderer import LIGHT_NAMES, VIEW_NAMES

TINY = dict(nf_map=8, zdim_map=16, nf_encoder=4, nf_conf=4, zdim_conf=8)


def images(b=3, r=32, seed=0):
    return torch.rand(b, 3, r, r, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def within(t, lo, hi, tol=1e-6):
    return float(t.min()) >= lo - tol and float(t.max()) <= hi + tol


def saturate(model, gain=50.0):
    """Scale every weight so that outputs hit the ends of their ranges."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn_like(p) * gain / p[0].numel() ** 0.5)
    return model


@pytest.mark.parametrize("r", [16, 32, 64])
def test_nets_shapes(r):
    x = images(2, r)
    assert dm.Encoder(3, 6, r, 4)(x).shape == (2, 6)
    assert dm.MapNet(3, 1, r, 4, 8)(x).shape == (2, 1, r, r)
    assert dm.ConfidenceNet(6, 1, r, 4, 8)(torch.cat([x, x], 1)).shape == (2, 1, r, r)
    with pytest.raises(ValueError):
        dm.Encoder(3, 6, 48)


@pytest.mark.parametrize("gain", [1.0, 50.0])
def test_decomposer_outputs_and_ranges(gain):
    torch.manual_seed(0)
    model = dm.Decomposer(resolution=32, **TINY)
    if gain != 1.0:
        saturate(model, gain)
    x = images()
    out = model(x)
    assert out.depth.shape == (3, 32, 32) and out.albedo.shape == (3, 3, 32, 32)
    assert out.view.shape == (3, 6) and out.light.shape == (3, 8)
    assert out.conf.shape == out.conf_flip.shape == (3, 1, 32, 32)
    out = out._replace(**{k: v.detach() for k, v in out._asdict().items()})
    assert within(out.depth, 0.9, 1.1) and within(out.albedo, 0, 1)
    assert within(out.view[:, :3], -60, 60) and within(out.view[:, 3:], -0.1, 0.1)
    assert within(out.light[:, :6], 0, 1) and within(out.light[:, 6:], -1, 1)
    assert float(out.conf.min()) >= 0.99e-4 and float(out.conf_flip.min()) >= 0.99e-4
    with torch.no_grad():
        sem = model.semantics(x)
    assert sem.shape == (3, 14) and dm.SEMANTIC_NAMES == VIEW_NAMES + LIGHT_NAMES
    torch.testing.assert_close(sem, torch.cat([out.view, out.light], 1))
    if gain != 1.0:  # saturated: the ranges are reached
        assert float(out.view[:, :3].abs().max()) > 59
        assert float(out.depth.max()) > 1.09 and float(out.depth[:, :, 1:-1].min()) < 0.91
    with pytest.raises(ValueError, match="resize"):
        model(images(r=16))


def test_custom_ranges():
    model = saturate(dm.Decomposer(resolution=16, rot_range=90.0, xy_range=0.05, z_range=0.2, **TINY))
    v = model(images(r=16)).view.detach()
    assert 85 < float(v[:, :3].abs().max()) and within(v[:, :3], -90, 90)
    assert within(v[:, 3:5], -0.05, 0.05) and within(v[:, 5], -0.2, 0.2)


def test_depth_from_raw_mean_and_border():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 16, 16, generator=g)
    d = dm.depth_from_raw(raw, 0.9, 1.1, border_px=2)
    # a constant offset of the raw output changes nothing: the mean is removed
    torch.testing.assert_close(dm.depth_from_raw(raw + 7.0, 0.9, 1.1, 2), d)
    # inside the border: 1 + 0.1 tanh(raw - mean)
    inner = 1.0 + 0.1 * torch.tanh(raw - raw.mean((1, 2), keepdim=True))
    torch.testing.assert_close(d[:, :, 2:-2], inner[:, :, 2:-2])
    # border columns (left and right only) at 0.7 max + 0.3 min
    assert torch.allclose(d[:, :, :2], torch.tensor(1.04)) and torch.allclose(d[:, :, -2:], torch.tensor(1.04))
    assert not torch.isclose(d[:, :2, 2:-2], torch.tensor(1.04)).all()
    # default border: 1 px at 32, 2 px at 64
    assert dm.Decomposer(resolution=32, **TINY).border_px == 1
    assert dm.Decomposer(resolution=64, **TINY).border_px == 2


def test_depth_prior_is_a_convex_bump():
    torch.manual_seed(0)
    flat = dm.Decomposer(resolution=32, depth_prior=0.0, **TINY)
    bump = dm.Decomposer(resolution=32, depth_prior=0.5, **TINY)
    bump.load_state_dict(flat.state_dict())  # the prior is not in the state dict
    assert "prior" not in bump.state_dict()
    x = images()
    with torch.no_grad():
        d0, d1 = flat(x).depth, bump(x).depth
    centre, side = (slice(None), slice(14, 18), slice(14, 18)), (slice(None), slice(14, 18), slice(2, 5))
    assert float((d1 - d0)[centre].mean()) < -0.01  # nearer in the middle
    assert float((d1 - d0)[side].mean()) > 0.0


def test_encoders_start_frontal_and_evenly_lit():
    model = dm.Decomposer(resolution=32, **TINY)
    with torch.no_grad():
        out = model(images())
    assert float(out.view.abs().max()) == 0.0
    torch.testing.assert_close(out.light, torch.tensor([[0.5] * 6 + [0.0] * 2]).expand(3, 8))


def test_mutual_conf_depends_on_both_images():
    torch.manual_seed(0)
    model = saturate(dm.Decomposer(resolution=32, **TINY), 1.5)
    x = images(2).requires_grad_()
    partner = images(2, seed=1).requires_grad_()
    sigma = model.mutual_conf(x, partner)
    assert sigma.shape == (2, 1, 32, 32) and float(sigma.detach().min()) > 0
    gx, gp = torch.autograd.grad(sigma.log().sum(), [x, partner])
    assert float(gx.abs().sum()) > 0 and float(gp.abs().sum()) > 0
    # and the value changes with the partner
    with torch.no_grad():
        other = model.mutual_conf(x, images(2, seed=2))
    assert float((other - sigma.detach()).abs().max()) > 1e-6


def test_state_dict_is_plain_tensors_and_sizes():
    model = dm.Decomposer()  # CPU default
    state = model.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    n = sum(p.numel() for p in model.parameters())
    assert 3e5 < n < 2e6
    big = dm.MapNet(3, 1, 64, 64, 256)  # Unsup3D's depth net
    assert 12.5e6 < sum(p.numel() for p in big.parameters()) < 13.5e6
    cfg = dm.DecomposerConfig.unsup3d()
    assert cfg.resolution == 64 and cfg.nf_map == 64 and cfg.zdim_map == 256


def test_resize():
    from models.resize import resize
    from store.datasets import resize_uint8

    x = images(2, 64)
    y = resize(x, 32)
    assert y.shape == (2, 3, 32, 32)
    torch.testing.assert_close(y[0, 0, 0, 0], x[0, 0, :2, :2].mean())  # area average when shrinking
    assert resize(y, 32) is y
    assert resize(y, 64).shape == (2, 3, 64, 64)
    u8 = ((x * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)  # the uint8 variant: same rule, rounded
    torch.testing.assert_close(resize_uint8(u8, 32), resize(u8.float(), 32).round().to(torch.uint8))


def test_repivot_compensates_a_moved_depth_and_fit_pivot_recovers_a_planted_offset():
    from models import faces as face_model
    from models.renderer import render

    factors = face_model.sample_factors(4, torch.Generator().manual_seed(3), pose="frontal")
    depth, albedo = face_model.canonical_maps(factors, 32)
    light = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.2, -0.1]]).expand(4, -1)
    view = torch.zeros(4, 6)
    view[:, :3] = torch.tensor([[10.0, 30.0, 0.0], [-5.0, -25.0, 5.0], [0.0, 40.0, -8.0], [12.0, 0.0, 0.0]])
    offset, along_z = 0.02, torch.tensor([0, 0, 0, 0, 0, 1.0])
    seen, _ = render(depth, albedo, view, light)
    moved, _ = render(depth + offset, albedo, dm.repivot(view, offset) - offset * along_z, light)
    naive, _ = render(depth + offset, albedo, view - offset * along_z, light)
    err, naive_err = (moved - seen).abs().mean((1, 2, 3)), (naive - seen).abs().mean((1, 2, 3))
    assert (err[:3] < 0.35 * naive_err[:3]).all(), (err, naive_err)  # the turned faces
    torch.testing.assert_close(dm.repivot(view, offset)[:, :3], view[:, :3])
    # planted: translations independent of rotation, seen through a depth level 0.03 off
    g = torch.Generator().manual_seed(0)
    views = torch.cat(
        [torch.randn(2000, 3, generator=g) * torch.tensor([8.0, 20.0, 5.0]), torch.randn(2000, 3, generator=g) * 0.01],
        1,
    )
    seen_views = dm.repivot(views, -0.03)  # tx, ty now carry 0.03 (R z - z)
    offset = dm.fit_pivot(seen_views)
    assert abs(offset - 0.03) < 0.002

    def r(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert r(seen_views[:, 3], views[:, 3]) < 0.8 and r(dm.repivot(seen_views, offset)[:, 3], views[:, 3]) > 0.995
    assert abs(dm.fit_pivot(views)) < 0.002
    assert dm.fit_pivot(torch.zeros(10, 6)) == 0.0  # no rotation: nothing to fit
    model = dm.Decomposer(resolution=16, **TINY)
    x = images(r=16)
    raw = model.semantics(x)
    model.pivot_offset = 0.05
    torch.testing.assert_close(model.semantics(x)[:, :6], dm.repivot(raw[:, :6], 0.05))
