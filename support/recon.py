"""The 3D decomposition as stages use it: build / load, a visual panel, ground-truth evaluation.

models.decomposition and models.recon_metrics compute; this module renders the evaluation
faces, batches, summarizes and draws (the panel of Unsup3D's figures, a yaw scatter).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from models import faces as face_model
from models.decomposition import Decomposer, DecomposerConfig
from models.peers import pearson
from models.recon_metrics import ground_truth_errors
from models.recon_training import render_reconstructions
from models.renderer import LIGHT_NAMES, VIEW_NAMES, shade
from models.resize import resize
from store.checkpoints import load_checkpoint, load_weights
from store.images import save_figure, to_uint8
from support.params import Params, ReconParams

CONFIG_KEYS = ("resolution", "nf_map", "zdim_map", "nf_encoder", "nf_conf", "zdim_conf", "depth_prior")
PANEL_COLUMNS = ("input", "reconstruction", "canonical albedo", "canonical shape", "confidence")
EXTREME_YAW_DEG = 45.0
SIDE_LIGHT = (0.15, 0.15, 0.0, 0.85, 0.85, 0.85, -0.6, -0.4)  # panel shading of the depth: oblique, grey


def decomposer_config(recon: ReconParams) -> DecomposerConfig:
    return DecomposerConfig(**{k: getattr(recon, k) for k in CONFIG_KEYS})


def load_decomposer(weights: str | Path, device="cpu", allow_degenerate: bool = False) -> Decomposer:
    """The decomposer `train_recon` exported (decomposer.safetensors + sidecar with its config).

    Raises ValueError when the sidecar marks it degenerate (a collapsed or hollow-face
    decomposition, `train_recon`'s verdict) unless ``allow_degenerate``, or when its
    ``pivot_offset`` (world units, the reported view's pivot) is not a finite number.
    """
    state, meta = load_checkpoint(weights, device)
    if "config" not in meta:
        raise ValueError(f"{weights}: sidecar has no decomposer 'config'; was it written by train_recon?")
    if meta.get("degenerate") and not allow_degenerate:
        raise ValueError(
            f"{weights}: train_recon marked this decomposition degenerate "
            f"({'; '.join(meta.get('degenerate_reasons', []))}); everything downstream would "
            "inherit it. Retrain (another recon.seed), or set recon.allow_degenerate: true to go on."
        )
    model = Decomposer(DecomposerConfig(**meta["config"]))
    load_weights(model, state, weights, f"decomposer {meta['config']}")
    pivot = meta.get("pivot_offset", 0.0)
    if isinstance(pivot, bool) or not isinstance(pivot, (int, float)) or not math.isfinite(pivot):
        raise ValueError(f"{weights}: sidecar 'pivot_offset' must be a finite number (world units), got {pivot!r}")
    model.pivot_offset = float(pivot)
    return model.to(device).eval().requires_grad_(False)


def initial_weights(recon: ReconParams, device="cpu") -> dict[str, torch.Tensor]:
    """The weights of the decomposer `recon.init` names, for a new training run to start from.

    Raises CheckpointError (missing / unreadable file), ValueError when its sidecar marks it
    degenerate (unless recon.allow_degenerate) or when its architecture differs from recon's
    (naming each key, both values).
    """
    model = load_decomposer(recon.init, device, allow_degenerate=recon.allow_degenerate)
    theirs, ours = model.config.to_dict(), decomposer_config(recon).to_dict()
    differ = [f"recon.{k}: {theirs[k]} in the file, {ours[k]} in params" for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise ValueError(
            f"recon.init {recon.init}: another architecture ({'; '.join(differ)}); set those keys to the file's"
        )
    return model.state_dict()


@torch.no_grad()
def panel(decomposer: Decomposer, images: torch.Tensor) -> np.ndarray:
    """Rows of PANEL_COLUMNS for images [k, 3, r, r] in [-1, 1] -> uint8 [5k, 3, r, r] (row-major).

    Shape: the canonical depth shaded with a grey albedo and an oblique light; confidence:
    1 / sigma of the reconstruction, scaled to [0, 1] per image (bright = confident).
    """
    decomposer.eval()
    dec = decomposer(images)
    rec = render_reconstructions(dec)
    light = dec.light.new_tensor(SIDE_LIGHT).expand(len(images), -1)
    surface = shade(dec.depth, torch.full_like(dec.albedo, 1.0), light)
    conf = 1 / dec.conf
    conf = conf / conf.amax((1, 2, 3), keepdim=True)
    cols = [images * 0.5 + 0.5, rec.recon * 0.5 + 0.5, dec.albedo, surface, conf.expand(-1, 3, -1, -1)]
    return to_uint8(torch.stack(cols, 1).flatten(0, 1).clamp(0, 1))


def eval_faces(params: Params) -> dict[str, torch.Tensor]:
    """Synthetic ground-truth faces (recon.eval_pose, recon.eval_seed) at the decomposer's resolution.

    Images are rendered at data.resolution and area-resized, as training images are.
    Returns images [n, 3, r, r] in [-1, 1], depth [n, r, r] (canonical), view [n, 6], light [n, 8].
    """
    recon_params, r = params.recon, params.recon.resolution
    g = torch.Generator().manual_seed(recon_params.eval_seed)
    f = face_model.sample_factors(recon_params.n_eval, g, pose=recon_params.eval_pose)
    idx = face_model.FACTOR_INDEX
    out = {"images": [], "depth": []}
    for lo in range(0, len(f), recon_params.eval_batch):
        fb = f[lo : lo + recon_params.eval_batch]
        img, _ = face_model.render_faces(fb, params.data.resolution, params.data.asymmetry)
        out["images"].append(resize(img, r) * 2 - 1)
        out["depth"].append(face_model.canonical_maps(fb, r, params.data.asymmetry)[0])
    return {
        "images": torch.cat(out["images"]),
        "depth": torch.cat(out["depth"]),
        "view": f[:, [idx[k] for k in VIEW_NAMES]],
        "light": f[:, [idx[k] for k in LIGHT_NAMES]],
    }


def evaluate(decomposer: Decomposer, params: Params, device) -> tuple[dict, dict[str, np.ndarray]]:
    """Ground-truth metrics (summary for the metrics JSON) and the per-face errors."""
    data, recon_params = eval_faces(params), params.recon
    region = face_model.region_masks(recon_params.resolution)["region:face"]
    parts = []
    decomposer.eval()
    for lo in range(0, recon_params.n_eval, recon_params.eval_batch):
        sl = slice(lo, lo + recon_params.eval_batch)
        parts.append(
            ground_truth_errors(
                decomposer,
                data["images"][sl].to(device),
                data["depth"][sl].to(device),
                data["view"][sl].to(device),
                data["light"][sl].to(device),
                region.to(device),
            )
        )
    per = {k: torch.cat([p[k] for p in parts]).cpu().numpy() for k in parts[0]}
    per["true_yaw_deg"] = data["view"][:, 1].numpy()
    names = VIEW_NAMES + LIGHT_NAMES
    truth = torch.cat([data["view"], data["light"]], 1)
    per.update({f"true_{name}": truth[:, i].numpy() for i, name in enumerate(names)})
    estimates = torch.from_numpy(np.stack([per[f"est_{name}"] for name in names], 1))
    estimate_r = pearson(estimates, truth).diagonal()
    constant = (estimates.std(0) == 0) | (truth.std(0) == 0)  # no r: None, not pearson's 0
    extreme = np.abs(per["true_yaw_deg"]) > EXTREME_YAW_DEG
    scored = per["depth_px"] > 0

    def mean(x, m=None):
        x = x if m is None else x[m]
        return round(float(x.mean()), 5) if x.size else None

    yaw_corr = float(np.corrcoef(per["pred_yaw_deg"], per["true_yaw_deg"])[0, 1])
    summary = {
        "side": mean(per["side"], scored),
        "mad_deg": mean(per["mad_deg"], scored),
        "yaw_mae_deg": mean(per["yaw_err_deg"]),
        "yaw_mae_extreme_deg": mean(per["yaw_err_deg"], extreme),
        "pitch_mae_deg": mean(per["pitch_err_deg"]),
        "roll_mae_deg": mean(per["roll_err_deg"]),
        "light_err_deg": mean(per["light_err_deg"]),
        "yaw_corr": round(yaw_corr, 4),
        "hollow_face": bool(yaw_corr < 0),
        "estimate_r": {n: None if c else round(float(r), 4) for n, r, c in zip(names, estimate_r, constant)},
        "n_eval": int(recon_params.n_eval),
        "n_extreme": int(extreme.sum()),
        "n_unscored": int((~scored).sum()),
        "eval_space": f"synthetic faces (pose {recon_params.eval_pose}, seed {recon_params.eval_seed}) at "
        f"{recon_params.resolution} px; "
        f"SIDE and MAD in the input view over the face region; extreme: |yaw| > "
        f"{EXTREME_YAW_DEG:g} deg",
    }
    return summary, per


def yaw_scatter(true_yaw: np.ndarray, pred_yaw: np.ndarray, path: str | Path, title: str = "") -> Path:
    """The paper's Fig. 5: estimated against true yaw (degrees), extremes (|yaw| > 45) marked."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extreme = np.abs(true_yaw) > EXTREME_YAW_DEG
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=120)
    lim = max(90.0, float(np.abs(true_yaw).max()))
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=1, label="ideal")
    ax.scatter(true_yaw[~extreme], pred_yaw[~extreme], s=5, alpha=0.6, label="|yaw| <= 45")
    ax.scatter(true_yaw[extreme], pred_yaw[extreme], s=5, alpha=0.6, color="C3", label="|yaw| > 45")
    ax.set(
        xlabel="true yaw (deg)",
        ylabel="estimated yaw (deg)",
        xlim=(-lim, lim),
        ylim=(-lim, lim),
        title=title or "yaw: estimated vs true",
    )
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)
