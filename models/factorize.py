"""Sparse localized factorization of the Jacobian (paper Sec. 3.5, Eq. 5).

J [S, d] maps latent dims to output pixels (S canonical depth / albedo pixels). Find U [S, P]
and V [d, P] with unit columns minimising

    F(U, V) = ||J - U V^T||_F^2 + alpha ||U||_1 + beta sum_{i != j} (v_i^T v_j)^2.

Column p is one component: v_p a latent direction, u_p its (sparse, localized) pixel map.

Two solvers, same objective, same start (``init_factors``):

* ``factorize_fast``: alternating minimisation. U-step (V fixed): one lasso per pixel row,
  plain ISTA (step 1 / L, L = 2 lambda_max(V^T V)), warm-started; V-step (U fixed): smooth on
  the product of unit spheres, column-preconditioned Riemannian gradient steps with Armijo
  backtracking and renormalisation. Both steps never increase F, so its trace is monotone.
  Cost per outer iteration: two S d P products (J V, J^T U) and (inner + 1) S P^2 ones.
* ``factorize_adam``: the paper's baseline, Adam (lr 1e-4; the paper runs 500k steps) on U and
  a raw V normalised column-wise inside the objective, autograd throughout.

Scale: alpha is a soft threshold of alpha / 2 on every entry of J v_p (V near orthonormal), so
it is tied to the scale of J; balance J to ||J||_F = 1 first (``balance_parts``), then alpha and
``prune_and_order``'s min_norm are in units of that norm.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch

SOLVERS = ("fast", "adam")
INITS = ("svd", "random")


class Factorization(NamedTuple):
    """A solver's result: U [S, P], V [d, P] (unit columns), F after each traced iteration."""

    U: torch.Tensor
    V: torch.Tensor
    trace: list[float]  # objective F at trace_iters (first entry: the initialisation)
    trace_iters: list[int]  # outer iterations (fast) or Adam steps taken at each trace point
    trace_seconds: list[float]  # wall-clock seconds since the call started, at each trace point
    iterations: int  # outer iterations (fast) / Adam steps run
    converged: bool  # stopped on tol rather than on the iteration cap


def _offdiag_sq(G: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} G_ij^2 of a square matrix."""
    return G.square().sum() - G.diagonal().square().sum()


def objective(J: torch.Tensor, U: torch.Tensor, V: torch.Tensor, alpha: float, beta: float) -> float:
    """F(U, V) of Eq. 5 for J [S, d], U [S, P], V [d, P] (assumed unit columns)."""
    J, U, V = J.double(), U.double(), V.double()
    return float((J - U @ V.T).square().sum() + alpha * U.abs().sum() + beta * _offdiag_sq(V.T @ V))


def _unit_columns(X: torch.Tensor) -> torch.Tensor:
    return X / X.norm(dim=0, keepdim=True).clamp_min(1e-300)


def init_factors(
    J: torch.Tensor, P: int, init: str = "svd", generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting (U [S, P], V [d, P]) in float64, U = J V (least squares for orthonormal V).

    "svd": V = the top-P right singular vectors of J (sign: largest entry positive), padded with
    random unit columns when P > min(S, d); "random": normalised Gaussian columns.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    J = J.double()
    S, d = J.shape
    if init == "svd":
        k = min(P, S, d)
        if S >= d:  # eigenvectors of the d x d Gram matrix: O(S d^2), cheaper than a full SVD
            _, vecs = torch.linalg.eigh(J.T @ J)
            V = vecs[:, -k:].flip(1)
        else:
            _, vecs = torch.linalg.eigh(J @ J.T)
            V = _unit_columns(J.T @ vecs[:, -k:].flip(1))
        V = V * torch.where(V.gather(0, V.abs().argmax(0, keepdim=True)) < 0, -1.0, 1.0)
        if P > k:
            V = torch.cat([V, _unit_columns(torch.randn(d, P - k, generator=generator, dtype=J.dtype))], 1)
    else:
        V = _unit_columns(torch.randn(d, P, generator=generator, dtype=J.dtype))
    return J @ V, V.contiguous()


def _soft(X: torch.Tensor, t: float) -> torch.Tensor:
    """Soft-thresholding sign(X) max(|X| - t, 0)."""
    return torch.sign(X) * (X.abs() - t).clamp_min(0)


def _u_step(J, U, V, alpha, inner):
    """ISTA on min_U ||J - U V^T||^2 + alpha ||U||_1 (rows of U independent), warm-started."""
    JV, G = J @ V, V.T @ V  # [S, P], [P, P]
    L = 2 * float(torch.linalg.eigvalsh(G)[-1])
    for _ in range(inner):
        U = _soft(U - (2 / L) * (U @ G - JV), alpha / L)
    return U


def _v_step(J, U, V, beta, steps, t0, c1=1e-4):
    """Armijo-backtracked, column-preconditioned Riemannian gradient on the product of spheres.

    Returns (V, smooth part of F at V with U fixed, next initial step)."""
    A, B = J.T @ U, U.T @ U  # [d, P], [P, P]
    w = 1 / (2 * B.diagonal() + 4 * beta).clamp_min(1e-12 * float(B.diagonal().max()) + 1e-300)

    def f(V):  # ||J - U V^T||^2 - ||J||^2 + beta * off-diagonal (V^T V)^2
        G = V.T @ V
        return float(-2 * (V * A).sum() + (B * G).sum() + beta * _offdiag_sq(G)), G

    fv, G = f(V)
    t = t0
    for _ in range(steps):
        grad = 2 * (V @ B - A) + 4 * beta * (V @ G - V * G.diagonal())
        rgrad = grad - V * (V * grad).sum(0)  # tangent: radial part removed
        D = -rgrad * w
        slope = float((rgrad * D).sum())  # < 0 unless stationary
        if slope >= 0:
            break
        for _ in range(40):
            Vn = _unit_columns(V + t * D)
            fn, Gn = f(Vn)
            if fn <= fv + c1 * t * slope:
                break
            t /= 2
        else:
            return V, fv, t0  # no decreasing step found: keep V
        V, fv, G, t = Vn, fn, Gn, min(2 * t, 1e3)
    return V, fv, t


def factorize_fast(
    J: torch.Tensor,
    P: int,
    alpha: float,
    beta: float,
    *,
    iters: int = 300,
    tol: float = 1e-6,
    init: str = "svd",
    seed: int = 0,
    inner: int = 2,
    v_steps: int = 100,
) -> Factorization:
    """Alternating minimisation of Eq. 5: ``inner`` ISTA steps on U, then ``v_steps`` sphere
    gradient steps on V, per outer iteration; stop when F falls by < tol (relative) in one outer
    iteration, or after ``iters``. F is traced after every outer iteration and never increases.

    Defaults by measurement (benchmarks/factorize.py's planted problem at S 8192, d 256, P 100):
    the V-step limits progress; 100 sphere steps per outer iteration reached a lower F in the
    same time than 10 or 40 (F 0.1357 vs 0.1401 / 0.1359), with 2-10 ISTA steps alike."""
    start = time.perf_counter()
    J = J.double()
    U, V = init_factors(J, P, init, torch.Generator().manual_seed(seed))
    jj = float(J.square().sum())
    trace, its, secs = [objective(J, U, V, alpha, beta)], [0], [time.perf_counter() - start]
    t, converged, k = 1.0, False, 0
    for k in range(1, iters + 1):
        U = _u_step(J, U, V, alpha, inner)
        V, fv, t = _v_step(J, U, V, beta, v_steps, t)
        trace.append(jj + fv + alpha * float(U.abs().sum()))
        its.append(k)
        secs.append(time.perf_counter() - start)
        if trace[-2] - trace[-1] < tol * abs(trace[-2]):
            converged = True
            break
    return Factorization(U, V, trace, its, secs, k, converged)


def factorize_adam(
    J: torch.Tensor,
    P: int,
    alpha: float,
    beta: float,
    *,
    iters: int = 500_000,
    lr: float = 1e-4,
    tol: float = 1e-6,
    init: str = "svd",
    seed: int = 0,
    log_every: int = 100,
) -> Factorization:
    """The paper's solver: Adam on U and V_raw, V = V_raw / ||V_raw|| (per column) inside F, abs
    for the L1 term, autograd. F is traced every ``log_every`` steps (and at the end); stop when
    it changes by < tol (relative) over one such window, or after ``iters`` steps."""
    start = time.perf_counter()
    J = J.double()
    U0, V0 = init_factors(J, P, init, torch.Generator().manual_seed(seed))
    U, Vr = U0.clone().requires_grad_(), V0.clone().requires_grad_()
    opt = torch.optim.Adam([U, Vr], lr=lr)

    def loss_fn():
        V = Vr / Vr.norm(dim=0, keepdim=True)
        return (J - U @ V.T).square().sum() + alpha * U.abs().sum() + beta * _offdiag_sq(V.T @ V)

    trace, its, secs, converged, step = [], [], [], False, 0
    while True:
        loss = loss_fn()
        if step % log_every == 0 or step == iters:
            trace.append(float(loss.detach()))
            its.append(step)
            secs.append(time.perf_counter() - start)
            if len(trace) > 1 and abs(trace[-2] - trace[-1]) < tol * abs(trace[-2]):
                converged = True
                break
        if step == iters:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    with torch.no_grad():
        return Factorization(U.detach(), _unit_columns(Vr.detach()), trace, its, secs, step, converged)


def factorize(J: torch.Tensor, P: int, alpha: float, beta: float, solver: str = "fast", **kw) -> Factorization:
    """Eq. 5 with ``solver`` "fast" (``factorize_fast``) or "adam" (``factorize_adam``); kw to it."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if P < 1 or alpha < 0 or beta < 0:
        raise ValueError(f"need P >= 1, alpha >= 0, beta >= 0, got P={P}, alpha={alpha}, beta={beta}")
    return (factorize_fast if solver == "fast" else factorize_adam)(J, P, alpha, beta, **kw)


def prune_and_order(
    U: torch.Tensor, V: torch.Tensor, min_norm: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep components with ||u_p|| >= min_norm, ordered by ||u_p|| descending (stable).

    U [S, P], V [d, P] -> U [S, K], V [d, K], norms [K], keep_index [K] (long, into P)."""
    norms = U.norm(dim=0)
    order = torch.sort(norms, descending=True, stable=True).indices
    keep = order[norms[order] >= min_norm]
    return U[:, keep], V[:, keep], norms[keep], keep


def supports(U: torch.Tensor, threshold_frac: float = 0.1) -> torch.Tensor:
    """Bool [P, S]: pixels s with |u_sp| > threshold_frac * max_s |u_sp| (empty for u_p = 0)."""
    a = U.abs().T
    return a > threshold_frac * a.amax(dim=1, keepdim=True)


def balance_parts(J: torch.Tensor, sizes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale consecutive row blocks of J [S, d] (``sizes`` rows each, summing to S; e.g. depth
    then albedo pixels) to equal Frobenius norms with ||J||_F = 1 in all. A zero block stays zero
    (scale 1) and the others share the unit norm. Returns (J_balanced, scales [n_parts] float64).
    ``prune_and_order``'s min_norm and the solvers' alpha then refer to this unit-norm J."""
    sizes = [int(s) for s in sizes]
    if sum(sizes) != J.shape[0] or any(s < 0 for s in sizes):
        raise ValueError(f"part sizes {sizes} must be >= 0 and sum to J's {J.shape[0]} rows")
    J = J.double()
    parts = torch.split(J, sizes)
    norms = torch.stack([p.norm() for p in parts])
    live = norms > 0
    n = int(live.sum())
    scales = torch.where(live, 1 / (norms.clamp_min(1e-300) * max(n, 1) ** 0.5), torch.ones_like(norms))
    return torch.cat([p * s for p, s in zip(parts, scales)]), scales


def match_directions(found: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Best |cosine| [m] of each true direction (rows of truth [m, d]) over rows of found [k, d]."""
    if found.shape[0] == 0:
        return torch.zeros(truth.shape[0], dtype=truth.dtype)
    f = found / found.norm(dim=1, keepdim=True).clamp_min(1e-12)
    t = truth / truth.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (t @ f.T).abs().amax(dim=1)


class LocalizedComponents(NamedTuple):
    """The kept components of ``localized_components``, ordered by ||u_p|| (K of them)."""

    units: torch.Tensor  # [K, d] latent directions v_p (unit rows)
    U: torch.Tensor  # [S, K] pixel maps u_p, on the balanced J
    norms: torch.Tensor  # [K] ||u_p||
    support: torch.Tensor  # bool [K, S] pixels each component moves (``supports``)
    part_scales: list[float]  # the factor each row block of J was multiplied by
    beta_effective: float  # beta as applied to the unit-norm J
    jacobian_norm: float  # ||J||_F as given
    factorization: Factorization  # the solver's full result (iterations, convergence, trace)


def localized_components(
    J: torch.Tensor,
    part_sizes: Sequence[int],
    components: int,
    alpha: float,
    beta: float,
    *,
    balance: bool = True,
    beta_units: str = "unit",
    min_norm: float = 0.0,
    support_frac: float = 0.1,
    solver: str = "fast",
    **solver_kw,
) -> LocalizedComponents:
    """Sec. 3.5 end to end: J [S, d] (row blocks of ``part_sizes``, e.g. canonical depth r^2 then
    albedo 3 r^2) -> the sparse localized components of Eq. 5.

    J is balanced (``balance_parts``: equal block norms, ||J||_F = 1) or, with balance=False,
    only scaled to ||J||_F = 1; `beta_units` "unit" applies beta to that unit-norm J, "paper" to J
    as given (the paper's objective on the unnormalised Jacobian): beta / ||J||_F^2 on the unit-norm
    one, since scaling J by c scales the fit term by c^2; factorized with ``components`` columns (``factorize``, solver
    and its keywords: iters, tol, init, seed, lr); components with ||u_p|| < min_norm dropped,
    the rest ordered by ||u_p|| (``prune_and_order``), each with its ``supports`` row.
    Raises ValueError for bad part sizes or solver names.
    """
    if beta_units not in ("unit", "paper"):
        raise ValueError(f"beta_units must be 'unit' or 'paper', got {beta_units!r}")
    raw_norm = float(J.double().norm())
    if beta_units == "paper":
        beta = beta / max(raw_norm, 1e-300) ** 2
    if balance:
        J, scales = balance_parts(J, part_sizes)
        part_scales = [float(s) for s in scales]
    else:
        J = J.double()
        part_scales = [1.0 / float(J.norm())] * len(part_sizes)
        J = J * part_scales[0]
    fac = factorize(J, components, alpha, beta, solver=solver, **solver_kw)
    U, V, norms, _ = prune_and_order(fac.U, fac.V, min_norm)
    support = supports(U, support_frac) if U.shape[1] else torch.zeros(0, J.shape[0], dtype=torch.bool)
    return LocalizedComponents(V.T.contiguous(), U, norms, support, part_scales, float(beta), raw_norm, fac)
