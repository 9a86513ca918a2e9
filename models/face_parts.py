"""Parts of the procedural face: smooth primitives with compact support, colour
palettes, and the layers (depth, coverage, colour) of head, features and hair.

Canonical coordinates: ``x = (u - c) / c``, ``y = (v - c) / c`` with
``c = (size - 1) / 2``, so x, y lie in [-1, 1], x points right and y down. One
unit is tan(5 deg) ~ 0.0875 world units at depth 1. Depths are world units
(camera looks along +z, smaller = nearer); relief offsets are positive towards
the camera.

Every part takes the grid ``x`` [1, 1, W], ``y`` [1, H, 1] and factor fields
``f`` (name -> tensor broadcastable to [n, H, W], already clamped and gated by
the factor's window in ``models.faces``), plus ``asym``, the scale of the
deliberate left/right asymmetry. Pairs of features (eyes, brows, ...) are
written for ``|x|`` so they are mirror symmetric unless ``asym`` says otherwise.
"""

from __future__ import annotations

import torch

# --- geometry constants (canonical units; depths in world units) ------------
Z_BACKGROUND = 1.1  # background plane
Z_SILHOUETTE = 1.01  # depth of the head outline
HEAD_DEPTH = 0.065  # head surface: front is this much nearer than the outline
HEAD_YC, HEAD_A, HEAD_B = -0.08, 0.56, 0.86  # head centre row, half width, half height
EYE_X, EYE_Y = 0.235, -0.10  # eye centres (+-EYE_X, EYE_Y)
MOUTH_Y = 0.43
EDGE = 0.03  # soft edge half-width of silhouettes (~1 px at 64 px)


# --- primitives --------------------------------------------------------------
def smoothstep(e0: float, e1: float, t: torch.Tensor) -> torch.Tensor:
    """0 for t <= e0, 1 for t >= e1, cubic Hermite in between (C1, exact 0/1 outside)."""
    s = ((t - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def inside(d: torch.Tensor, soft: float = EDGE) -> torch.Tensor:
    """Antialiased indicator of ``d > 0`` (d: signed distance, positive inside), ramp width 2*soft."""
    return (d * (0.5 / soft) + 0.5).clamp(0.0, 1.0)


def above(a, b, soft: float = EDGE) -> torch.Tensor:
    """``inside(a - b, soft)``, cheaper when a and b are small broadcast tensors (a row and a column)."""
    k = 0.5 / soft
    return (a * k + 0.5 - b * k).clamp(0.0, 1.0)


def sharpen(alpha: torch.Tensor) -> torch.Tensor:
    """Coverage for depth: a narrower edge, inside the albedo's edge.

    The depth step of a silhouette then lies where the albedo is still mostly the
    near surface's, so a step stretched by a turned view shows that surface's colour.
    """
    return (3.0 * alpha - 2.0).clamp(0.0, 1.0)


def bump(u: torch.Tensor, v: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(1 - u^2 - v^2)^3 inside the unit disc, 0 outside: a C2 bump of height 1."""
    q = (1.0 - u * u - v * v).clamp(min=0.0)
    return q * q * q


def ellipse(u: torch.Tensor, v: torch.Tensor, soft: float) -> torch.Tensor:
    """1 inside the unit circle of normalised offsets (u, v), soft edge of radial width ``soft``.

    Support is exactly r < 1 (the edge is inside the circle).
    """
    r = torch.sqrt(u * u + v * v + 1e-12)
    return 1.0 - smoothstep(1.0 - soft, 1.0, r)


def over(base, top, alpha):
    """Alpha compositing ``top`` over ``base`` (tensors or numbers, broadcastable)."""
    like = next(t for t in (alpha, base, top) if torch.is_tensor(t))
    base, top, alpha = (torch.as_tensor(t, dtype=like.dtype, device=like.device) for t in (base, top, alpha))
    return torch.lerp(base, top, alpha)


def blend(start, end, weight):
    """start + weight * (end - start), fast when start and end are small and broadcast."""
    small = torch.broadcast_shapes(torch.as_tensor(start).shape, torch.as_tensor(end).shape).numel()
    if torch.is_tensor(start) and torch.is_tensor(end) and small < weight.numel():
        return torch.addcmul(start, end - start, weight)
    return over(start, end, weight)


def union(*alphas: torch.Tensor) -> torch.Tensor:
    """Soft union of coverages: 1 - prod(1 - a)."""
    out = 1.0 - alphas[0]
    for a in alphas[1:]:
        out = out * (1.0 - a)
    return 1.0 - out


def palette(t: torch.Tensor, colours: list[tuple[float, float, float]]) -> torch.Tensor:
    """Piecewise-linear colour ramp through ``colours`` for t in [0, 1]. t [n] -> [n, 3]."""
    pal = torch.tensor(colours, dtype=t.dtype, device=t.device)  # [m, 3]
    k = t.clamp(0.0, 1.0) * (len(colours) - 1)
    hats = (1.0 - (k[:, None] - torch.arange(len(colours), device=t.device)).abs()).clamp(min=0.0)
    return hats @ pal


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor | float, v: torch.Tensor | float) -> torch.Tensor:
    """HSV (h in [0, 1], cyclic) to RGB. [n] -> [n, 3]."""
    h, s, v = torch.broadcast_tensors(
        h, torch.as_tensor(s, dtype=h.dtype, device=h.device), torch.as_tensor(v, dtype=h.dtype, device=h.device)
    )
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(n + 6.0 * h, 6.0)
        out.append(v - v * s * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0))
    return torch.stack(out, -1)


# --- colours -----------------------------------------------------------------
SKIN = [(0.32, 0.19, 0.13), (0.58, 0.40, 0.29), (0.82, 0.63, 0.52), (0.96, 0.81, 0.72)]
HAIR = [(0.05, 0.04, 0.035), (0.20, 0.12, 0.07), (0.42, 0.28, 0.16), (0.70, 0.55, 0.33), (0.90, 0.80, 0.55)]
IRIS = [(0.16, 0.08, 0.04), (0.40, 0.26, 0.10), (0.30, 0.42, 0.22), (0.25, 0.45, 0.70), (0.55, 0.62, 0.70)]
SCLERA = (0.93, 0.90, 0.87)
PUPIL = (0.03, 0.02, 0.02)
MOUTH_INSIDE = (0.28, 0.08, 0.08)
TEETH = (0.92, 0.90, 0.82)
FRAME = (0.07, 0.06, 0.06)


def skin_colour(tone: torch.Tensor, redness: torch.Tensor) -> torch.Tensor:
    """Skin RGB from tone in [0, 1] (dark -> light) and redness in [-1, 1]. [n] -> [n, 3]."""
    red = torch.tensor([0.06, -0.015, -0.03], dtype=tone.dtype, device=tone.device)
    return (palette(tone, SKIN) + redness[:, None] * red).clamp(0.0, 1.0)


def hair_colour(shade: torch.Tensor, redness: torch.Tensor) -> torch.Tensor:
    """Hair RGB from shade in [0, 1] (black -> blond) and redness in [0, 1]. [n] -> [n, 3]."""
    base = palette(shade, HAIR)
    tint = torch.tensor([1.45, 0.8, 0.6], dtype=shade.dtype, device=shade.device)
    auburn = base * tint + torch.tensor([0.1, 0.02, 0.0], dtype=shade.dtype, device=shade.device)
    return over(base, auburn, 0.8 * redness[:, None]).clamp(0.0, 1.0)


def lip_colour(skin: torch.Tensor, redness: torch.Tensor) -> torch.Tensor:
    """Lip RGB from skin RGB [n, 3, H, W] and lip redness [n, 1, H, W] in [0, 1]."""
    pale = skin * rgb((0.9, 0.66, 0.66), skin)
    return over(pale, rgb((0.62, 0.1, 0.15), skin), 0.9 * redness)


def rgb(c: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    """Constant colour as [1, 3, 1, 1] on ``like``'s device and dtype."""
    return torch.tensor(c, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


# --- head and surroundings ---------------------------------------------------
def head(x, y, f):
    """Head silhouette (coverage [n, H, W]) and surface depth [n, H, W]; jaw_width widens the jaw."""
    side = torch.sign(x) * smoothstep(0.14, 0.36, x.abs())
    jaw_band = bump((y - 0.48) / 0.36)
    xw = x - 0.075 * f["jaw_width"] * jaw_band * side
    half_w = HEAD_A * (1.0 - 0.1 * smoothstep(0.05, 0.85, y))
    u, v = xw / half_w, (y - HEAD_YC) / HEAD_B
    r2 = u * u + v * v
    alpha = inside((1.0 - torch.sqrt(r2 + 1e-12)) * half_w)
    depth = Z_SILHOUETTE - HEAD_DEPTH * torch.sqrt((1.0 - r2).clamp(min=0.0) + 1e-3)
    return alpha, depth


def neck(x, y):
    """Neck below the head: (coverage, depth), both fixed."""
    alpha = inside(0.25 - x.abs()) * inside(y - 0.3)
    depth = Z_SILHOUETTE + 0.024 - 0.024 * torch.sqrt((1.0 - (x / 0.25) ** 2).clamp(min=0.0))
    return alpha, depth


def shoulders(x, y):
    """Shoulders / clothing at the bottom: (coverage, depth), fixed."""
    alpha = inside(y - 0.78 - 0.35 * x * x)
    depth = 1.05 - 0.01 * (1.0 - x * x).clamp(min=0.0)
    return alpha, depth


def ears(x, y, f):
    """Ears at the sides of the head: (coverage, inner-ear coverage, depth); ear_size scales them."""
    s = 1.0 + 0.35 * f["ear_size"]
    u, v = (x.abs() - 0.57) / (0.07 * s), (y - 0.02) / (0.15 * s)
    alpha = ellipse(u, v, 0.25)
    inner = ellipse((u - 0.2) / 0.55, v / 0.6, 0.4)
    depth = Z_SILHOUETTE - 0.004 - 0.006 * bump(u, v)
    return alpha, inner, depth


# --- relief of the face (depth offsets towards the camera, [n, H, W]) --------
def fixed_relief(x, y):
    """Relief shared by all faces: eyeballs and the muzzle around the mouth."""
    eyeballs = 0.004 * bump((x.abs() - EYE_X) / 0.09, (y - EYE_Y) / 0.06)
    return eyeballs + 0.006 * bump(x / 0.28, (y - MOUTH_Y) / 0.2)


def forehead_relief(x, y, f, asym):
    """Bulge of the forehead above the brows."""
    return (0.004 + 0.006 * f["forehead"]) * bump(x / 0.42, (y + 0.5) / 0.26)


def brow_relief(x, y, f, asym):
    """Ridge above each eye, moving with the brows."""
    brow_y = -0.30 - 0.06 * f["brow_height"]
    ridge = bump((x.abs() - 0.25) / 0.21, (y - brow_y - 0.02) / 0.09)
    return (0.005 + 0.005 * f["brow_ridge"]) * ridge


def socket_relief(x, y, f, asym):
    """Eye sockets (negative relief)."""
    socket = bump((x.abs() - EYE_X) / 0.16, (y - EYE_Y + 0.01) / 0.12)
    return -(0.009 + 0.008 * f["eye_depth"]) * socket


def cheek_relief(x, y, f, asym):
    """Cheeks below the eyes."""
    return (0.005 + 0.007 * f["cheek_fullness"]) * bump((x.abs() - 0.29) / 0.19, (y - 0.14) / 0.19)


def chin_relief(x, y, f, asym):
    """Chin below the mouth."""
    return (0.005 + 0.008 * f["chin"]) * bump(x / 0.16, (y - 0.665) / 0.10)


def nose_geometry(f, asym):
    """Nose tip row, width scale and sideways shift of the tip (asymmetry)."""
    tip_y = 0.17 + 0.06 * f["nose_length"]
    return tip_y, 1.0 + 0.3 * f["nose_width"], 0.012 * asym


def nose_relief(x, y, f, asym):
    """Bridge ridge from between the eyes to the tip, tip bulb and nostril wings."""
    tip_y, width, shift = nose_geometry(f, asym)
    top = -0.20
    s = ((y - top) / (tip_y - top)).clamp(0.0, 1.0)
    height = (0.005 + 0.005 * f["nose_bridge"]) * (1.0 - s) + 0.012 * s * s
    half_w = 0.07 + 0.06 * s * width
    cross = (1.0 - ((x - shift * s) / half_w) ** 2).clamp(min=0.0) ** 2
    along = smoothstep(top - 0.06, top + 0.04, y) * (1.0 - smoothstep(tip_y - 0.02, tip_y + 0.05, y))
    tip = 0.006 * bump((x - shift) / (0.085 * width), (y - tip_y + 0.01) / 0.075)
    wings = 0.004 * (
        bump((x - shift - 0.085 * width) / 0.06, (y - tip_y - 0.01) / 0.05)
        + bump((x - shift + 0.085 * width) / 0.06, (y - tip_y - 0.01) / 0.05)
    )
    return height * cross * along + tip + wings


def mouth_geometry(x, f, asym):
    """Mouth layout: position t along the mouth (-1..1), lip scale, opening, mouth-line row."""
    half_w = 0.175 * (1.0 + 0.18 * f["mouth_width"])
    t = x / half_w
    lips = 1.0 + 0.45 * f["lip_thickness"]
    opening = 0.05 * f["mouth_open"]
    line = MOUTH_Y - 0.012 * asym * t.clamp(-1.0, 1.0)
    return t, lips, opening, line


def lips_relief(x, y, f, asym):
    """Upper and lower lip bumps and the recess of an open mouth."""
    t, lips, opening, _ = mouth_geometry(x, f, 0.0)
    upper = 0.003 * lips * bump(t / 1.05, (y - MOUTH_Y + 0.022 * lips + opening / 2) / (0.03 * lips))
    lower = 0.004 * lips * bump(t / 0.95, (y - MOUTH_Y - 0.03 * lips - opening / 2) / (0.035 * lips))
    gap = 0.006 * f["mouth_open"] * bump(t, (y - MOUTH_Y) / (opening / 2 + 0.01))
    return upper + lower - gap


# --- albedo features: each returns (coverage [n, H, W], colour) -------------
def eyes(x, y, f, iris_rgb, asym):
    """Eye whites, iris and pupil, upper lash line. Returns (eye coverage, eye colour, lash coverage)."""
    ax = x.abs()
    s = (1.0 + 0.25 * f["eye_size"]) * (1.0 + 0.06 * asym * (x > 0).to(x.dtype))
    t = (ax - EYE_X) / (0.095 * s)
    shape = (1.0 - t * t).clamp(min=0.0)
    centre = EYE_Y - 0.01 * t
    upper = centre - 0.052 * s * shape
    lower = centre + 0.034 * s * shape
    ends = smoothstep(0.0, 0.3, shape)
    open_ = inside(y - upper, 0.015) * inside(lower - y, 0.015) * ends
    d = torch.sqrt((ax - EYE_X) ** 2 + (y - EYE_Y - 0.004) ** 2 + 1e-12)
    iris = inside(0.046 * s - d, 0.012)
    pupil = inside(0.02 * s - d, 0.01)
    colour = over(rgb(SCLERA, x), iris_rgb, iris[:, None])
    colour = over(colour, rgb(PUPIL, x), pupil[:, None])
    lash = inside(0.014 - (y - upper + 0.008).abs(), 0.01) * smoothstep(0.0, 0.15, shape)
    return open_, colour, lash


def brows(x, y, f):
    """Arched brows above the eyes: coverage (strength from brow_darkness)."""
    ax = x.abs()
    brow_y = -0.30 - 0.06 * f["brow_height"]
    t = (ax - 0.255) / 0.175
    centre = brow_y - 0.045 * (1.0 - t * t).clamp(min=0.0) + 0.01 * t
    thick = 0.03 * (1.0 - 0.35 * t.clamp(-1.0, 1.0))
    band = inside(thick - (y - centre).abs(), 0.012) * (1.0 - smoothstep(0.8, 1.0, t.abs()))
    return band * (0.35 + 0.6 * f["brow_darkness"])


def nostrils(x, y, f, asym):
    """Dark nostril openings under the nose tip: coverage."""
    tip_y, width, shift = nose_geometry(f, asym)
    ax = (x - shift).abs()
    return 0.75 * ellipse((ax - 0.037 * width) / (0.026 * width), (y - tip_y - 0.04) / 0.016, 0.5)


def mouth(x, y, f, asym):
    """Lips, mouth opening and teeth. Returns (lip coverage, opening coverage, teeth coverage)."""
    t, lips, opening, line = mouth_geometry(x, f, asym)
    shape = (1.0 - t * t).clamp(min=0.0)
    ends = smoothstep(0.0, 0.2, shape)
    bow = 0.01 * bump(x / 0.05)  # cupid's bow dip in the middle of the upper lip
    upper_top = line - opening / 2 - 0.038 * lips * shape.clamp(min=1e-4).sqrt() + bow
    lower_bot = line + opening / 2 + 0.05 * lips * shape.clamp(min=1e-4).pow(0.7)
    lip = inside(y - upper_top, 0.012) * inside(lower_bot - y, 0.012) * ends
    gap = inside(opening / 2 - (y - line).abs(), 0.01) * ends
    line_dark = 0.5 * inside(0.008 - (y - line).abs(), 0.006) * ends
    teeth = inside(0.35 * opening - (y - line + opening / 2 - 0.175 * opening).abs(), 0.006)
    teeth = teeth * gap * (1.0 - smoothstep(0.5, 0.8, t.abs()))
    return lip, union(gap, line_dark), teeth


def beard(x, y, f, head_alpha):
    """Beard, moustache and sideburns on the lower face: coverage (strength from beard)."""
    edge = 0.33 - 0.38 * smoothstep(0.2, 0.52, x.abs())
    texture = 0.88 + 0.12 * torch.cos(60.0 * x) * torch.cos(60.0 * y)
    return f["beard"] * inside(y - edge, 0.03) * head_alpha * texture


def blush(x, y, f):
    """Reddening of the cheeks: coverage."""
    return 0.8 * f["blush"] * bump((x.abs() - 0.29) / 0.19, (y - 0.14) / 0.19)


def glasses(x, y, f):
    """Eyeglasses: (frame coverage, lens coverage), strength from eyeglasses."""
    ax = x.abs()
    u, v = (ax - EYE_X) / 0.15, (y - EYE_Y + 0.005) / 0.1
    r = (u**4 + v**4 + 1e-12) ** 0.25
    rim = inside(0.22 - (r - 1.0).abs(), 0.08)
    lens = inside(1.0 - r, 0.05)
    bar = inside(0.016 - (y + 0.13).abs(), 0.008)
    bridge = bar * inside(0.1 - ax, 0.01)
    arms = bar * inside(ax - 0.37, 0.01) * inside(0.62 - ax, 0.02)
    strength = f["eyeglasses"]
    return strength * union(rim, bridge, arms), strength * lens


# --- hair ---------------------------------------------------------------------
def hairline_row(x, recede):
    """Row of the hairline at column x: flat over the forehead, dropping at the temples.

    recede in [-1, 1] (+ = high / receding).
    """
    return -0.55 - 0.13 * recede + (0.23 + 0.07 * recede) * (x / 0.5) ** 4


def _hair_mass(x, y, v):
    """Hair outline coverage, shell depth, thickness and curliness from volume and curl."""
    volume, curl = v["hair_volume"], v["hair_curl"]
    grow = 0.065 + 0.045 * volume + 0.03 * curl  # how far the hair reaches beyond the head
    u = x / (HEAD_A + grow)
    w = (y - HEAD_YC).clamp(max=0.0) / (HEAD_B + grow)  # below the head centre the sides fall straight
    r2 = u * u + w * w  # < 1 inside the hair outline
    waves = torch.cos(25.0 * torch.atan2(x, y - HEAD_YC - 0.3))  # odd: a dip at the top
    r2 = r2 * torch.addcmul(torch.ones_like(waves), waves, 0.06 * curl)
    outline = inside((1.0 - r2) * (0.5 * HEAD_A))  # (1 - r^2) / 2 ~ distance to the outline / HEAD_A
    shell = Z_SILHOUETTE + 0.01 - (HEAD_DEPTH + 0.012) * (1.0 - r2).clamp(min=1e-3).sqrt()
    thickness = 0.006 + 0.004 * volume + 0.003 * curl
    return outline, shell, thickness, curl


def hair(x, y, f, head_depth, asym):
    """Hair in front of the head (cap, fringe, side locks) and behind it (long hair).

    ``f.term`` gates whole terms by their factor's window. Returns (front coverage,
    front depth, back coverage, strand shading around 1), each [n, H, W].
    """
    ax = x.abs()
    outline, shell, thickness, curl = f.term(lambda v: _hair_mass(x, y, v), "hair_volume", "hair_curl")
    down, side = f.term(
        lambda v: (above(-0.12 + 1.1 * v["hair_length"], y, 0.04), above(ax, 0.47 - 0.06 * v["hair_length"], 0.025)),
        "hair_length",
    )
    (cap,) = f.term(lambda v: (above(hairline_row(x, v["hairline"]), y, 0.025),), "hairline")
    fade = 1.0 - smoothstep(0.28, 0.42, ax)

    def fringe_term(v):  # the fringe's lower edge: wavy, tilted by the asymmetry
        edge = -0.5 + v["bangs"] * (0.24 + 0.07 * asym * x + 0.012 * torch.cos(38.0 * x))
        return (above(edge, y, 0.02) * fade,)

    (fringe,) = f.term(fringe_term, "bangs")
    back = outline * down
    front = outline * torch.maximum(torch.maximum(cap, down * side), fringe)
    depth = torch.minimum(shell, head_depth - thickness)
    part = 0.14 * asym
    straight = torch.cos(70.0 * torch.atan2(x - part, y + 1.3))
    curly = torch.cos(55.0 * ax + 2.0 * torch.cos(47.0 * y))
    curly = curly * torch.cos(55.0 * y + 2.0 * torch.cos(43.0 * ax))
    parting = 0.2 * inside(0.012 - (x - part).abs(), 0.008)
    strands = torch.addcmul(0.9 - parting * cap, over(straight, curly, curl), torch.as_tensor(0.1))
    return front, depth, back, strands


# --- windows: where each factor may act ------------------------------------------
def soft_ellipse(x, y, cx, cy, rx, ry, soft=0.15):
    """Soft ellipse window: 1 for r < 1 - soft, 0 for r >= 1 (r: normalised radius)."""
    return ellipse((x - cx) / rx, (y - cy) / ry, soft)


def soft_pair(x, y, cx, cy, rx, ry, soft=0.15):
    """Mirror pair of soft ellipses at (+-cx, cy)."""
    return soft_ellipse(x.abs(), y, cx, cy, rx, ry, soft)


def soft_box(x, y, x0, x1, y0, y1, soft=0.03):
    """Soft box window: 1 inside [x0, x1] x [y0, y1], 0 beyond ``soft`` outside."""
    h = soft / 2
    return inside(x - x0 + h, h) * inside(x1 - x + h, h) * inside(y - y0 + h, h) * inside(y1 - y + h, h)


def window_groups(x, y) -> dict[tuple[str, ...], torch.Tensor]:
    """Windows of the localized factors: names -> window in [0, 1] (broadcast of x [1, W], y [H, 1]).

    Each part reads a factor only through its window (see ``models.faces``), so a
    window must cover everything the factor can change, for any other factors.
    Factors grouped together share one window.
    """
    ax = x.abs()
    brows = soft_pair(x, y, 0.26, -0.31, 0.31, 0.22)
    eyes = soft_pair(x, y, EYE_X, EYE_Y, 0.17, 0.14)
    nose = soft_ellipse(x, y, 0.0, 0.02, 0.29, 0.37)
    cheeks = soft_pair(x, y, 0.29, 0.14, 0.23, 0.23)
    mouth = soft_ellipse(x, y, 0.0, 0.44, 0.3, 0.17)
    beard = inside(y - 0.28 + 0.38 * smoothstep(0.2, 0.52, ax), 0.02) * soft_box(ax, y, 0, 0.7, -1, 0.86)
    reach = ellipse(x / 0.86, (y - HEAD_YC).clamp(max=0.0) / 1.2, 0.06)  # beyond the widest hair outline
    hair = (1.0 - soft_ellipse(x, y, 0.0, 0.2, 0.36, 0.4, 0.3)) * reach
    hair_rgb = torch.maximum(torch.maximum(hair, brows), beard)
    neck = soft_box(ax, y, 0.0, 0.3, 0.2, 1.2)
    skin = torch.maximum(soft_ellipse(x, y, 0.0, -0.08, 0.78, 1.05, 0.1), neck)
    background = 1.0 - soft_ellipse(x, y, 0.0, -0.1, 0.45, 0.7, 0.2)
    low, high = hairline_row(x, -1.0), hairline_row(x, 1.0)  # the band the hairline sweeps
    low, high = torch.minimum(low, high), torch.maximum(low, high)
    hairline = inside(y - low + 0.05, 0.02) * inside(high + 0.05 - y, 0.02) * inside(0.85 - ax, 0.02)
    groups = {
        ("forehead",): soft_ellipse(x, y, 0.0, -0.5, 0.5, 0.31),
        ("brow_height", "brow_ridge"): brows,
        ("brow_darkness",): soft_box(ax, y, 0.07, 0.44, -0.48, -0.17),
        ("eye_depth",): soft_pair(x, y, EYE_X, -0.11, 0.2, 0.15),
        ("eye_size",): eyes,
        ("iris_colour",): soft_pair(x, y, EYE_X, EYE_Y + 0.004, 0.085, 0.085),
        ("nose_length", "nose_bridge", "nose_width"): nose,
        ("cheek_fullness", "blush"): cheeks,
        ("lip_thickness", "mouth_width", "mouth_open", "lip_colour"): mouth,
        ("chin",): soft_ellipse(x, y, 0.0, 0.665, 0.2, 0.13),
        ("jaw_width",): soft_box(ax, y, 0.12, 0.72, 0.1, 0.86),
        ("ear_size",): soft_pair(x, y, 0.57, 0.02, 0.125, 0.26),
        ("hair_volume", "hair_curl"): hair,
        ("hair_length",): hair
        * inside(ax - 0.18, 0.02)
        * torch.maximum(inside(y + 0.2, 0.02), inside(ax - 0.36, 0.02) * inside(y + 0.62, 0.02)),
        ("hairline",): hairline,
        ("bangs",): soft_box(x, y, -0.44, 0.44, -0.54, -0.19),
        ("skin_tone", "skin_redness"): skin,
        ("hair_colour", "hair_redness"): hair_rgb,
        ("beard",): beard,
        ("eyeglasses",): soft_box(x, y, -0.66, 0.66, -0.25, 0.05),
        ("clothing_colour",): inside(y - 0.72 - 0.35 * x * x, 0.02),
        ("background_hue", "background_brightness"): background,
    }
    return groups
