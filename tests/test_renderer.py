"""Tests of models/renderer.py against a brute-force float64 ray marcher.

The reference below is deliberately independent of the module: scipy's
rotations and bilinear interpolation, a dense march along each view ray in
view-frame z, and bisection on the first sign change.
"""

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, map_coordinates
from scipy.spatial.transform import Rotation

from models import renderer as R

FOV = 10.0


# ---------------------------------------------------------------- test data


def face_depth(size, seed):
    """Smooth faces-like depth [size, size] in [0.9, 1.1]: a head curving away,
    a nose and random bumps."""
    g = np.random.default_rng(seed)
    x = np.linspace(-1, 1, size)
    yy, xx = np.meshgrid(x, x, indexing="ij")
    d = 1.0 + 0.05 * (xx**2 + yy**2)
    d -= 0.06 * np.exp(-((xx / 0.15) ** 2) - ((yy + 0.05) / 0.35) ** 2)
    for _ in range(6):
        cx, cy = g.uniform(-0.8, 0.8, 2)
        d += g.uniform(-0.02, 0.02) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / g.uniform(0.15, 0.5) ** 2)
    return np.clip(d, 0.9, 1.1)


def random_views(seed, yaws):
    g = np.random.default_rng(seed)
    return np.array(
        [[g.uniform(-15, 15), y, g.uniform(-10, 10), *g.uniform(-0.03, 0.03, 2), g.uniform(-0.05, 0.05)] for y in yaws]
    )


# ---------------------------------------------------------------- reference


def reference_warp(depth, canon, view, steps=4000, zrange=(0.7, 1.3)):
    """Brute force: depth [S, S], canon [C, S, S], view (6,) -> image, mask, view z (float64)."""
    size = depth.shape[0]
    c = (size - 1) / 2
    f = c / math.tan(math.radians(FOV) / 2)
    rot = Rotation.from_euler("xyz", view[:3], degrees=True).as_matrix()  # Rz @ Ry @ Rx
    c0, t = np.array([0.0, 0.0, 1.0]), np.asarray(view[3:6], float)
    vv, uu = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ray = np.stack([(uu - c) / f, (vv - c) / f, np.ones(uu.shape)], -1).reshape(-1, 1, 3)

    def side(s):  # s [n, k] view z -> (canonical z - depth, inside the square, u, v)
        p = (s[..., None] * ray - c0 - t) @ rot + c0  # R^T (X - c0 - T) + c0
        u, v = f * p[..., 0] / p[..., 2] + c, f * p[..., 1] / p[..., 2] + c
        inside = (u >= 0) & (u <= size - 1) & (v >= 0) & (v <= size - 1)
        d = map_coordinates(depth, [v.ravel().clip(0, size - 1), u.ravel().clip(0, size - 1)], order=1)
        return p[..., 2] - d.reshape(u.shape), inside, u, v

    n = ray.shape[0]
    s = np.broadcast_to(np.linspace(*zrange, steps), (n, steps))
    fs, inside, _, _ = side(s)
    change = (np.sign(fs[:, :-1]) != np.sign(fs[:, 1:])) & inside[:, :-1] & inside[:, 1:]
    hit, k = change.any(1), change.argmax(1)
    sa, sb, fa = s[np.arange(n), k], s[np.arange(n), k + 1], np.sign(fs[np.arange(n), k])
    for _ in range(60):
        sm = (sa + sb) / 2
        same = np.sign(side(sm[:, None])[0][:, 0]) == fa
        sa, sb = np.where(same, sm, sa), np.where(same, sb, sm)
    sh = (sa + sb) / 2
    _, _, u, v = side(sh[:, None])
    coords = [v[:, 0].clip(0, size - 1), u[:, 0].clip(0, size - 1)]
    img = np.stack([map_coordinates(ch, coords, order=1) for ch in canon])
    img = np.where(hit, img, 0.0).reshape(-1, size, size)
    return img, hit.reshape(size, size), np.where(hit, sh, 0.0).reshape(size, size)


def edge_pixels(mask, z, jump=5e-3):
    """Pixels within 1 px of a silhouette or of a view-depth discontinuity."""
    edge = binary_dilation(mask, np.ones((3, 3))) & ~mask | mask & ~np.all(
        [np.roll(mask, s, a) for s in (-1, 1) for a in (0, 1)], 0
    )
    for a in (0, 1):
        step = np.abs(np.diff(z, axis=a)) > jump
        pad = [(0, 0), (0, 0)]
        pad[a] = (0, 1)
        edge |= np.pad(step, pad) | np.pad(step, [(p[1], p[0]) for p in pad])
    return binary_dilation(edge, np.ones((3, 3)))


@pytest.fixture(scope="module")
def reference_cases():
    size, cases = 32, []
    views = random_views(0, [0, 20, -30, 45, 60, -60])
    for i, view in enumerate(views):
        depth = face_depth(size, i)
        canon = np.random.default_rng(100 + i).uniform(0, 1, (3, size, size))
        cases.append((depth, canon, view, reference_warp(depth, canon, view)))
    return cases


# ---------------------------------------------------------------- camera basics


def test_intrinsics_and_points():
    k = R.intrinsics(64, dtype=torch.float64)
    f = 31.5 / math.tan(math.radians(5))
    assert torch.allclose(k, torch.tensor([[f, 0, 31.5], [0, f, 31.5], [0, 0, 1]], dtype=torch.float64))
    depth = torch.rand(2, 64, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.2 + 0.9
    p = R.depth_to_points(depth)
    uv1 = torch.einsum("ij,bhwj->bhwi", k, p / p[..., 2:])  # reprojects to the pixel centres
    vv, uu = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    assert torch.allclose(uv1[..., 0], uu.double().expand(2, -1, -1), atol=1e-9)
    assert torch.allclose(uv1[..., 1], vv.double().expand(2, -1, -1), atol=1e-9)
    assert torch.equal(p[..., 2], depth)


def test_rotation_matrix_matches_scipy():
    g = torch.Generator().manual_seed(0)
    angles = torch.rand(8, 3, generator=g, dtype=torch.float64) * 180 - 90
    rot = R.rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    ref = Rotation.from_euler("xyz", angles.numpy(), degrees=True).as_matrix()
    assert np.allclose(rot.numpy(), ref, atol=1e-12)
    # Ry convention of the brief: [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]
    ry = R.rotation_matrix(torch.zeros(1), torch.full((1,), 30.0), torch.zeros(1))[0]
    s, c = math.sin(math.radians(30)), math.cos(math.radians(30))
    assert torch.allclose(ry, torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]]), atol=1e-6)


# ---------------------------------------------------------------- shading


def test_plane_normals_and_shading():
    b, size = 3, 16
    plane = torch.ones(b, size, size, dtype=torch.float64)
    n = R.depth_to_normals(plane)
    assert torch.allclose(n, torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64).view(1, 3, 1, 1).expand_as(n))
    g = torch.Generator().manual_seed(2)
    albedo = torch.rand(b, 3, size, size, generator=g, dtype=torch.float64)
    light = torch.rand(b, 8, generator=g, dtype=torch.float64)
    light[:, 6:] = 0  # frontal light: n.l = 1
    img = R.shade(plane, albedo, light)
    assert torch.allclose(img, albedo * (light[:, :3] + light[:, 3:6])[:, :, None, None], atol=1e-12)
    light[:, 6:] = torch.tensor([0.5, -0.3], dtype=torch.float64)  # oblique: n.l = 1 / |(lx, ly, -1)|
    cos = 1 / math.sqrt(1 + 0.25 + 0.09)
    img = R.shade(plane, albedo, light)
    assert torch.allclose(img, albedo * (light[:, :3] + light[:, 3:6] * cos)[:, :, None, None], atol=1e-12)


def test_tilted_plane_normal_and_light_side():
    size = 16
    normal = torch.tensor([0.3, -0.2, -1.0], dtype=torch.float64)
    normal = normal / normal.norm()
    # plane n.P = n.c0 through c0 = (0, 0, 1): depth = (n.c0) / (n . K^-1 [u, v, 1])
    rays = R.depth_to_points(torch.ones(1, size, size, dtype=torch.float64))
    depth = normal[2] / (rays @ normal)
    n = R.depth_to_normals(depth)
    assert torch.allclose(n, normal.view(1, 3, 1, 1).expand_as(n), atol=1e-10)
    # the plane faces +x (n_x > 0): light from +x makes it brighter than light from -x
    albedo = torch.ones(1, 3, size, size, dtype=torch.float64)
    light = torch.tensor([[0.0, 0, 0, 1, 1, 1, 0.8, 0.0]], dtype=torch.float64)
    bright = R.shade(depth, albedo, light)
    light[0, 6] = -0.8
    assert (bright > R.shade(depth, albedo, light)).all()


# ---------------------------------------------------------------- warp vs reference


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_warp_matches_brute_force(reference_cases, dtype):
    tol_c, tol_z = (1e-9, 1e-10) if dtype == torch.float64 else (2e-3, 2e-5)
    depth = torch.tensor(np.stack([c[0] for c in reference_cases]), dtype=dtype)
    canon = torch.tensor(np.stack([c[1] for c in reference_cases]), dtype=dtype)
    view = torch.tensor(np.stack([c[2] for c in reference_cases]), dtype=dtype)
    img, mask, z = R.warp(canon, depth, view)
    assert img.dtype == dtype and mask.shape == (len(reference_cases), 1, 32, 32)
    img, mask, z = img.double().numpy(), mask[:, 0].numpy() > 0.5, z.double().numpy()
    mismatched = 0
    for i, (_, _, _, (rimg, rmask, rz)) in enumerate(reference_cases):
        both = mask[i] & rmask
        assert np.abs(img[i][:, both] - rimg[:, both]).max() < tol_c
        assert np.abs(z[i][both] - rz[both]).max() < tol_z
        assert (img[i][:, ~mask[i]] == 0).all() and (z[i][~mask[i]] == 0).all()
        diff = mask[i] != rmask
        assert not (diff & ~edge_pixels(rmask, rz)).any(), f"case {i}: mask differs away from edges"
        mismatched += diff.sum()
    assert mismatched <= 0.005 * mask.size  # measured: 0-3 sliver pixels per 1024 (the reference's step misses them)


def test_frontal_view_reproduces_canonical():
    g = torch.Generator().manual_seed(1)
    depth = torch.tensor(np.stack([face_depth(32, s) for s in range(3)]), dtype=torch.float32)
    canon = torch.rand(3, 4, 32, 32, generator=g)
    img, mask, z = R.warp(canon, depth, torch.zeros(3, 6))
    assert mask.all()
    assert torch.allclose(img, canon, atol=1e-5)
    assert torch.allclose(z, depth, atol=1e-6)


def test_yaw_turns_nose_left_and_misses():
    size = 32
    depth = torch.tensor(face_depth(size, 0), dtype=torch.float64)[None]
    tip = np.unravel_index(depth[0].argmin().item(), (size, size))  # nose tip (v, u)
    view = torch.tensor([[0.0, 30.0, 0, 0, 0, 0]], dtype=torch.float64)
    hits = R.raycast(depth, view)
    dist = (hits.uv[0] - torch.tensor([tip[1], tip[0]], dtype=torch.float64)).norm(dim=-1)
    dist[~hits.mask[0]] = math.inf
    v, u = np.unravel_index(dist.argmin().item(), (size, size))
    assert u < tip[1] - 2  # positive yaw moves the nose towards image left
    # a view that looks past the face sees nothing
    img, mask, z = R.warp(
        torch.ones(1, 3, size, size, dtype=torch.float64),
        depth,
        torch.tensor([[0.0, 0, 0, 0.5, 0, 0]], dtype=torch.float64),
        background=0.25,
    )
    assert not mask.any() and (img == 0.25).all() and (z == 0).all()


def test_jagged_depth_never_skips_a_hit():
    """Per-pixel noise depth (many thin slivers): wherever the dense reference finds a
    hit, ours is a hit that is not further away (it may find slivers the reference
    steps over)."""
    size, g = 16, np.random.default_rng(11)
    for yaw in [0, 35, -60]:
        depth = g.uniform(0.9, 1.1, (size, size))
        view = np.array([g.uniform(-10, 10), yaw, g.uniform(-5, 5), 0.0, 0.0, 0.0])
        _, rmask, rz = reference_warp(depth, np.zeros((1, size, size)), view, steps=20000)
        hits = R.raycast(torch.tensor(depth)[None], torch.tensor(view)[None])
        mask, z = hits.mask[0].numpy(), hits.view_depth[0].numpy()
        assert not (rmask & ~mask).any()
        assert (z[rmask] <= rz[rmask] + 1e-9).all()
        assert (np.abs(z - rz)[rmask] > 1e-9).mean() < 0.02


def test_view_directions():
    """Positive pitch turns the nose down, positive roll turns the face clockwise."""
    size = 32
    depth = torch.tensor(face_depth(size, 0), dtype=torch.float64)[None]
    tip = torch.tensor(np.unravel_index(depth[0].argmin().item(), (size, size))[::-1], dtype=torch.float64)

    def where_is(canon_uv, view):  # output pixel (u, v) showing canonical point canon_uv
        hits = R.raycast(depth, torch.tensor([view], dtype=torch.float64))
        dist = (hits.uv[0] - canon_uv).norm(dim=-1)
        dist[~hits.mask[0]] = math.inf
        v, u = np.unravel_index(dist.argmin().item(), (size, size))
        return u, v

    assert where_is(tip, [30.0, 0, 0, 0, 0, 0])[1] > tip[1] + 2  # pitch: nose down (+v)
    right = torch.tensor([size - 4.0, (size - 1) / 2], dtype=torch.float64)  # a point right of the centre
    u, v = where_is(right, [0.0, 0, 30.0, 0, 0, 0])
    assert v > right[1] + 3 and u < right[0]  # roll: +x towards +y (clockwise on screen)


def test_degenerate_views_are_finite():
    """Rays nearly parallel to the canonical image (yaw ~ 90) and views that miss
    everything give finite values and gradients."""
    size = 16
    depth = torch.tensor(np.stack([face_depth(size, s) for s in range(3)])).requires_grad_()
    view = torch.tensor(
        [[0.0, 90.0, 0, 0, 0, 0], [0.0, 89.9, 0, 0, 0, 0], [0.0, 0, 0, 2.0, 0, 0]], dtype=torch.float64
    ).requires_grad_()
    albedo = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    albedo.requires_grad_()
    light = torch.tensor([[0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.2, -0.1]], dtype=torch.float64).repeat(3, 1)
    img, mask = R.render(depth, albedo, view, light)
    assert torch.isfinite(img).all() and not mask[2].any()
    img.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (depth, view, albedo))


# ---------------------------------------------------------------- gradients


def _interior(depth, view):
    """Hit pixels away from silhouettes and occlusion edges (stable under tiny perturbations):
    all 8 neighbours hit too, with canonical hit points less than 2.5 canonical px apart."""
    with torch.no_grad():
        hits = R.raycast(depth, view)
    m, uv = hits.mask.numpy(), hits.uv.numpy()
    keep = m.copy()
    for dv in (-1, 0, 1):
        for du in (-1, 0, 1):
            nm = np.roll(m, (dv, du), (1, 2))
            jump = np.linalg.norm(np.roll(uv, (dv, du), (1, 2)) - uv, axis=-1) > 2.5 * max(abs(du), abs(dv), 1)
            keep &= nm & ~jump
    keep[:, [0, -1]] = keep[:, :, [0, -1]] = False
    return torch.tensor(keep)


@pytest.fixture(scope="module")
def small_problem():
    size = 16
    depth = torch.tensor(np.stack([face_depth(size, 7), face_depth(size, 8)]), dtype=torch.float64)
    view = torch.tensor(
        [[8.0, 35.0, -6.0, 0.01, -0.02, 0.03], [-5.0, -50.0, 4.0, -0.01, 0.01, -0.02]], dtype=torch.float64
    )
    g = torch.Generator().manual_seed(3)
    albedo = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64)
    light = torch.tensor(
        [[0.3, 0.4, 0.5, 0.6, 0.5, 0.4, 0.1, -0.2], [0.2, 0.2, 0.3, 0.7, 0.6, 0.8, -0.2, 0.1]], dtype=torch.float64
    )
    keep = _interior(depth, view)
    assert keep.sum() > 100
    return depth, albedo, view, light, keep


def _check(fn, inputs, fast=False):
    """Analytic Jacobian vs central finite differences (fast: random projections of it)."""
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast)


def test_gradients_albedo_light(small_problem):
    depth, albedo, view, light, keep = small_problem
    _check(
        lambda a, lt: R.render(depth, a, view, lt)[0].permute(0, 2, 3, 1)[keep],
        (albedo.clone().requires_grad_(), light.clone().requires_grad_()),
        fast=True,
    )


def test_gradients_view(small_problem):
    depth, albedo, view, light, keep = small_problem

    def fn(v):
        img, _, z = R.warp(R.shade(depth, albedo, light), depth, v)
        return torch.cat([img.permute(0, 2, 3, 1)[keep].flatten(), z[keep]])

    _check(fn, (view.clone().requires_grad_(),))


def test_gradients_depth(small_problem):
    depth, albedo, view, light, keep = small_problem

    def fn(d):
        img, _, z = R.warp(R.shade(d, albedo, light), d, view)
        return torch.cat([img.permute(0, 2, 3, 1)[keep].flatten(), z[keep]])

    _check(fn, (depth.clone().requires_grad_(),))


def test_float32_backward_is_finite():
    size = 32
    depth = torch.tensor(np.stack([face_depth(size, s) for s in range(4)]), dtype=torch.float32).requires_grad_()
    view = torch.tensor(random_views(5, [0, 30, -60, 60]), dtype=torch.float32).requires_grad_()
    albedo = torch.rand(4, 3, size, size, generator=torch.Generator().manual_seed(0)).requires_grad_()
    light = torch.tensor([[0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.2, -0.1]]).repeat(4, 1).requires_grad_()
    img, mask = R.render(depth, albedo, view, light)
    (img * mask).sum().backward()
    for t in (depth, view, albedo, light):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_non_finite_inputs_raise_a_clear_error():
    depth = torch.full((1, 8, 8), 1.0)
    depth[0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        R.render(depth, torch.rand(1, 3, 8, 8), torch.zeros(1, 6), torch.ones(1, 8))
