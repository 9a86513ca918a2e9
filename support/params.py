"""The params.yaml schema, validated before any work.

Every tunable number of the pipeline lives in params.yaml, grouped by stage, and only there:
this schema holds types and ranges, no defaults, so the file DVC tracks is the one home of every
value. A missing key, an unknown key, a wrong type or an out-of-range value raises `ParamsError`
naming the key and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from support.project import stage_names

Byte = Annotated[int, Field(ge=0, le=255)]


class Section(BaseModel):
    # non-finite floats (.inf, .nan) are refused everywhere: no key documents a use for them
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _power_of_two(v: int) -> int:
    """Resolutions the networks halve down to 4x4 must be powers of 2."""
    if v < 1 or v & (v - 1):
        raise ValueError(f"must be a power of 2 (the networks halve it down to 4x4), got {v}")
    return v


class DataParams(Section):
    """Stage `faces`: the face images and their ground truth."""

    source: Literal["synthetic", "folder"]
    path: str  # folder of images when source = folder
    n_images: int = Field(ge=1)
    resolution: int = Field(ge=16, le=1024)  # square images, pixels
    pose: Literal["frontal", "wide"]
    asymmetry: float = Field(ge=0.0, le=4.0)
    n_eval: int = Field(ge=0)  # first images that keep gt depth/albedo
    seed: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    chunk: int = Field(ge=1)  # zarr chunk along the sample axis
    min_size: int = Field(ge=1)  # folder: shorter side below this is skipped
    crop: Literal["center", "none"]  # folder, align none: square crop before resizing
    # folder: FFHQ alignment from dlib's 68 landmarks (models.alignment), of the largest face or of
    # every face; None (no alignment) stays out of the section hash, like every unset optional key
    align: Literal["ffhq", "ffhq_all"] | None
    alpha_background: tuple[Byte, Byte, Byte] | None  # folder: RGB (0..255) under transparency; None: black


class PreviewParams(Section):
    """Stage `preview`: a grid of faces to look at."""

    grid: int = Field(ge=1, le=32)  # grid x grid images
    scale: int = Field(ge=1, le=8)  # nearest-neighbour upscaling


class GanParams(Section):
    """Stage `train_gan`: StyleGAN2 with the W-decorrelation loss, or the linear ground-truth generator."""

    kind: Literal["stylegan2", "linear"]
    init: str  # scratch | path of a checkpoint (.safetensors) to continue from
    resolution: int = Field(ge=8, le=1024)  # images are area-downsampled from data.resolution
    z_dim: int = Field(ge=2)
    w_dim: int = Field(ge=2)
    mapping_layers: int = Field(ge=1)
    channel_base: int = Field(ge=16)
    channel_max: int = Field(ge=8)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    r1_gamma: float = Field(ge=0)
    r1_interval: int = Field(ge=1)
    pl_weight: float = Field(ge=0)
    pl_interval: int = Field(ge=1)
    style_mixing_prob: float = Field(ge=0, le=1)
    ema_kimg: float = Field(gt=0)
    decorr_weight: float = Field(ge=0)  # Eq. 1 weight (mean over pairs); 0 = off
    decorr_batch_size: int = Field(ge=0)  # z mapped for Eq. 1 each G step; 0 = the G batch
    kimg: float = Field(ge=0)  # thousands of real images shown in this run
    snapshot_kimg: float = Field(gt=0)  # checkpoint + sample grid period
    log_every: int = Field(ge=1)  # steps between curve rows
    keep_checkpoints: int = Field(ge=1)
    grid: int = Field(ge=1, le=16)  # sample grid side (fixed seeds)
    seed: int = Field(ge=0)
    metric_samples: int = Field(ge=64)  # samples for mean |rho| of W
    fid_samples: int = Field(ge=0)  # real and generated images for FID; 0 = skip
    ppl_samples: int = Field(ge=0)  # W path pairs for PPL; 0 = skip

    _resolution = field_validator("resolution")(_power_of_two)


class LatentsParams(Section):
    """Stage `sample_latents`: N latent codes and their generations."""

    n: int = Field(ge=2)  # latent codes to sample
    chunk: int = Field(ge=1)  # samples per zarr chunk (= per shard unit)
    batch_size: int = Field(ge=1)
    truncation_psi: float = Field(gt=0, le=1)
    seed: int = Field(ge=0)


class OracleParams(Section):
    """Stage `train_oracle`: supervised factor regressor, for evaluation only (Table 2's landmarker)."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    width: int = Field(ge=4)
    holdout: float = Field(gt=0, lt=1)  # fraction of faces held out for R^2
    r2_threshold: float = Field(ge=0, le=1)  # factors measured worse are flagged
    kind: Literal["learned", "landmarks"]  # landmarks: pose from landmarks + solvePnP (support.landmark_oracle)
    landmark_faces: int = Field(ge=3)  # landmarks: validation renders of known pose
    landmark_size: int = Field(ge=64, le=1024)  # landmarks: their side
    # Face Mesh (mediapipe), or dlib's HOG, MMOD CNN, or the CNN where HOG finds none
    landmark_detector: Literal["mediapipe", "hog", "cnn", "hog+cnn"]
    landmark_fov_deg: float | None = Field(default=None, gt=0, lt=180)  # solvePnP camera; None: focal = width
    seed: int = Field(ge=0)


class ReconParams(Section):
    """Stages `train_recon` and `decompose`: the Unsup3D-style 3D decomposition (paper Sec. 3.2, 3.4)."""

    train_on: Literal["generator", "faces"]  # GAN generations (with their w) | faces.zarr
    resolution: int = Field(ge=16, le=256)  # decomposer input side (power of 2)
    nf_map: int = Field(ge=4)  # depth / albedo encoder-decoder width (Unsup3D: 64)
    zdim_map: int = Field(ge=4)  # (Unsup3D: 256)
    nf_encoder: int = Field(ge=2)  # view / light encoders (Unsup3D: 32)
    nf_conf: int = Field(ge=2)  # confidence nets (Unsup3D: 64)
    zdim_conf: int = Field(ge=4)  # (Unsup3D: 128)
    depth_prior: float = Field(ge=0)  # convex start against the hollow-face solution; 0 = Unsup3D
    init: str | None = None  # a decomposer.safetensors to start from (its architecture = the keys above); None: new
    steps: int = Field(ge=0)  # optimisation steps in this run (after init: fine-tuning; 0 = use init as is)
    batch_size: int = Field(ge=2)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    flip_weight: float = Field(ge=0)  # weight of the flipped (symmetric) reconstruction
    swap_prob: float = Field(ge=0, le=1)  # mutual reconstruction (paper: 0.1 FFHQ-like, 0.5 CASIA-like)
    yaw_augment: bool  # Sec. 3.4 (train_on generator only)
    yaw_every: int = Field(ge=1)  # steps between v_yaw regressions
    yaw_start: int = Field(ge=0)  # steps before augmenting (v_yaw is still estimated)
    yaw_momentum: float = Field(ge=0, lt=1)
    yaw_scale: float = Field(gt=0)  # s ~ U[-scale, scale] in Eq. 4
    yaw_limit_deg: float | None = Field(gt=0, le=90)  # cap s where the predicted yaw passes this; None: off
    yaw_fraction: float = Field(gt=0, le=4)  # augmented images per batch image
    truncation_psi: float = Field(gt=0, le=1)  # train_on generator: sampling of w
    snapshot_steps: int = Field(ge=1)  # checkpoint + panel period
    log_every: int = Field(ge=1)  # steps between curve rows
    keep_checkpoints: int = Field(ge=1)
    panel_images: int = Field(ge=1, le=64)  # faces in each visual panel
    eval_pose: Literal["frontal", "wide"]  # synthetic ground-truth faces for the metrics
    n_eval: int = Field(ge=8)
    eval_seed: int = Field(ge=0)
    eval_batch: int = Field(ge=1)  # images per forward pass (evaluation, decompose)
    invalid_cost: float = Field(ge=0)  # loss of a pixel the view leaves unrendered
    mirror_weight: float = Field(ge=0)  # view/light of the mirror image = mirrored view/light; 0 = off
    perceptual_weight: float | None = Field(default=None, ge=0)  # VGG16 relu3_3 term (Unsup3D: 1); None/0 = off
    probe_images: int = Field(ge=8, le=1024)  # fixed images checked for a collapse at every snapshot
    max_recoveries: int = Field(ge=0)  # restarts from the best healthy snapshot (new seed) on a collapse
    recovery_lr_factor: float = Field(gt=0, le=1)  # the k-th recovery trains at lr x factor^k
    allow_degenerate: bool  # decompose: go on with a decomposer marked degenerate
    seed: int = Field(ge=0)

    _resolution = field_validator("resolution")(_power_of_two)


class RegressParams(Section):
    """Stage `regress`: Eq. 2-3, directions of the semantics (and the Jacobian of the maps) in W."""

    scheme: Literal["random", "reference", "consecutive"]  # how sample pairs are formed
    ridge: float = Field(ge=0)  # x mean diagonal of dW^T dW; 0 = plain Eq. 3
    jacobian: bool  # also regress every depth / albedo pixel (S x d)
    chunk: int = Field(ge=2)  # samples read and paired at a time (memory)
    seed: int = Field(ge=0)


class EvaluateParams(Section):
    """Stage `evaluate`: Table 2 (extended), recovery on the linear generator, peers, edit quality."""

    n_samples: int = Field(ge=16)  # fresh samples measured by the oracle
    peers_k: int = Field(ge=1)  # first K directions of GANSpace / SeFa searched per semantic
    ganspace_samples: int = Field(ge=2)  # w samples of GANSpace's PCA (its paper: 10^6)
    edit_samples: int = Field(ge=2)  # samples edited per direction
    edit_scale: float = Field(gt=0)  # edits to s = -scale and +scale (Eq. 4)
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0)


class FactorizeParams(Section):
    """Stage `factorize`: Eq. 5, sparse localized components of the canonical-map Jacobian."""

    solver: Literal["fast", "adam"]  # alternating ISTA / sphere gradient | the paper's Adam
    components: int = Field(ge=1)  # P
    alpha: float = Field(ge=0)  # L1 weight on U (J balanced to ||J||_F = 1)
    beta: float = Field(ge=0)  # orthogonality weight on V
    beta_units: Literal["unit", "paper"]  # unit: on the unit-norm J; paper: on J as regressed
    iters: int = Field(ge=1)  # outer iterations (adam: steps)
    tol: float = Field(ge=0)  # relative objective decrease to stop at
    adam_lr: float = Field(gt=0)
    init: Literal["svd", "random"]
    balance: bool  # depth and albedo parts of J to equal Frobenius norm
    min_norm: float = Field(ge=0)  # drop components with ||u_p|| below (on ||J||_F = 1)
    support_frac: float = Field(gt=0, lt=1)  # support: |u_sp| > frac x max_s |u_sp|
    edit_components: int = Field(ge=0)  # components in the edit figure
    edit_scale: float = Field(gt=0)  # s in [-scale, scale] (Fig. 7)
    edit_steps: int = Field(ge=2)
    seed: int = Field(ge=0)


class ClusterParams(Section):
    """Stage `cluster`: Ward linkage of the components' directions (Fig. 6)."""

    n_clusters: int = Field(ge=1)  # flat clusters (ignored when distance is set)
    distance: float | None = Field(gt=0)  # cut the dendrogram at this height instead


class ReportParams(Section):
    """Stage `report`: data/report/index.html (univariate edit rows drawn here, Fig. 1/4)."""

    directions: list[str]  # rows of the edit figure
    seeds: list[int]  # faces edited per direction
    scale: float = Field(gt=0)  # the largest |s| of a row (all rows: s in [-scale, scale] when target_stds is None)
    # per row, s in [-s_d, s_d] with s_d moving the direction's own semantic this many data stds
    # (evaluate.json edit.target_std_per_s), at most `scale`; entangled directions are left out
    target_stds: float | None = Field(default=None, gt=0)
    steps: int = Field(ge=2)

    @field_validator("directions")
    @classmethod
    def _known_directions(cls, value: list[str]) -> list[str]:
        from models.renderer import LIGHT_NAMES, VIEW_NAMES  # noqa: PLC0415  (the 14 semantics' names)

        names = VIEW_NAMES + LIGHT_NAMES
        unknown = [v for v in value if v not in names]
        if unknown:
            raise ValueError(f"unknown direction(s) {unknown}; the semantics are {list(names)}")
        if not value:
            raise ValueError("at least one direction is needed for the edit figure")
        return value


class ProjectParams(Section):
    """`facesem project`: StyleGAN2's projector (Karras et al. 2020, Sec. 5; NVlabs projector.py)."""

    steps: int = Field(ge=1)  # optimisation steps per photo
    space: Literal["w", "w+"]  # one w for every layer (the paper's W) | one w per layer
    distance: Literal["vgg16", "inception"]  # perceptual distance (support.perceptual)
    initial_lr: float = Field(gt=0)  # Adam's peak learning rate
    lr_rampup: float = Field(ge=0, le=1)  # fraction of the steps the rate ramps up over (linear)
    lr_rampdown: float = Field(gt=0, le=1)  # fraction of the steps it ramps down over (cosine)
    initial_noise_factor: float = Field(ge=0)  # std of the noise added to w, in units of w's spread
    noise_ramp: float = Field(gt=0, le=1)  # fraction of the steps over which that noise fades (quadratic)
    noise_regularize: float = Field(ge=0)  # weight of the noise maps' multi-scale autocorrelation penalty
    optimize_noise: bool  # optimise the per-layer noise maps too (NVlabs: yes)
    mse_weight: float = Field(ge=0)  # weight of a pixel MSE term (images in [-1, 1]) next to the distance
    w_avg_samples: int = Field(ge=2)  # z samples for the mean w and its spread
    seed: int = Field(ge=0)  # the initial noise maps and the noise added to w


class FlowParams(Section):
    """Orchestration (Prefect): parallelism, retries and timeouts of stages.

    `stage_retries` / `stage_timeouts` override `retries` / `timeout_s` for the stages they
    name; every name must be a stage of dvc.yaml (checked against the `stages` of the
    validation context when given, else against the project's dvc.yaml).
    """

    max_parallel: int = Field(ge=1, le=64)  # independent stages run at once (task runner workers)
    retries: int = Field(ge=0, le=10)
    retry_delay_s: float = Field(ge=0.0)
    timeout_s: float | None = Field(gt=0)  # wall-clock limit of one attempt of a stage; None = none
    stage_retries: dict[str, Annotated[int, Field(ge=0, le=10)]]
    stage_timeouts: dict[str, Annotated[float, Field(gt=0)] | None]  # None: no limit for that stage
    task_runner: Literal["threads", "dask"]  # dask: a local Dask cluster (prefect-dask)
    dask_workers: int = Field(ge=1, le=256)  # worker processes of that cluster
    shards: int = Field(ge=1, le=4096)  # >1: sample_latents and decompose run as this many shard tasks

    @field_validator("stage_retries", "stage_timeouts")
    @classmethod
    def _known_stages(cls, value: dict, info: ValidationInfo) -> dict:
        if not value:
            return value
        stages = (info.context or {}).get("stages")
        if stages is None:
            stages = stage_names()
        unknown = [name for name in value if name not in stages and name.split("@", 1)[0] not in stages]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml declares {sorted(stages)}")
        return value

    def retries_for(self, stage: str) -> int:
        return self.stage_retries.get(stage, self.retries)

    def timeout_for(self, stage: str) -> float | None:
        return self.stage_timeouts.get(stage, self.timeout_s)


class Params(Section):
    device: str = Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    data: DataParams
    preview: PreviewParams
    gan: GanParams
    latents: LatentsParams
    oracle: OracleParams
    recon: ReconParams
    regress: RegressParams
    evaluate: EvaluateParams
    factorize: FactorizeParams
    cluster: ClusterParams
    report: ReportParams
    project: ProjectParams
    flow: FlowParams

    def section_hash(self, *names: str) -> str:
        """sha256 (first 16 hex digits) of the named sections (all when none given).

        Keys set to None are left out, so that adding an optional key (default None) keeps
        the hashes that artifacts and shipped checkpoints recorded.
        """
        dump = self.model_dump(exclude_none=True)
        chosen = {n: dump[n] for n in (names or sorted(dump))}
        text = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class ParamsError(ValueError):
    """params.yaml does not match the schema; the message names every offending key."""


def _allowed(model: type[BaseModel], loc: tuple) -> str:
    """Describe the allowed keys at `loc` (for unknown-key errors)."""
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return ""
        model = field.annotation
    return "allowed keys: " + ", ".join(model.model_fields)


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a params mapping; raise ParamsError naming each bad key."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            if e["type"] == "extra_forbidden":
                lines.append(f"  {key}: unknown key ({_allowed(Params, e['loc'])})")
            elif e["type"] == "missing":
                lines.append(f"  {key}: missing (every key is required; the project's params.yaml lists them all)")
            else:
                lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
        raise ParamsError(f"{source} is invalid:\n" + "\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """params.yaml -> Params. Raises ParamsError (a ValueError) for a missing file, a YAML syntax
    error (with its line and column) or invalid keys (each named)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    with path.open() as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:  # a syntax error: say where, without a traceback
            raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(raw, str(path))
