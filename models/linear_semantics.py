"""Linear-encoded semantics (paper Sec. 3.3, Eq. 2-4): regression of semantics on latent differences.

A semantic y = f(G(w)) is assumed linear in w: dy = v^T dw. From N pairs of
latents and their measured semantics, stack dW [N, d] and dY [N, k] and solve

    V = argmin ||dY - dW V||^2 = (dW^T dW)^-1 dW^T dY          (Eq. 3, N > d)

one column per semantic. The normal equations (dW^T dW, dW^T dY) are sums
over pairs, so ``NormalEquations`` accumulates them chunk by chunk (and
merges shards); ``regress_directions`` is the one-shot version. Moving along
a direction (Eq. 4): w_s = w - (w.v) v + s sigma_w v, v of unit length,
sigma_w the standard deviation of w.v over samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import torch

SCHEMES = ("random", "reference", "consecutive")


def derangement(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Uniformly random permutation [n] (long) with no fixed point: perm[i] != i for all i.

    Rejection sampling of ``torch.randperm`` (about e tries on average). n >= 2.
    """
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    idx = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == idx).any():
            return perm.to(device) if device is not None else perm


def pair_differences(
    w: torch.Tensor, y: torch.Tensor, scheme: str = "random", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent and semantic differences of pairs of samples.

    w [N, d], y [N] or [N, k] (row i measured on G(w_i)). ``scheme``:
    "random": each sample minus a random other one (a derangement: N pairs,
    every sample used twice); "reference": every sample minus sample 0
    (N - 1 pairs); "consecutive": sample i + 1 minus sample i (N - 1 pairs).
    Returns (dW [M, d], dY [M] or [M, k]).
    """
    if w.shape[0] != y.shape[0]:
        raise ValueError(f"w and y must have the same number of rows, got {w.shape[0]} and {y.shape[0]}")
    if scheme == "random":
        perm = derangement(w.shape[0], generator).to(w.device)
        return w - w[perm], y - y[perm]
    if scheme == "reference":
        return w[1:] - w[:1], y[1:] - y[:1]
    if scheme == "consecutive":
        return w[1:] - w[:-1], y[1:] - y[:-1]
    raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")


def stream_pairs(
    chunks: Iterable[tuple[torch.Tensor, torch.Tensor]],
    scheme: str = "random",
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``pair_differences`` over consecutive chunks (w [c, d], y [c, k]) of a long sequence, chunk by chunk.

    "reference" and "consecutive" give exactly the pairs of ``pair_differences``
    on the concatenation; "random" pairs samples within each chunk (a
    derangement of the chunk; a chunk of one sample is paired with the last
    sample of the previous chunk). Memory: one chunk.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    ref = prev = None
    for w, y in chunks:
        last = (w[-1:], y[-1:])
        if scheme == "reference":
            if ref is None:
                ref, w, y = (w[:1], y[:1]), w[1:], y[1:]
            if len(w):
                yield w - ref[0], y - ref[1]
        elif scheme == "consecutive":
            if prev is not None:
                w, y = torch.cat([prev[0], w]), torch.cat([prev[1], y])
            if len(w) >= 2:
                yield pair_differences(w, y, "consecutive")
        elif len(w) >= 2:
            yield pair_differences(w, y, "random", generator)
        elif prev is not None:
            yield w - prev[0], y - prev[1]
        prev = last


class NormalEquations:
    """Running sums of the least-squares normal equations: gram = dW^T dW [d, d], cross = dW^T dY [d, k].

    ``add`` chunks of pairs (float64 sums), ``merge`` shards, ``solve`` for the
    directions, ``r2`` for the fit of a solution. Also keeps sum dY and sum dY^2
    [k] (for R^2). Memory O(d^2 + d k) whatever the number of pairs.
    ``state_dict`` holds plain tensors.
    """

    def __init__(self, d: int, k: int = 1, device=None):
        self.gram = torch.zeros(d, d, dtype=torch.float64, device=device)
        self.cross = torch.zeros(d, k, dtype=torch.float64, device=device)
        self.y_sum = torch.zeros(k, dtype=torch.float64, device=device)
        self.y_sq = torch.zeros(k, dtype=torch.float64, device=device)
        self.n = 0

    @property
    def dim(self) -> int:
        return self.gram.shape[0]

    def add(self, dw: torch.Tensor, dy: torch.Tensor) -> NormalEquations:
        """Accumulate pairs dW [M, d], dY [M] or [M, k]."""
        dw = dw.to(self.gram)
        dy = dy.to(self.gram).reshape(dw.shape[0], -1)
        self.gram += dw.T @ dw
        self.cross += dw.T @ dy
        self.y_sum += dy.sum(0)
        self.y_sq += (dy * dy).sum(0)
        self.n += dw.shape[0]
        return self

    def merge(self, other: NormalEquations) -> NormalEquations:
        """Add another accumulator's sums (e.g. from another shard)."""
        self.gram += other.gram.to(self.gram)
        self.cross += other.cross.to(self.cross)
        self.y_sum += other.y_sum.to(self.y_sum)
        self.y_sq += other.y_sq.to(self.y_sq)
        self.n += other.n
        return self

    def r2(self, v: torch.Tensor) -> torch.Tensor:
        """Coefficient of determination [k] of dY ~ dW v on the accumulated pairs; v [d, k].

        SSE = sum dY^2 - 2 v.(dW^T dY) + v^T (dW^T dW) v; SST = sum (dY - mean dY)^2.
        NaN where dY does not vary (SST ~ 0: a constant semantic has nothing to explain).
        """
        v = v.to(self.gram).reshape(self.dim, -1)
        sse = self.y_sq - 2 * (v * self.cross).sum(0) + (v * (self.gram @ v)).sum(0)
        sst = self.y_sq - self.y_sum**2 / max(self.n, 1)
        constant = sst <= 1e-12 * self.y_sq.clamp_min(1e-300)
        return torch.where(constant, torch.nan, 1 - sse.clamp_min(0) / sst.clamp_min(1e-300))

    def solve(
        self, ridge: float = 0.0, rcond: float = 1e-10, fallback: float = 1e-6, _stacklevel: int = 2
    ) -> torch.Tensor:
        """V [d, k] float64 = (gram + ridge I)^-1 cross.

        Never raises on a singular system: when N <= d with ``ridge`` 0, or
        when the smallest eigenvalue of (gram + ridge I) is below ``rcond``
        times the largest, it warns and adds a ridge of ``fallback`` times the
        mean diagonal of gram.
        """
        d = self.dim
        eye = torch.eye(d, dtype=self.gram.dtype, device=self.gram.device)
        a = self.gram + ridge * eye
        eig = torch.linalg.eigvalsh(a)
        singular = not bool(eig[0] > rcond * eig[-1].abs().clamp_min(1e-300))
        if singular or (self.n <= d and ridge <= 0):
            scale = float(self.gram.diagonal().mean().clamp_min(1e-12))
            why = f"N = {self.n} <= d = {d}" if self.n <= d else "near-singular system"
            warnings.warn(
                f"regression: {why}; adding a ridge of {fallback * scale:.3g}", RuntimeWarning, stacklevel=_stacklevel
            )
            a = a + fallback * scale * eye
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            return torch.cholesky_solve(self.cross, chol)
        return torch.linalg.lstsq(a, self.cross).solution  # still indefinite: least squares

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "gram": self.gram,
            "cross": self.cross,
            "y_sum": self.y_sum,
            "y_sq": self.y_sq,
            "n": torch.tensor(self.n),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> NormalEquations:
        out = cls(state["gram"].shape[0], state["cross"].shape[1], state["gram"].device)
        out.gram.copy_(state["gram"])
        out.cross.copy_(state["cross"])
        out.y_sum.copy_(state["y_sum"])
        out.y_sq.copy_(state["y_sq"])
        out.n = int(state["n"])
        return out


def regress_directions(dw: torch.Tensor, dy: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """Eq. 3: V = (dW^T dW + ridge I)^-1 dW^T dY. dW [N, d], dY [N, k] -> [d, k] (dY [N] -> [d]).

    Solved in float64, returned in dW's dtype. Warns and adds a small ridge
    when N <= d (with ridge 0) or the system is near-singular (see
    ``NormalEquations.solve``); never raises for that.
    """
    k = 1 if dy.dim() == 1 else dy.shape[1]
    eq = NormalEquations(dw.shape[1], k, dw.device).add(dw, dy)
    v = eq.solve(ridge, _stacklevel=3).to(dw.dtype)
    return v[:, 0] if dy.dim() == 1 else v


def unit(v: torch.Tensor) -> torch.Tensor:
    """v / ||v|| along the last dimension."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def projection_std(w, v: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """sigma_w: standard deviation (N - 1 normalised) of w.v_hat over samples w [N, d].

    w: a tensor or any array sliceable by rows (a Zarr array is streamed `chunk` rows at a time);
    v: [d] or [k, d], any norm. -> 0-d (v [d]) or [k], float64 accumulation, dtype of v.
    """
    u = unit(v.double()).reshape(-1, v.shape[-1])  # [k, d]
    total, sq, n = torch.zeros(len(u), dtype=torch.float64), torch.zeros(len(u), dtype=torch.float64), 0
    for lo in range(0, w.shape[0], chunk):
        block = w[lo : lo + chunk]
        p = torch.as_tensor(block).detach().to("cpu", torch.float64) @ u.T  # [c, k]
        total, sq, n = total + p.sum(0), sq + (p * p).sum(0), n + len(p)
    std = ((sq - total**2 / max(n, 1)) / max(n - 1, 1)).clamp_min(0).sqrt().to(v.dtype)
    return std[0] if v.dim() == 1 else std


def manipulate(w: torch.Tensor, v: torch.Tensor, s, sigma_w) -> torch.Tensor:
    """Eq. 4: w_s = w - (w.v) v + s sigma_w v, v normalised inside.

    w [B, d]; v [d] (any norm); s: float or [B]; sigma_w: float or 0-d tensor.
    The component of w orthogonal to v is kept; w_s.v = s sigma_w.
    """
    v = unit(v).to(w)
    s = torch.as_tensor(s, dtype=w.dtype, device=w.device)
    sigma_w = torch.as_tensor(sigma_w, dtype=w.dtype, device=w.device)
    target = (s * sigma_w).expand(w.shape[0])
    return w + (target - w @ v)[:, None] * v


def entangled_directions(effect: torch.Tensor, names: list[str], columns: list[str] | None = None) -> dict[str, dict]:
    """Directions that move another semantic more than their own.

    effect [k, m]: row i = how much moving along direction names[i] changes each semantic (e.g.
    data stds per unit s, or |r|), the columns named by `columns` (default: `names`, k = m), which
    include each direction's own semantic. Returns {direction: {"moves_more": the other semantic
    it moves most, "other": that effect, "own": its own}} for each direction whose largest
    |effect| on another column exceeds that on its own (a tie is not entangled). Raises
    ValueError when a direction's own semantic is not among the columns.
    """
    columns = list(names if columns is None else columns)
    missing = [n for n in names if n not in columns]
    if missing:
        raise ValueError(f"the effect's columns {columns} lack the directions' own semantics {missing}")
    out = {}
    magnitude = effect.abs()
    for i, name in enumerate(names):
        own = columns.index(name)
        others = magnitude[i].clone()
        others[own] = -1.0
        j = int(others.argmax())
        if float(others[j]) > float(magnitude[i, own]):
            out[name] = {
                "moves_more": columns[j],
                "other": round(float(others[j]), 4),
                "own": round(float(magnitude[i, own]), 4),
            }
    return out
