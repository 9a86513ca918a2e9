"""Unsup3D's evaluation of a 3D decomposition against ground truth.

* SIDE, scale-invariant depth error (Eigen et al. 2014, as Unsup3D):
  with D = log d_pred - log d_gt over the mask's pixels,
  SIDE = sqrt(mean(D^2) - mean(D)^2), the standard deviation of the log-depth
  difference: 0 for d_pred = k d_gt, any k > 0. Unsup3D reports it x 1e-2.
* MAD, mean angle deviation: mean over the mask of the angle (degrees)
  between the normals of the two depth maps (``renderer.depth_to_normals``).
* View errors: |pitch|, |yaw|, |roll| differences in degrees.

Unsup3D compares depth in the input view (the warped predicted depth against
the ground-truth depth of the image), with a mask eroded by one pixel
(``erode``); the functions here take whichever maps the caller passes.
All metrics are per image ([B]); average over images as Unsup3D does.
``ground_truth_errors`` runs a decomposer on images with known maps and
returns all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.renderer import LIGHT_NAMES, VIEW_NAMES, depth_to_normals, light_direction, raycast, warp


def erode(mask: torch.Tensor, px: int = 1) -> torch.Tensor:
    """Shrink a 0/1 mask [B, H, W] or [B, 1, H, W] by ``px`` pixels (3x3 min filter, px times)."""
    if px <= 0:
        return mask
    m = mask if mask.dim() == 4 else mask[:, None]
    m = (-F.max_pool2d(-m.float(), 2 * px + 1, 1, px)).to(mask.dtype)  # pixels beyond the image are ignored
    return m if mask.dim() == 4 else m[:, 0]


def _weights(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Mask [B, H, W] (or [B, 1, H, W], bool or float) as float weights [B, H, W]; all ones if None."""
    if mask is None:
        return torch.ones_like(like)
    m = mask.to(like.dtype)
    return m[:, 0] if m.dim() == 4 else m


def scale_invariant_depth_error(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SIDE per image [B] of depth maps [B, H, W] (> 0) over ``mask`` [B, (1,) H, W]."""
    m = _weights(mask, pred)
    n = m.sum((1, 2)).clamp_min(1)
    diff = pred.log() - gt.log()
    mean = (diff * m).sum((1, 2)) / n
    var = (((diff - mean[:, None, None]) ** 2) * m).sum((1, 2)) / n
    return var.clamp_min(0).sqrt()


def normal_angles(pred: torch.Tensor, gt: torch.Tensor, fov_deg: float = 10.0) -> torch.Tensor:
    """Angle (degrees) [B, H, W] between the normals of depth maps pred and gt [B, H, W]."""
    n1, n2 = depth_to_normals(pred, fov_deg), depth_to_normals(gt, fov_deg)
    cross = torch.linalg.cross(n1, n2, dim=1).norm(dim=1)
    dot = (n1 * n2).sum(1)
    return torch.rad2deg(torch.atan2(cross, dot))  # accurate near 0, unlike acos


def mean_angle_deviation(
    pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None, fov_deg: float = 10.0
) -> torch.Tensor:
    """MAD per image [B], degrees: mean normal angle between depth maps [B, H, W] over ``mask``."""
    m = _weights(mask, pred)
    return (normal_angles(pred, gt, fov_deg) * m).sum((1, 2)) / m.sum((1, 2)).clamp_min(1)


def angle_errors(pred_view: torch.Tensor, true_view: torch.Tensor) -> torch.Tensor:
    """|pitch|, |yaw|, |roll| errors [B, 3] in degrees (wrapped to [0, 180]) of views [B, 6] (VIEW_NAMES)."""
    d = pred_view[:, :3] - true_view[:, :3]
    return torch.remainder(d + 180.0, 360.0).sub(180.0).abs()


def light_angle_error(pred_light: torch.Tensor, true_light: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) [B] between the light directions of lights [B, 8] (LIGHT_NAMES)."""
    a, b = light_direction(pred_light), light_direction(true_light)
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b, dim=1).norm(dim=1), (a * b).sum(1)))


@torch.no_grad()
def ground_truth_errors(
    decomposer,
    images: torch.Tensor,
    depth: torch.Tensor,
    view: torch.Tensor,
    light: torch.Tensor,
    region: torch.Tensor,
    fov_deg: float = 10.0,
    erode_px: int = 1,
) -> dict[str, torch.Tensor]:
    """Errors of ``decomposer`` on images [B, 3, r, r] in [-1, 1] with known canonical depth
    [B, r, r], view [B, 6] and light [B, 8]; ``region`` [r, r] is the canonical region scored
    (the face). Returns per-image tensors [B]:

    side, mad_deg (in the input view, as Unsup3D: the predicted canonical depth seen from
    the predicted view against the true depth seen from the true view, over the true
    face region that both surfaces cover, eroded by ``erode_px``); pitch/yaw/roll_err_deg;
    pred_yaw_deg; light_err_deg (direction); depth_px (pixels scored); and est_<name>, the
    decomposer's estimate of each view and light parameter (VIEW_NAMES + LIGHT_NAMES, the
    renderer's units; the view as its ``semantic_view`` reports it), for correlating with the truth.
    """
    dec = decomposer(images)
    pred, true = raycast(dec.depth, dec.view, fov_deg), raycast(depth, view, fov_deg)
    canon_region = region.to(depth)[None, None].expand(len(depth), 1, -1, -1)
    seen = warp(canon_region, depth, view, fov_deg)[0][:, 0] > 0.5
    mask = erode((pred.mask & true.mask & seen).float(), erode_px)
    pred_d, true_d = pred.view_depth.clamp_min(1e-3), true.view_depth.clamp_min(1e-3)
    ang = angle_errors(dec.view, view)
    reported = decomposer.semantic_view(dec.view)
    return {
        "side": scale_invariant_depth_error(pred_d, true_d, mask),
        "mad_deg": mean_angle_deviation(pred_d, true_d, mask, fov_deg),
        "pitch_err_deg": ang[:, 0],
        "yaw_err_deg": ang[:, 1],
        "roll_err_deg": ang[:, 2],
        "pred_yaw_deg": dec.view[:, 1],
        "light_err_deg": light_angle_error(dec.light, light),
        "depth_px": mask.sum((1, 2)),
        **{f"est_{name}": reported[:, i] for i, name in enumerate(VIEW_NAMES)},
        **{f"est_{name}": dec.light[:, i] for i, name in enumerate(LIGHT_NAMES)},
    }
