"""Procedural 3D faces with exact ground truth for every semantic.

A face is a factor vector [F]: the paper's 14 univariate semantics (view and
light, ``UNIVARIATE``) followed by named localized shape and albedo factors
(``LOCAL_NAMES``, documented in ``FACTORS``). ``canonical_maps`` turns the
localized factors into a canonical depth map and albedo (the image formation
model of Unsup3D, see ``models.renderer``); ``render_faces`` renders them with the
factors' view and light; ``sample_factors`` draws data-set-like faces.

Locality is exact by construction. Every localized factor has a fixed window
(``face_parts.window_groups``: smooth, compact support) and the parts see it
only through its gated *field* ``neutral + window * (value - neutral)`` (or
through a whole term gated the same way), so outside its window the maps are
those of the neutral value. ``region_masks`` returns the windows' supports.
Windows are drawn generously around each part, so the gating never shows.
For speed, factor-free parts are computed once for the batch and each
factor-dependent part only on the bounding box of its windows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from models import face_parts as fp
from models.renderer import LIGHT_NAMES, VIEW_NAMES, render

UNIVARIATE = VIEW_NAMES + LIGHT_NAMES
POSES = ("frontal", "wide")


@dataclass(frozen=True)
class Factor:
    """One semantic of the face model.

    ``low``/``high``: hard valid range (values outside are clamped). ``region``:
    "face" (interior), "around" (hair, ears, jaw, neck, clothing) or
    "background"; univariate factors act on the whole image and say "face".
    ``neutral``: the value the factor takes outside its window.
    """

    name: str
    group: str  # "view" | "light" | "shape" | "albedo"
    low: float
    high: float
    region: str
    doc: str
    neutral: float = 0.0


def _view(name, bound, doc):
    return Factor(name, "view", -bound, bound, "face", doc)


def _light(name, low, neutral, doc):
    return Factor(name, "light", low, 1.0, "face", doc, neutral)


_UNIVARIATE_FACTORS = (
    _view("pitch", 45.0, "head rotation about x, degrees (+ turns the nose down)"),
    _view("yaw", 90.0, "head rotation about y, degrees (+ turns the nose to image left)"),
    _view("roll", 45.0, "in-plane head rotation, degrees (+ clockwise)"),
    _view("tx", 0.03, "translation right, world units"),
    _view("ty", 0.03, "translation down, world units"),
    _view("tz", 0.1, "translation away from the camera, world units"),
    _light("amb_r", 0.0, 0.5, "ambient light, red"),
    _light("amb_g", 0.0, 0.5, "ambient light, green"),
    _light("amb_b", 0.0, 0.5, "ambient light, blue"),
    _light("diff_r", 0.0, 0.5, "diffuse light, red"),
    _light("diff_g", 0.0, 0.5, "diffuse light, green"),
    _light("diff_b", 0.0, 0.5, "diffuse light, blue"),
    _light("light_x", -1.0, 0.0, "light direction x (+ lights surfaces facing image right)"),
    _light("light_y", -1.0, 0.0, "light direction y (+ lights surfaces facing image down)"),
)


def _shape(name, region, doc, low=-1.0, high=1.0, neutral=0.0):
    return Factor(name, "shape", low, high, region, doc, neutral)


def _albedo(name, region, doc, low=0.0, high=1.0, neutral=0.5):
    return Factor(name, "albedo", low, high, region, doc, neutral)


_LOCAL_FACTORS = (
    # shape: change the canonical depth (and move albedo features with it)
    _shape("forehead", "face", "forehead bulge above the brows (depth)"),
    _shape("brow_height", "face", "height of brows and brow ridge (depth + albedo, above the eyes)"),
    _shape("brow_ridge", "face", "protrusion of the ridge above the eyes (depth)"),
    _shape("eye_depth", "face", "depth of the eye sockets (depth, around the eyes)"),
    _shape("nose_length", "face", "nose length: tip and nostrils move down (depth + nostrils)"),
    _shape("nose_bridge", "face", "height of the nose bridge between the eyes (depth)"),
    _shape("nose_width", "face", "width of nose tip and nostril wings (depth + nostrils)"),
    _shape("cheek_fullness", "face", "fullness of the cheeks below the eyes (depth)"),
    _shape("lip_thickness", "face", "thickness of both lips (depth + lip albedo, mouth)"),
    _shape("mouth_width", "face", "width of the mouth (depth + lip albedo)"),
    _shape("mouth_open", "face", "mouth opening: lips part, dark gap and teeth (0 = closed)", 0.0, 1.0),
    _shape("chin", "face", "protrusion of the chin (depth)"),
    _shape("jaw_width", "around", "width of the jaw contour, lower cheeks to chin (depth + outline)"),
    _shape("ear_size", "around", "size of the ears at the sides of the head"),
    _shape("hair_volume", "around", "hair volume: hair outline around the head and hair thickness"),
    _shape("hair_curl", "around", "curly hair: wavy outline, curly texture, thicker hair (0 = straight)", 0.0, 1.0),
    _shape("hairline", "around", "height of the hairline above the forehead (+ = receding)"),
    _shape("hair_length", "around", "hair length: short (above the ears) to shoulder length", 0.0, 1.0, 0.5),
    _shape("bangs", "face", "hair fringe over the forehead, strength = how far down (0 = none)", 0.0, 1.0),
    # albedo: change the canonical albedo only
    _albedo("skin_tone", "face", "skin colour from dark to light (face, ears, neck)"),
    _albedo("skin_redness", "face", "skin hue from yellowish to reddish (face, ears, neck)", -1.0, 1.0, 0.0),
    _albedo("blush", "face", "redness of the cheeks", neutral=0.0),
    _albedo("lip_colour", "face", "lip colour from skin-like to deep red (mouth)"),
    _albedo("brow_darkness", "face", "darkness / density of the brows (above the eyes)"),
    _albedo("eye_size", "face", "opening of the eyes: visible eye white and iris", -1.0, 1.0, 0.0),
    _albedo("iris_colour", "face", "iris colour: brown, hazel, green, blue, grey (eyes)"),
    _albedo("hair_colour", "around", "hair shade from black to blond (hair, brows, beard)"),
    _albedo("hair_redness", "around", "auburn / red tint of the hair (hair, brows, beard)", neutral=0.0),
    _albedo("beard", "face", "beard, moustache and sideburns strength (lower face; 0 = none)", neutral=0.0),
    _albedo("eyeglasses", "face", "eyeglasses strength: dark frames, tinted lenses (0 = none)", neutral=0.0),
    _albedo("clothing_colour", "around", "hue of the clothing at the shoulders"),
    _albedo("background_hue", "background", "hue of the background"),
    _albedo("background_brightness", "background", "brightness of the background"),
)

FACTORS: tuple[Factor, ...] = _UNIVARIATE_FACTORS + _LOCAL_FACTORS
FACTOR_NAMES: tuple[str, ...] = tuple(f.name for f in FACTORS)
LOCAL_NAMES: tuple[str, ...] = tuple(f.name for f in _LOCAL_FACTORS)
FACTOR_INDEX = {name: i for i, name in enumerate(FACTOR_NAMES)}
REGIONS = ("face", "around", "background")


def bounds(device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds of all factors, two [F] tensors."""
    low = torch.tensor([f.low for f in FACTORS], device=device, dtype=dtype)
    high = torch.tensor([f.high for f in FACTORS], device=device, dtype=dtype)
    return low, high


def neutral_factors(n: int = 1, device=None) -> torch.Tensor:
    """The average face, frontal and evenly lit: [n, F]."""
    return torch.tensor([f.neutral for f in FACTORS], device=device).repeat(n, 1)


def clamp_factors(factors: torch.Tensor) -> torch.Tensor:
    """Clamp every factor to its hard range. [n, F] -> [n, F]."""
    low, high = bounds(factors.device, factors.dtype)
    return torch.maximum(torch.minimum(factors, high), low)


def canonical_grid(size: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical coordinates: x [1, 1, size] (columns), y [1, size, 1] (rows), both in [-1, 1]."""
    c = (size - 1) / 2
    t = (torch.arange(size, device=device, dtype=dtype) - c) / c
    return t.view(1, 1, size), t.view(1, size, 1)


@dataclass(frozen=True)
class _Crop:
    """A rectangle of the canonical image: rows and columns slices."""

    rows: slice
    cols: slice


_FULL = _Crop(slice(None), slice(None))


def _bbox(window: torch.Tensor) -> _Crop:
    """Smallest rectangle holding the support (> 0) of a window [H, W]."""
    rows = (window > 0).any(1).nonzero()[:, 0]
    cols = (window > 0).any(0).nonzero()[:, 0]
    if rows.numel() == 0:
        return _Crop(slice(0, 0), slice(0, 0))
    return _Crop(slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1))


@functools.lru_cache(maxsize=16)
def _windows(size: int, device: str) -> tuple[dict[str, torch.Tensor], dict[str, _Crop]]:
    """Window [size, size] of every localized factor and its bounding box (cached).

    Factors of one group share the same tensor (``_Fields.term`` relies on it).
    """
    x, y = (t[0] for t in canonical_grid(size, torch.device(device)))
    wins = {}
    for names, window in fp.window_groups(x, y).items():
        window = (window * torch.ones_like(x * y)).clamp(0.0, 1.0)
        wins.update({name: window for name in names})
    assert set(wins) == set(LOCAL_NAMES), "every localized factor needs a window"
    return wins, {k: _bbox(w) for k, w in wins.items()}


def region_masks(size: int, device=None) -> dict[str, torch.Tensor]:
    """Canonical pixels each localized factor can change, and the semantic regions.

    Returns name -> bool [size, size] for every name in ``LOCAL_NAMES``, plus
    "region:face", "region:around" and "region:background" (a partition).
    """
    wins, _ = _windows(size, str(torch.device(device or "cpu")))
    masks = {name: (wins[name] > 0).clone() for name in LOCAL_NAMES}
    x, y = (t[0] for t in canonical_grid(size, device))
    face = fp.soft_ellipse(x, y, 0.0, 0.02, 0.5, 0.78, 0.0) > 0
    head_and_hair = fp.soft_ellipse(x, y, 0.0, fp.HEAD_YC, 0.72, 0.98, 0.0) > 0
    hanging_hair = (x.abs() < 0.7) & (y > fp.HEAD_YC)
    neck_and_body = ((x.abs() < 0.3) & (y > 0.3)) | (y > 0.72 + 0.35 * x * x)
    around = (head_and_hair | hanging_hair | neck_and_body) & ~face
    masks["region:face"] = face.expand(size, size).clone()
    masks["region:around"] = around.expand(size, size).clone()
    masks["region:background"] = ~(face | around).expand(size, size)
    return masks


# --- canonical maps -------------------------------------------------------------
class _Fields(dict):
    """Factors as seen by the parts on one crop of the canonical image.

    ``f[name]`` is the gated field [n, h, w] = lerp(neutral, value, window);
    ``f.term(fn, *names)`` gates a whole term computed by ``fn`` from per-face
    values (cheaper when the term is separable). ``x`` [1, 1, w] and ``y``
    [1, h, 1] are the crop's canonical coordinates.
    """

    def __init__(self, values, windows, crop, x, y, gate):
        super().__init__()
        self.values, self.windows, self.crop, self.gate = values, windows, crop, gate
        self.x, self.y = x[..., crop.cols], y[:, crop.rows]

    def _window(self, name):
        return self.windows[name][self.crop.rows, self.crop.cols]

    def _value(self, name):
        return self.values[:, FACTOR_INDEX[name], None, None]

    def _neutral(self, name):
        return self.values.new_full((1, 1, 1), FACTORS[FACTOR_INDEX[name]].neutral)

    def __missing__(self, name):
        v = self._value(name)
        if self.gate:
            v = fp.blend(self._neutral(name), v, self._window(name))
        self[name] = v
        return v

    def term(self, fn, *names):
        """Tuple of tensors ``fn(values)``, each equal to ``fn(neutral values)`` outside the window.

        All ``names`` must share one window. ``fn`` receives a dict holding only ``names``.
        """
        out = fn({k: self._value(k) for k in names})
        if not self.gate:
            return out
        window = self.windows[names[0]]
        assert all(self.windows[k] is window for k in names), "a term's factors must share a window"
        neutral = fn({k: self._neutral(k) for k in names})
        w = self._window(names[0])
        return tuple(fp.blend(t0, t, w) for t0, t in zip(neutral, out))


class _Neutral(dict):
    """Neutral value of every factor, for parts shared by all faces."""

    def __missing__(self, name):
        return FACTORS[FACTOR_INDEX[name]].neutral


def _col(values, name):
    """Column of one factor: [n, F] -> [n]."""
    return values[:, FACTOR_INDEX[name]]


_COLOURS = {  # name -> (RGB [n, 3] from factor values [n, F], the factor whose window gates it)
    "skin": (lambda v: fp.skin_colour(_col(v, "skin_tone"), _col(v, "skin_redness")), "skin_tone"),
    "hair": (lambda v: fp.hair_colour(_col(v, "hair_colour"), _col(v, "hair_redness")), "hair_colour"),
    "iris": (lambda v: fp.palette(_col(v, "iris_colour"), fp.IRIS), "iris_colour"),
    "clothing": (lambda v: fp.hsv_to_rgb(_col(v, "clothing_colour"), 0.5, 0.5), "clothing_colour"),
    "background": (
        lambda v: fp.hsv_to_rgb(_col(v, "background_hue"), 0.35, 0.25 + 0.7 * _col(v, "background_brightness")),
        "background_hue",
    ),
}


def _colour(name, values, windows, crop, gate, scale=None):
    """Colour field [n, 3, h, w] on ``crop``: the face's colour inside the window, neutral outside.

    ``scale`` (broadcastable to [1, 1, h, w]) multiplies the colour (fixed shading).
    """
    make, factor = _COLOURS[name]
    rgb = make(values)[:, :, None, None]
    scale = torch.ones(1, 1, 1, 1, device=values.device) if scale is None else scale
    window = windows[factor][crop.rows, crop.cols]
    if not gate:
        return rgb * (scale * torch.ones_like(window))
    rgb0 = make(neutral_factors(1, values.device))[:, :, None, None]
    return torch.addcmul(rgb0 * scale, rgb - rgb0, window * scale)


def _crop(t, c):
    """``t[..., rows, cols]``, leaving broadcast (size 1) dimensions alone."""
    rows = c.rows if t.shape[-2] > 1 else slice(None)
    cols = c.cols if t.shape[-1] > 1 else slice(None)
    return t[..., rows, cols]


def _over_(target, crop, top, alpha):
    """In place: composite ``top`` over ``target`` [..., H, W] inside ``crop`` with coverage ``alpha``.

    ``top`` may be a function of the crop's current content (e.g. darkening it).
    The content is cloned first, so that autograd never saves a view of ``target``.
    """
    base = target[..., crop.rows, crop.cols].clone()
    target[..., crop.rows, crop.cols] = fp.over(base, top(base) if callable(top) else top, alpha)


# relief parts that depend on factors: (function, factors read)
_RELIEF_PARTS = (
    (fp.forehead_relief, ("forehead",)),
    (fp.brow_relief, ("brow_height", "brow_ridge")),
    (fp.socket_relief, ("eye_depth",)),
    (fp.cheek_relief, ("cheek_fullness",)),
    (fp.chin_relief, ("chin",)),
    (fp.nose_relief, ("nose_length", "nose_bridge", "nose_width")),
    (fp.lips_relief, ("lip_thickness", "mouth_width", "mouth_open")),
)


def canonical_maps(
    factors: torch.Tensor, size: int, asymmetry: float = 1.0, _gate: bool = True, _crop_parts: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical depth [n, size, size] in [0.9, 1.1] and albedo [n, 3, size, size] in [0, 1].

    factors [n, F] (any real values; clamped to the factor ranges). Only the
    localized factors matter here. ``asymmetry`` scales a small deliberate
    left/right asymmetry (0: mirror-symmetric maps). Development switches:
    ``_gate=False`` turns the windows off (each factor's natural reach),
    ``_crop_parts=False`` computes every part on the whole image (same maps, slower).
    """
    values = clamp_factors(factors.float())
    n, dev, a = values.shape[0], values.device, float(asymmetry)
    x, y = canonical_grid(size, dev)
    wins, boxes = _windows(size, str(dev))

    def fields(*names):
        """Fields on the bounding box of the windows of ``names``."""
        if not _crop_parts or not names:
            return _Fields(values, wins, _FULL, x, y, _gate)
        bs = [boxes[k] for k in names]
        rows = slice(min(b.rows.start for b in bs), max(b.rows.stop for b in bs))
        cols = slice(min(b.cols.start for b in bs), max(b.cols.stop for b in bs))
        return _Fields(values, wins, _Crop(rows, cols), x, y, _gate)

    def colour(name, crop=_FULL, scale=None):
        return _colour(name, values, wins, crop, _gate, scale)

    # head: the neutral head everywhere, each face's jaw inside the jaw window; then the relief
    head_a, head_z = (t.expand(n, size, size).clone() for t in fp.head(x, y, _Neutral()))
    f = fields("jaw_width")
    jaw_a, jaw_z = fp.head(f.x, f.y, f)
    head_a[:, f.crop.rows, f.crop.cols] = jaw_a
    head_z[:, f.crop.rows, f.crop.cols] = jaw_z
    head_z = head_z - fp.fixed_relief(x, y)
    for part, names in _RELIEF_PARTS:
        f = fields(*names)
        head_z[:, f.crop.rows, f.crop.cols] -= part(f.x, f.y, f, a)

    # hair (reaches nearly the whole image) and the fixed neck and shoulders
    hair_a, hair_z, back_a, strands = fp.hair(x, y, fields(), head_z, a)
    neck_a, neck_z = fp.neck(x, y)
    body_a, body_z = fp.shoulders(x, y)
    neck_box = _bbox(neck_a[0])

    # depth, back to front
    depth = fp.over(fp.over(fp.Z_BACKGROUND, body_z, body_a), 1.045, fp.sharpen(back_a))
    _over_(depth, neck_box, _crop(neck_z, neck_box), _crop(neck_a, neck_box))
    ear = fields("ear_size")
    ear_a, ear_inner, ear_z = fp.ears(ear.x, ear.y, ear)
    _over_(depth, ear.crop, ear_z, ear_a)
    depth = fp.over(fp.over(depth, head_z, fp.sharpen(head_a)), hair_z, fp.sharpen(hair_a))

    # albedo of the head: skin with shading details, then the features on their crops
    hair_rgb = colour("hair")
    socket = fp.bump((x.abs() - fp.EYE_X) / 0.16, (y - fp.EYE_Y) / 0.11)
    mole = fp.bump((x + 0.3) / 0.025, (y - 0.27) / 0.025)
    face = colour("skin", scale=((1.0 - 0.12 * socket) * (1.0 - 0.38 * a * mole))[:, None])

    f = fields("blush")
    reddish = fp.rgb((1.15, 0.78, 0.78), x)
    _over_(face, f.crop, lambda base: base * reddish, fp.blush(f.x, f.y, f)[:, None])
    f = fields("beard")
    beard = fp.beard(f.x, f.y, f, _crop(head_a, f.crop))
    _over_(face, f.crop, _crop(hair_rgb, f.crop) * 0.75, beard[:, None])
    f = fields("lip_thickness", "mouth_width", "mouth_open", "lip_colour")
    lip_a, gap_a, teeth_a = fp.mouth(f.x, f.y, f, a)
    _over_(face, f.crop, fp.lip_colour(colour("skin", f.crop), f["lip_colour"][:, None]), lip_a[:, None])
    _over_(face, f.crop, fp.rgb(fp.MOUTH_INSIDE, x), gap_a[:, None])
    _over_(face, f.crop, fp.rgb(fp.TEETH, x), teeth_a[:, None])
    f = fields("nose_length", "nose_width")
    _over_(face, f.crop, lambda base: base * 0.3, fp.nostrils(f.x, f.y, f, a)[:, None])
    f = fields("eye_size", "iris_colour")
    eye_a, eye_rgb, lash_a = fp.eyes(f.x, f.y, f, colour("iris", f.crop), a)
    _over_(face, f.crop, eye_rgb, eye_a[:, None])
    _over_(face, f.crop, lambda base: base * 0.2, lash_a[:, None])
    f = fields("brow_height", "brow_darkness")
    _over_(face, f.crop, _crop(hair_rgb, f.crop) * 0.55, fp.brows(f.x, f.y, f)[:, None])
    glass = fields("eyeglasses")
    frame_a, lens_a = fp.glasses(glass.x, glass.y, glass)
    _over_(face, glass.crop, lambda base: base * fp.rgb((0.8, 0.85, 0.9), x), 0.35 * lens_a[:, None])

    # albedo, back to front
    albedo = colour("background", scale=(1.0 - 0.08 * (y + 1.0))[:, None])
    f = fields("clothing_colour")
    _over_(albedo, f.crop, colour("clothing", f.crop), _crop(body_a, f.crop)[:, None])
    hair_rgb = hair_rgb * strands[:, None]
    albedo = fp.over(albedo, hair_rgb, back_a[:, None])
    chin_shadow = 1.0 - 0.35 * fp.bump(x / 0.35, (y - 0.8) / 0.14)
    neck_rgb = colour("skin", neck_box, _crop(0.88 * chin_shadow, neck_box)[:, None])
    _over_(albedo, neck_box, neck_rgb, _crop(neck_a, neck_box)[:, None])
    ear_skin = colour("skin", ear.crop)
    ear_rgb = fp.over(ear_skin * 0.95, ear_skin * 0.7, ear_inner[:, None])
    _over_(albedo, ear.crop, ear_rgb, ear_a[:, None])
    albedo = fp.over(albedo, face, head_a[:, None])
    _over_(albedo, glass.crop, fp.rgb(fp.FRAME, x), frame_a[:, None])
    albedo = fp.over(albedo, hair_rgb, hair_a[:, None])
    return depth.clamp_(0.9, 1.1), albedo.clamp_(0.0, 1.0)  # in place: both are fresh results


# --- sampling -----------------------------------------------------------------
def _uniform(n, lo, hi, g):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=g.device)


def _normal(n, std, g):
    return std * torch.randn(n, generator=g, device=g.device)


def _strength(n, p, lo, g):
    """Present with probability p, then strength uniform in [lo, 1]; else 0."""
    on = torch.rand(n, generator=g, device=g.device) < p
    return torch.where(on, _uniform(n, lo, 1.0, g), torch.zeros(n, device=g.device))


def _sample_yaw(n, pose, g):
    if pose == "frontal":  # FFHQ-like: near-frontal, std ~17 degrees
        return _normal(n, 17.0, g)
    # CASIA-like: a near-frontal bulk plus a long tail of profiles out to ~82 degrees
    bulk = _normal(n, 20.0, g)
    tail = 30.0 + 52.0 * torch.rand(n, generator=g, device=g.device) ** 1.5
    sign = torch.where(torch.rand(n, generator=g, device=g.device) < 0.5, -1.0, 1.0)
    return torch.where(torch.rand(n, generator=g, device=g.device) < 0.4, sign * tail, bulk)


def _sample_light(n, g):
    """Ambient RGB, diffuse RGB and direction: mostly white light with slight tints. -> [n, 8]."""
    amb = _uniform(n, 0.3, 0.65, g)
    diff = _uniform(n, 0.6, 1.0, g) * (1.25 - amb)
    warm = _normal(n, 0.05, g)  # colour temperature
    strong = (torch.rand(n, generator=g, device=g.device) < 0.15).float()

    def tint():
        t = torch.stack([1 + warm, torch.ones_like(warm), 1 - warm], 1)
        return t + (0.03 + 0.09 * strong[:, None]) * torch.randn(n, 3, generator=g, device=g.device)

    lx = _uniform(n, -0.9, 0.9, g)
    ly = _uniform(n, -0.9, 0.5, g)
    return torch.cat([amb[:, None] * tint(), diff[:, None] * tint(), lx[:, None], ly[:, None]], 1)


def sample_factors(n: int, generator: torch.Generator, pose: str = "frontal", device=None) -> torch.Tensor:
    """Random faces: [n, F] float32 within the factor ranges, deterministic given ``generator``.

    pose: "frontal" (FFHQ-like, yaw std ~17 deg) or "wide" (CASIA-like, 40 % of
    faces in a tail of |yaw| 30..82 deg). Draws happen on the generator's device.
    """
    if pose not in POSES:
        raise ValueError(f"pose must be one of {POSES}, got {pose!r}")
    g = generator
    wide = pose == "wide"
    cols = {
        "pitch": _normal(n, 8.0 if wide else 6.0, g),
        "yaw": _sample_yaw(n, pose, g),
        "roll": _normal(n, 6.0 if wide else 4.0, g),
        "tx": _uniform(n, -0.01, 0.01, g),
        "ty": _uniform(n, -0.01, 0.01, g),
        "tz": _uniform(n, -0.05, 0.05, g),
    }
    light = _sample_light(n, g)
    cols.update({name: light[:, i] for i, name in enumerate(LIGHT_NAMES)})
    for name in LOCAL_NAMES:
        cols[name] = 0.45 * torch.randn(n, generator=g, device=g.device)
    cols.update(
        {
            "mouth_open": _strength(n, 0.3, 0.1, g),
            "hair_length": torch.rand(n, generator=g, device=g.device),
            "bangs": _strength(n, 0.35, 0.3, g),
            "hair_curl": _strength(n, 0.25, 0.3, g),
            "skin_tone": torch.rand(n, generator=g, device=g.device),
            "skin_redness": _normal(n, 0.4, g),
            "blush": _uniform(n, 0.0, 0.6, g),
            "lip_colour": torch.rand(n, generator=g, device=g.device),
            "brow_darkness": _uniform(n, 0.2, 1.0, g),
            "iris_colour": torch.rand(n, generator=g, device=g.device),
            "hair_colour": torch.rand(n, generator=g, device=g.device) ** 1.5,
            "hair_redness": torch.where(
                torch.rand(n, generator=g, device=g.device) < 0.25, _uniform(n, 0.3, 1.0, g), _uniform(n, 0.0, 0.2, g)
            ),
            "beard": _strength(n, 0.25, 0.3, g),
            "eyeglasses": _strength(n, 0.2, 0.7, g),
            "clothing_colour": torch.rand(n, generator=g, device=g.device),
            "background_hue": torch.rand(n, generator=g, device=g.device),
            "background_brightness": torch.rand(n, generator=g, device=g.device),
        }
    )
    out = torch.stack([cols[name] for name in FACTOR_NAMES], 1)
    return clamp_factors(out).to(device if device is not None else g.device)


# --- rendering ------------------------------------------------------------------
def render_faces(
    factors: torch.Tensor, size: int, asymmetry: float = 1.0, background: float = 0.0, return_maps: bool = False
) -> tuple[torch.Tensor, ...]:
    """Render faces [n, F] -> (images [n, 3, size, size] in [0, 1], mask [n, 1, size, size]).

    ``background`` fills pixels where no surface is hit (profiles turn the
    background plane away from the camera). ``return_maps`` also returns the
    canonical depth [n, size, size] and albedo [n, 3, size, size] (ground truth).
    """
    values = clamp_factors(factors.float())
    depth, albedo = canonical_maps(values, size, asymmetry)
    view = values[:, [FACTOR_INDEX[k] for k in VIEW_NAMES]]
    light = values[:, [FACTOR_INDEX[k] for k in LIGHT_NAMES]]
    image, mask = render(depth, albedo, view, light, background=background)
    if return_maps:
        return image.clamp(0.0, 1.0), mask, depth, albedo
    return image.clamp(0.0, 1.0), mask
