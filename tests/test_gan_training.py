"""Tests of models/decorrelation.py and models/gan_training.py (tiny configs, CPU, seeded)."""

import copy
import math

import pytest
import torch

from models.decorrelation import correlation_matrix, decorrelation_loss, mean_abs_rho
from models.gan_training import GANTrainer, d_logistic_loss, g_nonsaturating_loss, path_length_penalty, r1_penalty
from models.stylegan2 import Discriminator, Generator

# ----------------------------------------------------------- decorrelation


def literal_eq1(w):
    """Eq. 1 with explicit loops over pairs (paper's sums)."""
    rho = torch.corrcoef(w.t())
    d = w.shape[1]
    corr = sum(-math.log(1 - abs(rho[i, j].item())) for i in range(d) for j in range(d) if i != j)
    var = w.var(dim=0)
    return corr, ((var - var.mean()) ** 2).sum().item()


def test_decorrelation_loss_matches_literal_formula():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 6, generator=g, dtype=torch.float64) @ torch.randn(6, 6, generator=g, dtype=torch.float64)
    corr, var = literal_eq1(w)
    d = 6
    loss_sum, c_sum, v_sum = decorrelation_loss(w, reduction="sum", return_terms=True)
    assert c_sum.item() == pytest.approx(corr, rel=1e-6)
    assert v_sum.item() == pytest.approx(var, rel=1e-6)
    assert loss_sum.item() == pytest.approx(corr + var, rel=1e-6)
    loss_mean, c_mean, v_mean = decorrelation_loss(w, return_terms=True)
    assert c_mean.item() == pytest.approx(corr / (d * (d - 1)), rel=1e-6)
    assert v_mean.item() == pytest.approx(var / d, rel=1e-6)
    rho = torch.corrcoef(w.t())
    torch.testing.assert_close(correlation_matrix(w), rho)
    off = rho[~torch.eye(d, dtype=torch.bool)]
    assert mean_abs_rho(w).item() == pytest.approx(off.abs().mean().item(), rel=1e-6)


def test_decorrelation_loss_small_for_independent_equal_variance():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8192, 16, generator=g)
    loss = decorrelation_loss(w)
    # Sampling floor: E|rho| ~ sqrt(2 / (pi (B - 1))) = 0.0088 for B = 8192.
    assert 0 <= loss.item() < 0.02
    assert mean_abs_rho(w).item() < 0.015


def test_decorrelation_loss_larger_for_correlated_or_unequal_variance():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8192, 16, generator=g)
    base = decorrelation_loss(z).item()
    mixed = z.clone()
    mixed[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]  # rho_01 = 0.8, unit variance kept
    unequal = z * torch.linspace(0.5, 2.0, 16)
    l_mixed = decorrelation_loss(mixed).item()
    l_unequal = decorrelation_loss(unequal).item()
    assert l_mixed > base + 2 * (-math.log(1 - 0.8)) / (16 * 15) * 0.9  # the two ordered pairs
    assert l_unequal > base + 0.1
    # Correlation term is scale-invariant; variance term does not see correlations.
    _, c_unequal, _ = decorrelation_loss(unequal, return_terms=True)
    _, c_base, v_base = decorrelation_loss(z, return_terms=True)
    _, _, v_mixed = decorrelation_loss(mixed, return_terms=True)
    assert c_unequal.item() == pytest.approx(c_base.item(), rel=1e-4)
    assert v_mixed.item() == pytest.approx(v_base.item(), abs=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_decorrelation_loss_finite_near_perfect_correlation(reduction):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(64, 8, generator=g)
    cases = {
        "duplicate": torch.cat([base, base[:, :1]], dim=1),
        "negated": torch.cat([base, -base[:, :1]], dim=1),
        "almost": torch.cat([base, base[:, :1] + 1e-7 * torch.randn(64, 1, generator=g)], dim=1),
        "constant": torch.cat([base, torch.full((64, 1), 3.0)], dim=1),
    }
    for name, w in cases.items():
        w = w.clone().requires_grad_(True)
        loss = decorrelation_loss(w, reduction=reduction)
        loss.backward()
        assert torch.isfinite(loss), name
        assert torch.isfinite(w.grad).all(), name
        if name != "constant":
            assert loss.item() > decorrelation_loss(base, reduction=reduction).item(), name


def test_decorrelation_gradient_reduces_loss():
    g = torch.Generator().manual_seed(3)
    w = (torch.randn(512, 8, generator=g) @ torch.randn(8, 8, generator=g)).requires_grad_(True)
    opt = torch.optim.SGD([w], lr=0.5)
    first = decorrelation_loss(w).item()
    for _ in range(50):
        opt.zero_grad()
        loss = decorrelation_loss(w)
        loss.backward()
        assert torch.isfinite(w.grad).all()
        opt.step()
    assert decorrelation_loss(w).item() < 0.5 * first


# --------------------------------------------------------------- trainer

RED = torch.tensor([1.0, -1.0, -1.0]).reshape(1, 3, 1, 1)
BLUE = torch.tensor([-1.0, -1.0, 1.0]).reshape(1, 3, 1, 1)


def two_colour_images(n, generator, resolution=8):
    """Solid red or solid blue images [n, 3, res, res]."""
    pick = torch.rand(n, 1, 1, 1, generator=generator) < 0.5
    return torch.where(pick, RED, BLUE).expand(n, 3, resolution, resolution).clone()


def make_trainer(seed=0, resolution=8, batch_size=8, **kwargs):
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16, w_dim=16, mapping_layers=2, resolution=resolution, channel_base=16 * resolution, channel_max=16
    )
    D = Discriminator(resolution=resolution, channel_base=16 * resolution, channel_max=16)
    kwargs.setdefault("lr", 0.002)
    return GANTrainer(G, D, batch_size=batch_size, seed=seed, **kwargs)


def test_lazy_regularization_optimizer_settings():
    tr = make_trainer(lr=0.002, r1_interval=16, pl_interval=4)
    g_group, d_group = tr.opt_G.param_groups[0], tr.opt_D.param_groups[0]
    assert g_group["lr"] == pytest.approx(0.002 * 4 / 5)
    assert g_group["betas"] == pytest.approx((0.0, 0.99 ** (4 / 5)))
    assert d_group["lr"] == pytest.approx(0.002 * 16 / 17)
    assert d_group["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    off = make_trainer(lr=0.002, r1_gamma=0.0, pl_weight=0.0)
    assert off.opt_G.param_groups[0]["lr"] == 0.002 and off.opt_D.param_groups[0]["betas"] == (0.0, 0.99)


def test_gradient_isolation_of_decorrelation_loss():
    """decorr_weight changes mapping gradients only; synthesis and D grads are bit-identical."""
    for decorr_batch_size in (None, 64):
        base = make_trainer(seed=4, style_mixing_prob=0.9, decorr_batch_size=decorr_batch_size)
        grads = {}
        for weight in (0.0, 5.0):
            tr = make_trainer(
                seed=4, decorr_weight=weight, decorr_batch_size=decorr_batch_size, G_ema=copy.deepcopy(base.G_ema)
            )
            tr.G.load_state_dict(base.G.state_dict())
            tr.D.load_state_dict(base.D.state_dict())
            stats = tr.g_main_phase()
            grads[weight] = (
                {n: p.grad.clone() for n, p in tr.G.named_parameters()},
                {n: p.grad for n, p in tr.D.named_parameters()},
                stats,
            )
        (g0, d0, s0), (g1, d1, s1) = grads[0.0], grads[5.0]
        assert s0["decorr"] == s1["decorr"] > 0 and s0["loss_G"] == s1["loss_G"]
        assert all(v is None for v in d0.values()) and all(v is None for v in d1.values())
        synthesis = [n for n in g0 if n.startswith("synthesis.")]
        mapping = [n for n in g0 if n.startswith("mapping.")]
        assert synthesis and mapping
        for n in synthesis:
            assert torch.equal(g0[n], g1[n]), n
        assert all(not torch.allclose(g0[n], g1[n]) for n in mapping)


def test_toy_two_colour_dataset_d_separates_reals_from_initial_fakes():
    tr = make_trainer(seed=0, decorr_weight=0.1)
    G_initial = copy.deepcopy(tr.G).eval()
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g)
    real = two_colour_images(64, g)
    with torch.no_grad():
        fake0 = G_initial(z, noise_mode="const")
        margin_before = (tr.D(real).mean() - tr.D(fake0).mean()).item()
    history = [tr.step(two_colour_images(8, g)) for _ in range(60)]
    with torch.no_grad():
        real_logits, fake_logits = tr.D(real), tr.D(fake0)
    margin_after = (real_logits.mean() - fake_logits.mean()).item()
    accuracy = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()).item() / 2
    first = sum(s["loss_D"] for s in history[:5]) / 5
    last = sum(s["loss_D"] for s in history[-5:]) / 5
    assert margin_after > margin_before + 1.0
    assert accuracy >= 0.9
    assert last < first - 0.2
    assert all(math.isfinite(v) for s in history for v in s.values())


def test_lazy_phases_run_on_schedule_and_ema_ramp():
    tr = make_trainer(r1_interval=3, pl_interval=2, ema_kimg=0.05, ema_rampup=0.5)
    g = torch.Generator().manual_seed(1)
    flags = []
    for i in range(6):
        s = tr.step(two_colour_images(8, g))
        flags.append((s["ran_pl"], s["ran_r1"]))
        expected_nimg = min(50.0, 8 * i * 0.5)
        assert s["ema_beta"] == pytest.approx(0.5 ** (8 / max(expected_nimg, 1e-8)))
        assert ("pl_penalty" in s) == bool(s["ran_pl"]) and ("r1_penalty" in s) == bool(s["ran_r1"])
    assert flags == [(1, 1), (0, 0), (1, 0), (0, 1), (1, 0), (0, 0)]
    assert tr.nimg == 48 and tr.step_count == 6
    # After the first step (beta = 0) G_ema equalled G; it now lags behind G.
    assert any(not torch.equal(a, b) for a, b in zip(tr.G_ema.parameters(), tr.G.parameters()))
    torch.testing.assert_close(tr.G_ema.mapping.w_avg, tr.G.mapping.w_avg)


def test_first_step_copies_g_into_ema():
    tr = make_trainer()
    tr.step(two_colour_images(8, torch.Generator().manual_seed(0)))
    for a, b in zip(tr.G_ema.parameters(), tr.G.parameters()):
        assert torch.equal(a, b)


def test_path_length_and_r1_values():
    tr = make_trainer(pl_decay=0.5)
    s = tr.g_pl_phase()
    assert s["pl_mean"] == pytest.approx(0.5 * s["pl_length"], rel=1e-5)  # lerp from 0
    assert tr.pl_mean.item() == pytest.approx(s["pl_mean"])
    real = two_colour_images(8, torch.Generator().manual_seed(0))
    s = tr.d_r1_phase(real)
    x = real.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tr.D(x).sum(), x)
    expected = grad.square().sum(dim=[1, 2, 3]).mean().item() * tr.r1_gamma / 2
    assert s["r1_penalty"] == pytest.approx(expected, rel=1e-5)


def test_style_mixing_switches_once_at_a_cutoff():
    tr = make_trainer(style_mixing_prob=1.0)
    z = torch.randn(4, 16)
    for _ in range(5):
        ws, w = tr._map_with_mixing(tr.G, z)
        same = (ws == w.unsqueeze(1)).all(dim=2).all(dim=0)  # [num_ws]
        assert same[0]
        cutoff = int((~same).nonzero()[0])
        assert 1 <= cutoff < tr.G.num_ws
        assert not same[cutoff:].any()
    tr = make_trainer(style_mixing_prob=0.0)
    ws, w = tr._map_with_mixing(tr.G, z)
    assert torch.equal(ws, w.unsqueeze(1).expand_as(ws))


def test_state_dict_round_trip_resumes_identically(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    kwargs = dict(r1_interval=3, pl_interval=2, decorr_weight=1.0, decorr_batch_size=32)
    data = two_colour_images(8 * 12, torch.Generator().manual_seed(7)).split(8)
    a = make_trainer(seed=3, **kwargs)
    for i in range(5):
        a.step(data[i])
    path = tmp_path / "trainer.safetensors"
    safetensors_torch.save_file(a.state_dict(), str(path))
    continued = [a.step(data[i]) for i in range(5, 10)]

    b = make_trainer(seed=99, **kwargs)  # different init and seed: everything must come from the file
    b.load_state_dict(safetensors_torch.load_file(str(path)))
    assert b.step_count == 5 and b.nimg == 40
    resumed = [b.step(data[i]) for i in range(5, 10)]
    for sa, sb in zip(continued, resumed):
        for key in sa:
            if not key.startswith("time_"):
                assert sb[key] == pytest.approx(sa[key], rel=1e-5, abs=1e-6), key
    for (na, pa), (_, pb) in zip(a.G_ema.named_parameters(), b.G_ema.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=na)


def test_non_finite_loss_raises_floating_point_error():
    tr = make_trainer()
    with torch.no_grad():
        tr.D.b4.out.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="G adversarial"):
        tr.step(two_colour_images(8, torch.Generator().manual_seed(0)))
    tr = make_trainer()
    with torch.no_grad():
        tr.G.mapping.fc0.weight[0, 0] = float("inf")
    with pytest.raises(FloatingPointError):
        tr.step(two_colour_images(8, torch.Generator().manual_seed(0)))


def test_bad_real_batch_shape():
    tr = make_trainer()
    with pytest.raises(ValueError):
        tr.step(torch.zeros(8, 3, 16, 16))


def test_sample_uses_ema_and_leaves_training_stream_alone():
    tr = make_trainer()
    state = tr.generator.get_state()
    z = torch.randn(3, 16)
    imgs = tr.sample(z)
    assert imgs.shape == (3, 3, 8, 8)
    assert torch.equal(tr.generator.get_state(), state)
    with torch.no_grad():
        torch.testing.assert_close(imgs, tr.G_ema(z, noise_mode="const"))


def test_decorrelation_weight_decorrelates_the_mapping_output():
    """The mechanism of Sec. 3.1: with decorr_weight > 0 the held-out |rho| of w = F(z) drops."""
    z = torch.randn(4096, 16, generator=torch.Generator().manual_seed(1))
    x = two_colour_images(8, torch.Generator().manual_seed(2))
    result = {}
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        # mapping_lr_mul=1 so that a few steps move the mapping network visibly.
        G = Generator(16, 16, 4, 8, 128, 16, mapping_lr_mul=1.0)
        D = Discriminator(8, 128, 16)
        tr = GANTrainer(G, D, batch_size=8, lr=0.002, seed=0, decorr_weight=weight, decorr_batch_size=256)
        with torch.no_grad():
            before = mean_abs_rho(G.mapping(z, broadcast=False, update_w_avg=False)).item()
        for _ in range(30):
            tr.step(x)
        with torch.no_grad():
            result[weight] = mean_abs_rho(G.mapping(z, broadcast=False, update_w_avg=False)).item()
    assert result[10.0] < result[0.0] - 0.03
    assert result[10.0] < before - 0.03


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_trainer_runs_on_cuda_and_resumes():
    tr = make_trainer(r1_interval=2, pl_interval=2)
    tr_cuda = GANTrainer(
        copy.deepcopy(tr.G).cuda(),
        copy.deepcopy(tr.D).cuda(),
        batch_size=8,
        lr=0.002,
        seed=0,
        r1_interval=2,
        pl_interval=2,
    )
    x = two_colour_images(8, torch.Generator().manual_seed(0))
    for _ in range(3):
        s = tr_cuda.step(x)
    assert all(math.isfinite(v) for v in s.values())
    other = GANTrainer(
        copy.deepcopy(tr.G).cuda(),
        copy.deepcopy(tr.D).cuda(),
        batch_size=8,
        lr=0.002,
        seed=5,
        r1_interval=2,
        pl_interval=2,
    )
    other.load_state_dict(tr_cuda.state_dict())
    a, b = tr_cuda.step(x), other.step(x)
    assert a["loss_G"] == pytest.approx(b["loss_G"], rel=1e-4)
    assert tr_cuda.sample(torch.randn(2, 16)).device.type == "cuda"


# ---- the losses as pure functions, against values worked out by hand


def test_adversarial_losses_at_known_logits():
    zero = torch.zeros(4, 1)
    assert math.isclose(float(g_nonsaturating_loss(zero)), math.log(2), rel_tol=1e-6)
    real, fake = d_logistic_loss(zero, zero)
    assert math.isclose(float(real + fake), 2 * math.log(2), rel_tol=1e-6)
    # a confident, correct D: real logits large, fake logits very negative -> D loss ~ 0, G loss ~ 10
    real, fake = d_logistic_loss(torch.full((4, 1), 10.0), torch.full((4, 1), -10.0))
    assert float(real + fake) < 1e-4
    assert math.isclose(float(g_nonsaturating_loss(torch.full((4, 1), -10.0))), 10.0, rel_tol=1e-4)


def test_r1_penalty_of_a_linear_discriminator_is_its_squared_weight_norm():
    a = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)  # D's weights
    x = torch.randn(5, 3, 4, 4).requires_grad_(True)
    logits = (x * a).sum(dim=[1, 2, 3]).unsqueeze(1)  # D(x) = <a, x>: grad_x D = a for every sample
    penalty = r1_penalty(logits, x)
    assert torch.allclose(penalty, a.square().sum(), rtol=1e-6)
    (grad,) = torch.autograd.grad(penalty, a)  # differentiable (create_graph): D is regularised through it
    assert torch.allclose(grad, 2 * a, rtol=1e-5)


def test_path_length_of_a_linear_synthesis():
    # images = ws @ M summed over layers: J^T y is y @ M^T per layer, so the length is known in closed form
    g = torch.Generator().manual_seed(1)
    num_ws, w_dim, pixels = 3, 5, 2 * 4 * 4
    M = torch.randn(w_dim, pixels, generator=g)
    ws = torch.randn(6, num_ws, w_dim, generator=g).requires_grad_(True)
    images = (ws @ M).sum(1).view(6, 2, 4, 4)
    noise = torch.randn(6, 2, 4, 4, generator=g)
    penalty, lengths, mean = path_length_penalty(images, ws, noise, torch.tensor(0.0), decay=0.5)
    per_layer = noise.view(6, pixels) @ M.T  # [6, w_dim], the same for every layer
    expected = per_layer.square().sum(1).sqrt()
    assert torch.allclose(lengths, expected, rtol=1e-5)
    assert torch.allclose(mean, 0.5 * expected.mean())  # lerp(0, batch mean, 0.5)
    assert torch.allclose(penalty, (expected - 0.5 * expected.mean()).square().mean(), rtol=1e-5)
