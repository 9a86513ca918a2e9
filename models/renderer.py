"""Differentiable face renderer: Unsup3D's image formation model in pure PyTorch.

A canonical depth map + albedo is shaded (Lambertian, ambient + diffuse light) in
the canonical frame, then seen from a rotated / translated perspective camera.
There is no mesh rasterizer: the ray of every output pixel is intersected with
the canonical height field and the canonical image is sampled bilinearly (on
CPU or GPU, following the inputs' device and dtype) where the ray first hits.

How the first hit is found (``raycast``), exactly for any depth map:
1. a conservative z-buffer of the canonical cells (each cell = the bilinear patch
   between 4 pixel centres, splatted over the bounding box of its projection)
   bounds each output ray's first hit between a near and a far view depth;
2. in the canonical frame, parametrised by inverse depth w, a ray projects to a
   straight line of the canonical image and the surface test is
   F(w) = w * D(u(w), v(w)) - 1 = 0, a cubic in w inside each cell. Each ray is
   walked cell by cell from its near bound (2D DDA); the signs of the cubic at
   the segment ends and at its critical points bracket the first root, which a
   few Newton steps polish. Most rays end in their first cell; the others get
   4x more cells per round;
3. one differentiable Newton step w - F(w)/F'(w) (F' detached) re-attaches the
   root to the graph, which gives exactly the implicit-function gradient.

Conventions (other modules rely on them)
-----------------------------------------
* Images are square, side ``size``. Pixel (u, v): u = column (x, right),
  v = row (y, down), pixel centres at integers 0..size-1.
* Camera at the origin looking along +z, perspective, field of view ``fov_deg``
  (default 10): f = (size-1)/2 / tan(fov/2), c = (size-1)/2,
  K = [[f, 0, c], [0, f, c], [0, 0, 1]]. World units: the face centre is at
  c0 = (0, 0, 1); a 64 px image spans about 0.175 units at z = 1.
* ``depth`` [B, H, W]: z of the surface point seen by canonical pixel (u, v),
  P = depth[v, u] * K^-1 [u, v, 1]; values about [0.9, 1.1]. The surface is the
  height field over the pixel-centre square [0, size-1]^2 with bilinear
  interpolation of depth; outside that square there is no surface.
* ``view`` [B, 6] = (pitch, yaw, roll, tx, ty, tz), rotations in DEGREES,
  R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (standard right-handed matrices),
  translations in world units. A canonical point P goes to the view frame as
  P' = R (P - c0) + c0 + T. In the image (y down):
    - positive yaw turns the nose towards image LEFT (-x), showing more of the
      face's image-right (+x) half;
    - positive pitch turns the nose DOWN (+y);
    - positive roll turns the face CLOCKWISE on screen (+x towards +y).
* ``light`` [B, 8] = (amb_r, amb_g, amb_b, diff_r, diff_g, diff_b, light_x,
  light_y). Shading is done in the canonical frame: unit normals n point towards
  the camera (a frontal plane has n = (0, 0, -1)); the light direction is
  l = normalize(light_x, light_y, -1), so (0, 0) lights from the camera and
  light_x > 0 lights surfaces facing +x. canonical image =
  albedo * (amb + diff * max(0, n.l)) per RGB channel, not clamped.

Gradients flow to depth (through the hit position and the shading), albedo,
view (all 6) and light. Visibility changes at silhouettes are not differentiable
(as with any rasterizer). Valid for views that keep the face in front of the
camera and rotate it by less than 90 degrees from frontal.

Speed (benchmarks/renderer.py, batch 128 at 64x64, yaw 0 / 30 / 60, 2 CPU threads,
one other job on the machine): 0.07-0.08 s forward, 0.11-0.13 s forward + backward;
a dense fixed-step ray march is about 6x slower and a naive z-buffer 20-80x.
"""

import math
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

VIEW_NAMES = ("pitch", "yaw", "roll", "tx", "ty", "tz")
LIGHT_NAMES = ("amb_r", "amb_g", "amb_b", "diff_r", "diff_g", "diff_b", "light_x", "light_y")
FACE_CENTRE = (0.0, 0.0, 1.0)

_EDGE_TOL = 1e-4  # px: tolerance of the "inside the pixel-centre square" test


def _focal(size, fov_deg):
    """Focal length f and principal point c, in pixels."""
    c = (size - 1) / 2
    return c / math.tan(math.radians(fov_deg) / 2), c


def intrinsics(size: int, fov_deg: float = 10.0, device=None, dtype=None) -> torch.Tensor:
    """Camera matrix K [3, 3] for a square image of side ``size``."""
    f, c = _focal(size, fov_deg)
    return torch.tensor([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]], device=device, dtype=dtype)


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch). Angles [B] in degrees -> [B, 3, 3]."""
    p, y, r = (torch.deg2rad(torch.as_tensor(a)) for a in (pitch, yaw, roll))
    p, y, r = torch.broadcast_tensors(p, y, r)
    one, zero = torch.ones_like(p), torch.zeros_like(p)

    def mat(*rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    rx = mat((one, zero, zero), (zero, p.cos(), -p.sin()), (zero, p.sin(), p.cos()))
    ry = mat((y.cos(), zero, y.sin()), (zero, one, zero), (-y.sin(), zero, y.cos()))
    rz = mat((r.cos(), -r.sin(), zero), (r.sin(), r.cos(), zero), (zero, zero, one))
    return rz @ ry @ rx


def _pixel_rays(size, fov_deg, device, dtype):
    """K^-1 [u, v, 1] for every pixel, row-major: [3, size*size]."""
    f, c = _focal(size, fov_deg)
    x = (torch.arange(size, device=device, dtype=dtype) - c) / f
    yy, xx = torch.meshgrid(x, x, indexing="ij")
    return torch.stack([xx, yy, torch.ones_like(xx)]).reshape(3, -1)


def depth_to_points(depth: torch.Tensor, fov_deg: float = 10.0) -> torch.Tensor:
    """Canonical 3D points P = depth * K^-1 [u, v, 1]. [B, H, W] -> [B, H, W, 3]."""
    b, h, w = depth.shape
    rays = _pixel_rays(w, fov_deg, depth.device, depth.dtype).T.reshape(h, w, 3)
    return depth[..., None] * rays


def _diff(x, dim):
    """Central difference along ``dim`` (one-sided at the borders), same shape."""
    n = x.shape[dim]
    inner = (x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    return torch.cat([first, inner, last], dim)


def _normal_terms(depth, fov_deg):
    """Unnormalised normal components (nx, ny, nz), each [B, H, W].

    n = dP/dv x dP/du of P = depth * (x, y, 1) with central differences; written
    out per component (cheaper than 3-vectors).
    """
    b, h, w = depth.shape
    f, c = _focal(w, fov_deg)
    x = (torch.arange(w, device=depth.device, dtype=depth.dtype) - c) / f  # [W]
    y = x[:, None]  # [H, 1]
    gu, gv = _diff(depth, 2), _diff(depth, 1)  # depth slopes along u, v
    tux = _diff(depth * x, 2)  # d(P_x)/du
    tvy = _diff(depth * y, 1)  # d(P_y)/dv
    # tu = (tux, gu y, gu), tv = (gv x, tvy, gv)
    nx = gu * (tvy - gv * y)
    ny = gv * (tux - gu * x)
    nz = gu * gv * (x * y) - tvy * tux
    return nx, ny, nz


def depth_to_normals(depth: torch.Tensor, fov_deg: float = 10.0) -> torch.Tensor:
    """Unit normals of the canonical surface, towards the camera. [B, H, W] -> [B, 3, H, W].

    n = normalize(dP/dv x dP/du), P the canonical 3D points, central
    differences (one-sided at the border); a frontal plane gives (0, 0, -1).
    """
    n = torch.stack(_normal_terms(depth, fov_deg), 1)
    return n / n.norm(dim=1, keepdim=True).clamp_min(1e-12)


def light_direction(light: torch.Tensor) -> torch.Tensor:
    """Unit light direction l = normalize(light_x, light_y, -1). [B, 8] -> [B, 3]."""
    direction = torch.cat([light[:, 6:8], -torch.ones_like(light[:, :1])], 1)
    return direction / direction.norm(dim=1, keepdim=True)


def shade(depth: torch.Tensor, albedo: torch.Tensor, light: torch.Tensor, fov_deg: float = 10.0) -> torch.Tensor:
    """Canonical image albedo * (amb + diff * max(0, n.l)). -> [B, 3, H, W]."""
    nx, ny, nz = _normal_terms(depth, fov_deg)
    ld = light_direction(light)[:, :, None, None]  # [B, 3, 1, 1]
    dot = nx * ld[:, 0] + ny * ld[:, 1] + nz * ld[:, 2]
    cos = (dot * torch.rsqrt(nx * nx + ny * ny + nz * nz).clamp_max(1e12)).clamp_min(0)
    return albedo * torch.addcmul(light[:, 0:3, None, None], light[:, 3:6, None, None], cos[:, None])


# ---------------------------------------------------------------------------
# Ray casting
#
# The ray of output pixel p, mapped into the canonical frame, is
# Q(s) = o + s * d with o = c0 - R^T (c0 + T) (the camera centre) and
# d = R^T K^-1 [u', v', 1], s being the z in the view frame. With the canonical
# inverse depth w = 1 / Q_z as parameter, its projection into the canonical image
# is affine:  u(w) = Au + Bu * w,  v(w) = Av + Bv * w.
# The surface is hit where F(w) = w * D(u(w), v(w)) - 1 = 0 (D = bilinear depth):
# F > 0 in front of the surface, F < 0 behind. w decreases away from the camera,
# so the first hit is the largest root w.
# ---------------------------------------------------------------------------


class Hits(NamedTuple):
    """Result of ``raycast``."""

    uv: torch.Tensor  # [B, H, W, 2] canonical pixel coordinates (u, v) of the hit
    mask: torch.Tensor  # [B, H, W] bool, True where the ray hits the surface
    view_depth: torch.Tensor  # [B, H, W] z of the hit in the view frame, 0 where none


class _Rays(NamedTuple):
    au: torch.Tensor  # [B, P] canonical u at w = 0
    bu: torch.Tensor  # [B, P] du/dw
    av: torch.Tensor
    bv: torch.Tensor
    oz: torch.Tensor  # [B, 1] canonical z of the camera centre
    dz: torch.Tensor  # [B, P] dQ_z/ds


def _rays(view, size, fov_deg):
    """Canonical-frame ray coefficients of every output pixel (differentiable)."""
    f, c = _focal(size, fov_deg)
    rot = rotation_matrix(view[:, 0], view[:, 1], view[:, 2])  # [B, 3, 3]
    c0 = torch.tensor(FACE_CENTRE, device=view.device, dtype=view.dtype)
    o = c0 - torch.einsum("bji,bj->bi", rot, c0 + view[:, 3:6])  # [B, 3]
    d = torch.einsum("bji,jp->bip", rot, _pixel_rays(size, fov_deg, view.device, view.dtype))
    dz = d[:, 2]
    dz = torch.where(dz.abs() > 1e-6, dz, 1e-6)  # rays parallel to the canonical image never hit
    ax, ay = d[:, 0] / dz, d[:, 1] / dz  # [B, P]
    ox, oy, oz = o[:, 0:1], o[:, 1:2], o[:, 2:3]
    return _Rays(c + f * ax, f * (ox - oz * ax), c + f * ay, f * (oy - oz * ay), oz, dz)


def _sample_depth(depth, u, v):
    """Bilinear depth at (u, v) [B, P], border-clamped, differentiable. -> [B, P]."""
    b, h, w = depth.shape
    grid = torch.stack([u, v], -1).view(b, 1, -1, 2) * (2 / (w - 1)) - 1
    return F.grid_sample(depth[:, None], grid, align_corners=True, padding_mode="border").view(b, -1)


def _cell_table(depth):
    """Bilinear coefficients (d00, du, dv, duv) of the cell at every pixel: [B*H*W, 4].

    D(u0 + a, v0 + b) = d00 + a du + b dv + a b duv. The depth is extrapolated
    linearly past the last row / column, so the cells anchored there continue
    their neighbours (only reached at a = 0 or b = 0).
    """
    dp = torch.cat([depth, 2 * depth[:, :, -1:] - depth[:, :, -2:-1]], 2)
    dp = torch.cat([dp, 2 * dp[:, -1:] - dp[:, -2:-1]], 1)  # [B, H+1, W+1]
    d00 = dp[:, :-1, :-1]
    du = dp[:, :-1, 1:] - d00
    dv = dp[:, 1:, :-1] - d00
    duv = dp[:, 1:, 1:] - dp[:, 1:, :-1] - du
    return torch.stack([d00, du, dv, duv], -1).view(-1, 4)


def _lookup(table, base, u, v, size, twist=False):
    """Bilinear depth D and its exact slopes dD/du, dD/dv at (u, v), no grad.

    table from ``_cell_table``; base: int64 offset b * size^2 of each point's
    image, broadcastable to u. Coordinates are clamped to the square.
    Overwrites u and v (pass temporaries). twist=True also returns d2D/dudv.
    """
    u = u.clamp_(0, size - 1)
    v = v.clamp_(0, size - 1)
    u0, v0 = u.floor(), v.floor()
    a, b = u.sub_(u0), v.sub_(v0)
    idx = u0.add_(v0, alpha=size).long().add_(base)
    c0, c1, c2, c3 = table.index_select(0, idx.view(-1)).view(*idx.shape, 4).unbind(-1)
    du = torch.addcmul(c1, b, c3)
    dv = torch.addcmul(c2, a, c3)
    d = torch.addcmul(c0, b, c2).addcmul_(a, du)
    return (d, du, dv, c3) if twist else (d, du, dv)


def _interval(a, b, hi, tol=_EDGE_TOL):
    """Range (lo, up) of w with 0 <= a + b w <= hi (widened by tol); empty if lo >= up.

    b = +-0 gives (-inf, inf) when a is inside and an empty range otherwise.
    """
    inv = 1 / b
    t0, t1 = (-tol - a) * inv, (hi + tol - a) * inv
    return torch.minimum(t0, t1), torch.maximum(t0, t1)


def _reduce_(out, index, src, how):
    """out[index] = min / max(out[index], src) (``how`` "amin" / "amax"), in place.

    index_reduce_ is 2-3x faster than scatter_reduce_ here; it warns once per
    process that it is "beta", a warning spent silently at import (below).
    """
    out.index_reduce_(0, index, src, how)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    _reduce_(torch.zeros(1), torch.zeros(1, dtype=torch.long), torch.zeros(1), "amin")


def _cell_bounds(depth, view, fov_deg, margin_px=0.05, margin_z=5e-4):
    """Conservative z-buffer of the canonical cells seen from ``view`` (no grad).

    Every cell (bilinear patch between 4 pixel centres) is projected into the
    view; each output pixel centre inside the bounding box of its 4 projected
    corners receives the cell's min and max view z. A ray's first hit, if any,
    is therefore between the two returned bounds (small margins cover the
    curvature of the patches). -> near, far [B, P], inf / -inf where no cell covers.
    """
    b, h, w = depth.shape
    f, c = _focal(w, fov_deg)
    dev, npix = depth.device, h * w
    rot = rotation_matrix(view[:, 0], view[:, 1], view[:, 2])
    c0 = torch.tensor(FACE_CENTRE, device=dev, dtype=depth.dtype)
    e = c0 + view[:, 3:6] - rot @ c0  # X = depth * R K^-1 [u, v, 1] + e
    q = torch.einsum("bij,jp->bip", rot, _pixel_rays(w, fov_deg, dev, depth.dtype))
    x = torch.addcmul(e[:, :, None], q, depth.view(b, 1, npix))  # [B, 3, P]
    z = x[:, 2]
    iz = z.clamp_min(1e-6).reciprocal_()
    pu = (x[:, 0] * iz).mul_(f).add_(c).view(b, h, w)
    pv = (x[:, 1] * iz).mul_(f).add_(c).view(b, h, w)
    z = z.view(b, h, w)

    def quad(t, op):  # reduce the 4 corners of every cell -> [B, H-1, W-1]
        t = op(t[:, :, :-1], t[:, :, 1:])
        return op(t[:, :-1], t[:, 1:])

    # covered pixel centres: columns i0 .. i0 + nu, rows j0 .. j0 + nv
    i0 = (quad(pu, torch.minimum) - margin_px).ceil_().clamp_(min=0)
    j0 = (quad(pv, torch.minimum) - margin_px).ceil_().clamp_(min=0)
    nu = (quad(pu, torch.maximum) + margin_px).floor_().clamp_(max=w - 1).sub_(i0)
    nv = (quad(pv, torch.maximum) + margin_px).floor_().clamp_(max=h - 1).sub_(j0)
    i0.clamp_(max=w - 1)
    j0.clamp_(max=h - 1)
    zmin = quad(z, torch.minimum).sub_(margin_z)
    zmax = quad(z, torch.maximum).add_(margin_z)
    ok = (nu >= 0) & (nv >= 0) & (zmin > 1e-6)
    key = (j0 * w + i0).long() + torch.arange(b, device=dev).view(b, 1, 1) * npix
    # the cell/pixel pairs that are not covered go to a sink (the last element)
    sink = b * npix
    near = torch.full((sink + 1,), math.inf, device=dev, dtype=depth.dtype)
    far = torch.full_like(near, -math.inf)
    key, ok_, zmin, zmax = key.view(-1), ok.view(-1), zmin.view(-1), zmax.view(-1)
    # the up to 2 x 2 pixel centres nearly every cell covers (a projected cell spans about a
    # pixel): one dense pass per offset; min / max make repeated pixels harmless
    wide, tall = ok_ & (nu.view(-1) >= 1), ok_ & (nv.view(-1) >= 1)
    for offset, cover in ((0, ok_), (1, wide), (w, tall), (w + 1, wide & tall)):
        pix = torch.where(cover, key + offset, sink)
        _reduce_(near, pix, zmin, "amin")
        _reduce_(far, pix, zmax, "amax")
    # every pixel of the cells covering more than 2 along an axis (a minority)
    multi = (ok & ((nu > 1) | (nv > 1))).view(-1).nonzero()[:, 0]
    if multi.numel():
        cu = nu.view(-1)[multi].long() + 1
        cnt = cu * (nv.view(-1)[multi].long() + 1)
        cell = torch.repeat_interleave(cnt)
        k = torch.arange(cell.numel(), device=dev) - (torch.cumsum(cnt, 0) - cnt)[cell]
        cu = cu[cell]
        pix = key[multi][cell] + torch.div(k, cu, rounding_mode="floor") * w + k % cu
        _reduce_(near, pix, zmin[multi][cell], "amin")
        _reduce_(far, pix, zmax[multi][cell], "amax")
    near, far = near[:sink], far[:sink]
    return near.view(b, npix), far.view(b, npix)


def _segment_points(au, bu, av, bv, w0, lo, count):
    """w0 and the next ``count`` crossings of cell boundaries (u or v integer) below it.

    Walks the ray's line u = au + bu w, v = av + bv w in the canonical image
    cell by cell (2D DDA) from w0 towards lo. Inputs [...] -> [..., count + 1],
    decreasing, clamped at lo (rays that reach lo repeat it).
    """

    def first(a, b):  # next integer line of a + b w (k), the step of k, 1 / b, its w
        x0 = torch.addcmul(a, b, w0)
        k = torch.where(b > 0, x0.ceil().sub_(1), x0.floor().add_(1))  # b > 0: x decreases with w
        inv = b.reciprocal().nan_to_num_(0.0, 0.0, 0.0)  # b = 0: never crosses (w = 0 < lo)
        return k, -torch.sign(b), inv, (k - a).mul_(inv)

    ku, su, iu, wu = first(au, bu)
    kv, sv, iv, wv = first(av, bv)
    pts = [w0]
    for i in range(count):
        pts.append(torch.maximum(torch.minimum(torch.maximum(wu, wv), pts[-1]), lo))
        if i < count - 1:
            take_u = wu >= wv
            ku, kv = torch.where(take_u, ku + su, ku), torch.where(take_u, kv, kv + sv)
            wu, wv = torch.where(take_u, (ku - au).mul_(iu), wu), torch.where(take_u, wv, (kv - av).mul_(iv))
    return torch.stack(pts, -1)


def _cubic(k, t):
    """k0 + k1 t + k2 t^2 + k3 t^3."""
    return torch.addcmul(k[2], k[3], t).mul_(t).add_(k[1]).mul_(t).add_(k[0])


def _dcubic(k, t):
    """k1 + 2 k2 t + 3 k3 t^2."""
    return torch.addcmul(k[2], k[3], t, value=1.5).mul_(t).mul_(2).add_(k[1])


def _critical(k, hh):
    """Roots t1 >= t2 of F' = k1 + 2 k2 t + 3 k3 t^2 clamped to [-hh, hh] (hh if none)."""
    disc = k[2] * k[2] - 3 * k[3] * k[1]
    q = -(k[2] + torch.copysign(disc.clamp_min(0).sqrt(), k[2]))
    r1, r2 = q / (3 * k[3]), k[1] / q
    real = disc > 0
    t1 = torch.where(real, torch.fmax(r1, r2), hh).nan_to_num_(0.0)
    t2 = torch.where(real, torch.fmin(r1, r2), hh).nan_to_num_(0.0)
    return torch.maximum(torch.minimum(t1, hh), -hh), torch.maximum(torch.minimum(t2, hh), -hh)


def _first_root(table, base, au, bu, av, bv, pts, side0, size, iters):
    """First root of F along each ray, exactly, over consecutive one-cell segments.

    pts [n, K+1]: decreasing w, each pair of neighbours inside one cell (from
    ``_segment_points``); side0 [n]: F > 0 at pts[:, 0] (None: computed); the
    other inputs [n]. In a cell F is a cubic in w: its signs at the segment ends
    and at its critical points bracket the first root, which Newton polishes.
    Returns w, dF/dw, found and the side of F at pts[:, -1], all [n].
    """
    base_, au_, bu_, av_, bv_ = (x[:, None] for x in (base, au, bu, av, bv))
    wm = (pts[:, :-1] + pts[:, 1:]) * 0.5
    hh = (pts[:, :-1] - pts[:, 1:]) * 0.5
    # cubic of each segment around its midpoint: F(wm + t) = k0 + k1 t + k2 t^2 + k3 t^3
    d0, du, dv, c3 = _lookup(table, base_, torch.addcmul(au_, bu_, wm), torch.addcmul(av_, bv_, wm), size, True)
    d1 = du.mul_(bu_).addcmul_(dv, bv_)  # dD/dw
    d2 = c3.mul_(bu_ * bv_)  # d2D/dw2 / 2
    k = (torch.addcmul(torch.full_like(d0, -1.0), wm, d0), torch.addcmul(d0, wm, d1), torch.addcmul(d1, wm, d2), d2)
    s3 = _cubic(k, -hh) > 0  # side at the segment end
    if side0 is None:  # side at the start of the walk
        side0 = _cubic([x[:, 0] for x in k], hh[:, 0]) > 0
    s0 = torch.cat([side0[:, None], s3[:, :-1]], 1)  # = side at the previous end (consistent chain)
    # F is monotone on nearly all segments (|k1| > |2 k2 t + 3 k3 t^2|): the first
    # root is in the first segment whose ends differ ...
    seg = s0 != s3
    found = seg.any(1)
    j = seg.to(torch.uint8).argmax(1, keepdim=True)
    th, wm_, k_ = hh.gather(1, j)[:, 0], wm.gather(1, j)[:, 0], [x.gather(1, j)[:, 0] for x in k]
    tl = -th
    # ... unless the ray has a bending segment: then also use the critical points
    bend = k[1].abs() <= torch.addcmul(2 * k[2].abs(), 3 * k[3].abs(), hh).mul_(hh)
    rb = bend.any(1).nonzero()[:, 0]
    if rb.numel():
        kb, hb, s0b, s3b = [x[rb] for x in k], hh[rb], s0[rb], s3[rb]
        t1, t2 = _critical(kb, hb)
        t1, t2 = torch.where(bend[rb], t1, hb), torch.where(bend[rb], t2, hb)
        s1, s2 = _cubic(kb, t1) > 0, _cubic(kb, t2) > 0
        c01, c12 = s0b != s1, s1 != s2
        segb = c01 | c12 | (s2 != s3b)
        jb = segb.to(torch.uint8).argmax(1, keepdim=True)
        pick = lambda x: x.gather(1, jb)[:, 0]  # noqa: E731
        hb, t1, t2, c01, c12 = map(pick, (hb, t1, t2, c01, c12))
        found[rb] = segb.any(1)
        wm_[rb] = pick(wm[rb])
        for x, y in zip(k_, kb):
            x[rb] = pick(y)
        th[rb] = torch.where(c01, hb, torch.where(c12, t1, t2))
        tl[rb] = torch.where(c01, t1, torch.where(c12, t2, -hb))
    # F is monotone on the bracket [tl, th]: secant guess, then Newton kept inside
    fh, fl = _cubic(k_, th), _cubic(k_, tl)
    t = torch.addcmul(th, tl - th, (fh / (fh - fl)).nan_to_num_(0.5, 0.5, 0.5))
    for _ in range(iters):
        df = _dcubic(k_, t)
        t = torch.fmax(torch.fmin(t - _cubic(k_, t) / df, th), tl)  # (NaN -> th)
    return wm_ + t, df, found, s3[:, -1]


def raycast(depth: torch.Tensor, view: torch.Tensor, fov_deg: float = 10.0, first_cells: int = 1) -> Hits:
    """First intersection of every output pixel's ray with the canonical surface.

    depth [B, H, W] canonical depth, view [B, 6]. Returns ``Hits`` with
    uv [B, H, W, 2] (canonical pixel coordinates of the hit, differentiable
    w.r.t. depth and view; meaningless where no hit; as a ``grid_sample`` grid
    with align_corners=True: uv * 2 / (size - 1) - 1), mask [B, H, W] bool and
    view_depth [B, H, W] (differentiable, 0 where no hit).

    Search: a conservative z-buffer of the canonical cells bounds each ray's
    first hit; each ray is then walked cell by cell from the near bound and F
    (a cubic in each cell) is tested exactly: ``first_cells`` cells for every
    ray, then 4x more per round for the rays still unresolved.
    """
    b, h, w = depth.shape
    assert h == w, "square images only"
    dtype = depth.dtype
    size, npix = w, h * w
    view = view.to(dtype)
    rays = _rays(view, size, fov_deg)
    polish = 5 if dtype == torch.float64 else 2

    with torch.no_grad():
        dep = depth.detach()
        if not (torch.isfinite(dep).all() and torch.isfinite(view.detach()).all()):
            raise ValueError("raycast: depth and view must be finite (got NaN or inf); a diverged network upstream?")
        table = _cell_table(dep)
        au, bu, av, bv, oz, dz = (x.detach() for x in rays)
        # search interval in w: frustum of the square, depth slab, cell z-buffer
        near, far = _cell_bounds(dep, view.detach(), fov_deg)
        lo_u, up_u = _interval(au, bu, size - 1)
        lo_v, up_v = _interval(av, bv, size - 1)
        # (the slab is widened a little so that no root sits exactly on an end)
        q_near = torch.addcmul(oz, near, dz).clamp_min_(dep.amin((1, 2))[:, None] * (1 - 1e-5))
        q_far = torch.addcmul(oz, far, dz).clamp_max_(dep.amax((1, 2))[:, None] * (1 + 1e-5))
        lo = torch.maximum(torch.maximum(lo_u, lo_v), q_far.reciprocal_())
        up = torch.minimum(torch.minimum(up_u, up_v), q_near.reciprocal_())
        cand = (lo <= up) & (dz > 1e-3)
        lo = torch.where(cand, lo, 1.0)
        up = torch.where(cand, up, 1.0)

        # walk every ray (flat; nearly all are candidates, and the others have lo = up and
        # find nothing) over its first cells, then the unresolved ones over more cells per round
        offset = (torch.arange(b, device=dep.device) * npix).repeat_interleave(npix)  # of the ray's image
        rows = [offset] + [x.reshape(-1) for x in (au, bu, av, bv, lo)]  # image offset, line, end
        w0, side, idx, cells = up.reshape(-1), None, None, first_cells
        while True:
            pts = _segment_points(*rows[1:5], w0, rows[5], cells)
            wr, dr, fr, side = _first_root(table, *rows[:5], pts, side, size, polish)
            if idx is None:
                wk, dfw, hit = wr, dr, fr
            else:
                wk.index_copy_(0, idx, wr)
                dfw.index_copy_(0, idx, dr)
                hit.index_copy_(0, idx, fr)
            more = (~fr & (pts[..., -1] > rows[5])).nonzero()[:, 0]
            if not more.numel():
                break
            idx, rows = (more if idx is None else idx[more]), [x[more] for x in rows]
            w0, side, cells = pts[..., -1][more], side[more], cells * 4
        wk, dfw, hit = wk.view(b, npix), dfw.view(b, npix), hit.view(b, npix)
        hit &= cand
        wk = torch.where(hit, wk, 1.0)
        dfw = torch.where(hit & (dfw.abs() > 1e-12), dfw, 1.0)

    # one differentiable Newton step: exact implicit-function gradients
    au, bu, av, bv, oz, dz = rays
    fw = wk * _sample_depth(depth, au + bu * wk, av + bv * wk) - 1
    wg = torch.where(hit, wk - fw / dfw, wk)
    u, v = au + bu * wg, av + bv * wg
    s = (1 / wg - oz) / dz
    uv = torch.stack([u, v], -1).view(b, h, w, 2)
    return Hits(uv, hit.view(b, h, w), torch.where(hit, s, 0.0).view(b, h, w))


def warp(
    canon: torch.Tensor,
    depth: torch.Tensor,
    view: torch.Tensor,
    fov_deg: float = 10.0,
    background: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render canonical maps ``canon`` [B, C, H, W] from ``view`` [B, 6].

    Returns image [B, C, H, W] (``background`` where the ray misses: a number, a
    [C] tensor or anything broadcastable to the image), mask [B, 1, H, W] float
    (1 where the ray hits the surface)
    and view_depth [B, H, W] (view-frame z of the visible point, 0 where none).
    """
    b, ch, h, w = canon.shape
    hits = raycast(depth, view, fov_deg)
    grid = (hits.uv * (2 / (w - 1)) - 1).to(canon.dtype)
    img = F.grid_sample(canon, grid, align_corners=True, padding_mode="border")
    mask = hits.mask[:, None]
    bg = torch.as_tensor(background, device=canon.device, dtype=canon.dtype)
    img = torch.where(mask, img, bg.view(1, -1, 1, 1) if bg.dim() == 1 else bg)
    return img, mask.to(canon.dtype), hits.view_depth


def render(
    depth: torch.Tensor,
    albedo: torch.Tensor,
    view: torch.Tensor,
    light: torch.Tensor,
    fov_deg: float = 10.0,
    background: float | torch.Tensor = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unsup3D's image formation (its Sec. 3.1): canonical depth [B, H, W] and albedo [B, 3, H, W],
    seen from view [B, 6] under light [B, 8] -> (image [B, 3, H, W], mask [B, 1, H, W] float).

    depth -> points P = depth K^-1 [u, v, 1]            (depth_to_points)
          -> normals n = normalize(dP/dv x dP/du)      (depth_to_normals)
          -> shading: albedo (amb + diff max(0, n.l))  (shade, in the canonical frame)
          -> sampling: each view pixel's ray hits the canonical surface (raycast), and the
             shaded canonical image is sampled bilinearly there; `background` where it misses (warp)
    """
    canonical_image = shade(depth, albedo, light, fov_deg)
    image, mask, _ = warp(canonical_image, depth, view, fov_deg, background)
    return image, mask
