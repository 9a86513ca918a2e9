"""Tests of models/linear_semantics.py (paper Sec. 3.3, Eq. 2-4) and models/recon_metrics.py."""

import math
import warnings

import pytest
import torch

from models import linear_semantics as ls
from models import recon_metrics as rm


def planted(n, d, k=1, noise=0.1, seed=0):
    """w [n, d] ~ N(0, I), y = w V_true + noise, V_true [d, k] with unit columns scaled by 5."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    v = ls.unit(torch.randn(k, d, generator=g)).T * 5.0
    y = w @ v + noise * torch.randn(n, k, generator=g) + 3.0  # an offset: differences remove it
    return w, y, v


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


# ------------------------------------------------------------------ pairs


def test_derangement_has_no_fixed_point_and_is_a_permutation():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 64):
        for _ in range(20):
            p = ls.derangement(n, g)
            assert sorted(p.tolist()) == list(range(n))
            assert not (p == torch.arange(n)).any()
    with pytest.raises(ValueError):
        ls.derangement(1)


@pytest.mark.parametrize("scheme,m", [("random", 10), ("reference", 9), ("consecutive", 9)])
def test_pair_differences_schemes(scheme, m):
    w = torch.arange(30.0).view(10, 3)
    y = torch.arange(10.0) * 2
    dw, dy = ls.pair_differences(w, y, scheme, torch.Generator().manual_seed(0))
    assert dw.shape == (m, 3) and dy.shape == (m,)
    # every difference is consistent: row i of w is 3 i + (0, 1, 2), y_i = 2 i
    torch.testing.assert_close(dy, dw[:, 0] * 2 / 3)
    assert (dw != 0).all()
    if scheme == "reference":
        torch.testing.assert_close(dw[:, 0], torch.arange(1.0, 10.0) * 3)
    if scheme == "consecutive":
        torch.testing.assert_close(dw, torch.full((9, 3), 3.0))
    with pytest.raises(ValueError):
        ls.pair_differences(w, y, "nope")


# ------------------------------------------------------------------ regression


@pytest.mark.parametrize("scheme", ls.SCHEMES)
def test_regression_recovers_planted_direction(scheme):
    w, y, v = planted(2000, 64, noise=2.0)
    dw, dy = ls.pair_differences(w, y[:, 0], scheme, torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # N > d: no warning
        est = ls.regress_directions(dw, dy)
    assert est.shape == (64,)
    assert cosine(est, v[:, 0]) > 0.99
    assert abs(est.norm() / v[:, 0].norm() - 1) < 0.05  # the slope too, not only the direction


def test_regression_several_semantics_and_streaming_equals_one_shot():
    w, y, v = planted(600, 20, k=3, noise=0.5, seed=2)
    dw, dy = ls.pair_differences(w, y, "consecutive")
    one = ls.regress_directions(dw, dy, ridge=0.1)
    eq = ls.NormalEquations(20, 3)
    for a, b in zip(dw.split(128), dy.split(128)):
        eq.add(a, b)
    # two shards merged
    eq2 = ls.NormalEquations(20, 3).add(dw[:250], dy[:250]).merge(ls.NormalEquations(20, 3).add(dw[250:], dy[250:]))
    torch.testing.assert_close(eq.solve(0.1).float(), one)
    torch.testing.assert_close(eq2.solve(0.1).float(), one)
    assert eq.n == dw.shape[0]
    back = ls.NormalEquations.from_state_dict(eq.state_dict())
    torch.testing.assert_close(back.solve(0.1), eq.solve(0.1))
    for j in range(3):
        assert cosine(one[:, j], v[:, j]) > 0.99


def test_regression_underdetermined_warns_and_stays_finite():
    w, y, v = planted(40, 64, noise=0.1)
    dw, dy = ls.pair_differences(w, y[:, 0], "random", torch.Generator().manual_seed(0))
    with pytest.warns(RuntimeWarning, match="N = 40 <= d = 64"):
        est = ls.regress_directions(dw, dy)
    assert torch.isfinite(est).all() and est.norm() > 0
    assert cosine(est, v[:, 0]) > 0.5  # a projection of the truth onto the sampled subspace
    # exactly collinear columns (N > d but singular): warns, finite
    dw2 = torch.cat([dw, dw[:, :1]], 1).repeat(3, 1)
    with pytest.warns(RuntimeWarning, match="near-singular"):
        est2 = ls.regress_directions(dw2, dy.repeat(3))
    assert torch.isfinite(est2).all()
    # all zeros: finite (zero) answer, no crash
    with pytest.warns(RuntimeWarning):
        assert torch.count_nonzero(ls.regress_directions(torch.zeros(5, 4), torch.zeros(5))) == 0
    # an explicit ridge on N <= d is a regular system: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(ls.regress_directions(dw, dy, ridge=1.0)).all()


# ------------------------------------------------------------------ Eq. 4


def test_projection_std_streams_a_zarr_array_in_chunks(tmp_path):
    """sigma_w of k directions over a Zarr w, 7 rows at a time, equals the in-memory std (N - 1)."""
    import zarr

    g = torch.Generator().manual_seed(3)
    w = torch.randn(50, 6, generator=g, dtype=torch.float64) * 3 + 5  # non-zero mean
    v = torch.randn(3, 6, generator=g, dtype=torch.float64) * 4
    store = zarr.open_array(str(tmp_path / "w.zarr"), mode="w", shape=w.shape, chunks=(16, 6), dtype="float64")
    store[:] = w.numpy()
    expect = (w @ (v / v.norm(dim=1, keepdim=True)).T).std(0)
    torch.testing.assert_close(ls.projection_std(store, v, chunk=7), expect)
    torch.testing.assert_close(ls.projection_std(w, v[1]), expect[1])  # one direction -> 0-d


def test_manipulate_keeps_orthogonal_part_and_sets_projection():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g) * 2
    v = torch.randn(16, generator=g) * 7.0  # any norm
    vh = v / v.norm()
    sigma = ls.projection_std(torch.randn(500, 16, generator=g) * 2, v)
    assert abs(float(sigma) - 2.0) < 0.2
    s = torch.linspace(-10, 10, 8)
    ws = ls.manipulate(w, v, s, sigma)
    ortho = lambda x: x - (x @ vh)[:, None] * vh  # noqa: E731
    torch.testing.assert_close(ortho(ws), ortho(w))
    torch.testing.assert_close(ws @ vh, s * sigma)
    # scalar s
    torch.testing.assert_close(ls.manipulate(w, v, 1.5, 2.0) @ vh, torch.full((8,), 3.0))


# ------------------------------------------------------------------ metrics


def face_like(b=2, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    d = 1.0 + 0.04 * (xx**2 + yy**2) - 0.03 * torch.exp(-(xx**2 + yy**2) / 0.1)
    return d + 0.005 * torch.rand(b, size, size, generator=g)


def test_side_and_mad_zero_for_identical_maps():
    d = face_like()
    assert float(rm.scale_invariant_depth_error(d, d).abs().max()) < 1e-6
    assert float(rm.mean_angle_deviation(d, d).abs().max()) < 1e-4


def test_side_is_scale_invariant_and_matches_definition():
    d, e = face_like(seed=0), face_like(seed=1)
    mask = torch.zeros(2, 24, 24, dtype=torch.bool)
    mask[:, 4:20, 3:21] = True
    side = rm.scale_invariant_depth_error(d, e, mask)
    torch.testing.assert_close(rm.scale_invariant_depth_error(1.7 * d, e, mask), side)
    torch.testing.assert_close(rm.scale_invariant_depth_error(d, 0.6 * e, mask[:, None]), side)
    diff = (d.log() - e.log())[0][mask[0]].double()
    ref = math.sqrt(float((diff**2).mean() - diff.mean() ** 2))
    assert abs(float(side[0]) - ref) < 1e-6
    assert float(side.min()) > 0


def test_mad_of_tilted_plane_is_its_tilt():
    size, fov = 32, 10.0
    f = (size - 1) / 2 / math.tan(math.radians(fov) / 2)
    x = ((torch.arange(size) - (size - 1) / 2) / f).expand(size, size)
    y = x.T
    frontal = torch.ones(1, size, size)
    for deg in (5.0, 20.0, 40.0):
        t = math.tan(math.radians(deg))
        # plane through (0, 0, 1) with normal (sin, 0, -cos): z = 1 / (1 - tan * x); and tilted about x
        for plane in (1 / (1 - t * x), 1 / (1 - t * y)):
            mad = rm.mean_angle_deviation(plane[None], frontal, fov_deg=fov)
            assert abs(float(mad) - deg) < 1e-3


def test_angle_errors_wrap():
    a = torch.tensor([[10.0, 179.0, -5.0, 0, 0, 0]])
    b = torch.tensor([[-10.0, -179.0, 5.0, 1, 1, 1]])
    torch.testing.assert_close(rm.angle_errors(a, b), torch.tensor([[20.0, 2.0, 10.0]]))


def test_erode_shrinks_by_one_pixel():
    m = torch.zeros(1, 1, 9, 9)
    m[..., 2:7, 2:7] = 1
    e = rm.erode(m, 1)
    assert e.sum() == 9 and e[0, 0, 3:6, 3:6].all()
    assert rm.erode(m[:, 0].bool(), 2)[0].sum() == 1


def test_entangled_directions_are_those_moving_another_semantic_more():
    from models.linear_semantics import entangled_directions

    effect = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.2, 0.1], [0.0, -0.3, 0.3]])  # roll moves yaw more than roll
    found = entangled_directions(effect, ["yaw", "roll", "tx"])
    assert found == {"roll": {"moves_more": "yaw", "other": 0.5, "own": 0.2}}  # tx: a tie is not entangled


def test_entangled_directions_count_every_measured_factor():
    from models.linear_semantics import entangled_directions

    # light_y's direction moves hair colour (a factor that is not one of the directions) most
    effect = torch.tensor([[0.9, 0.1, 0.2], [0.05, 0.09, -0.24]])
    found = entangled_directions(effect, ["yaw", "light_y"], ["yaw", "light_y", "hair_colour"])
    assert found == {"light_y": {"moves_more": "hair_colour", "other": 0.24, "own": 0.09}}
    with pytest.raises(ValueError, match=r"lack the directions' own semantics \['light_y'\]"):
        entangled_directions(effect, ["yaw", "light_y"], ["yaw", "tx", "hair_colour"])
