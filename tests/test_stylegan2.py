"""Numerical tests of models/stylegan2.py (tiny configs, CPU, seeded)."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import (
    Discriminator,
    EqualConv2d,
    EqualLinear,
    Generator,
    MappingNetwork,
    MinibatchStd,
    ToRGB,
    channels_per_resolution,
    downsample2d,
    fir_kernel,
    modulated_conv2d,
    upfirdn2d,
    upsample2d,
)


def upfirdn2d_reference(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Literal upfirdn2d (zero insertion, pad, depthwise conv, subsample): the fast one's reference."""
    batch, channels, h, w = x.shape
    if up > 1:
        x = x.reshape(batch, channels, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, h * up, w * up)
    x = F.pad(x, list(padding))
    weight = (kernel * gain).flip([0, 1]).to(dtype=x.dtype, device=x.device)
    weight = weight[None, None].repeat(channels, 1, 1, 1)
    x = F.conv2d(x, weight, groups=channels)
    return x[:, :, ::down, ::down]


def tiny_gd(resolution, seed=0):
    torch.manual_seed(seed)
    G = Generator(
        z_dim=16, w_dim=24, mapping_layers=2, resolution=resolution, channel_base=16 * resolution, channel_max=32
    )
    D = Discriminator(resolution=resolution, channel_base=16 * resolution, channel_max=32, mbstd_group=4)
    return G, D


# --------------------------------------------------------------------- shapes


@pytest.mark.parametrize("resolution", [8, 16])
def test_shapes(resolution):
    G, D = tiny_gd(resolution)
    num_ws = 2 * int(math.log2(resolution)) - 2
    assert G.num_ws == num_ws
    z = torch.randn(4, 16)
    ws = G.mapping(z)
    assert ws.shape == (4, num_ws, 24)
    assert G.mapping(z, broadcast=False).shape == (4, 24)
    img = G.synthesis(ws)
    assert img.shape == (4, 3, resolution, resolution)
    assert G.synthesis(ws[:, 0]).shape == img.shape  # [B, w_dim] is broadcast
    assert G(z, noise_mode="const").shape == img.shape
    logits = D(img)
    assert logits.shape == (4, 1)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    # Block channel counts follow min(channel_base // res, channel_max).
    ch = channels_per_resolution(resolution, 16 * resolution, 32)
    assert getattr(G.synthesis, f"b{resolution}").conv1.weight.shape[:2] == (ch[resolution], ch[resolution])
    assert getattr(D, f"b{resolution}").conv1.weight.shape[:2] == (ch[resolution // 2], ch[resolution])
    with pytest.raises(ValueError):
        G.synthesis(torch.randn(4, num_ws + 1, 24))
    with pytest.raises(ValueError):
        D(torch.randn(4, 3, resolution * 2, resolution * 2))


def test_channels_like_stylegan2_ada():
    assert channels_per_resolution(64, 2048, 128) == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32}
    assert channels_per_resolution(256, 32768, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    with pytest.raises(ValueError):
        channels_per_resolution(48, 2048, 128)


def test_resolution_4_generator_and_discriminator():
    G, D = tiny_gd(4)
    assert G.num_ws == 2
    img = G(torch.randn(2, 16))
    assert img.shape == (2, 3, 4, 4)
    assert D(img).shape == (2, 1)


# ---------------------------------------------------------- equalized lr


def test_equal_linear_runtime_scaling():
    torch.manual_seed(0)
    layer = EqualLinear(512, 256, bias_init=0.5, lr_mul=0.01)
    # Stored weight ~ N(0, 1 / lr_mul^2); used weight = stored * lr_mul / sqrt(fan_in).
    assert layer.weight.std().item() == pytest.approx(100.0, rel=0.02)
    assert layer.weight_gain == pytest.approx(0.01 / math.sqrt(512))
    assert (layer.weight.std() * layer.weight_gain).item() == pytest.approx(1 / math.sqrt(512), rel=0.02)
    x = torch.randn(8, 512)
    expected = x @ (layer.weight * 0.01 / math.sqrt(512)).t() + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)
    # Output of a unit-variance input has unit variance (He init at runtime).
    assert EqualLinear(512, 512)(torch.randn(256, 512)).std().item() == pytest.approx(1.0, rel=0.05)


def test_equal_linear_gradient_is_scaled_by_lr_mul():
    torch.manual_seed(0)
    a = EqualLinear(64, 32, lr_mul=1.0)
    b = EqualLinear(64, 32, lr_mul=0.01)
    with torch.no_grad():
        b.weight.copy_(a.weight / 0.01)  # same function
    x = torch.randn(5, 64)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
    a(x).sum().backward()
    b(x).sum().backward()
    # d(out)/d(stored weight) carries the runtime gain, hence lr_mul times smaller.
    torch.testing.assert_close(b.weight.grad, a.weight.grad * 0.01, rtol=1e-5, atol=1e-8)


def test_equal_conv_runtime_scaling():
    torch.manual_seed(0)
    conv = EqualConv2d(64, 32, 3)
    assert conv.weight.std().item() == pytest.approx(1.0, rel=0.03)
    assert (conv.weight.std() * conv.weight_gain).item() == pytest.approx(1 / math.sqrt(64 * 9), rel=0.03)
    x = torch.randn(2, 64, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight / math.sqrt(64 * 9), conv.bias, padding=1))
    act = EqualConv2d(64, 32, 3, activation="lrelu")
    y = act(x)
    torch.testing.assert_close(y, F.leaky_relu(F.conv2d(x, act.weight / 24.0, padding=1), 0.2) * math.sqrt(2))


def test_equal_conv_down_matches_blur_then_stride():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    k = fir_kernel()
    conv = EqualConv2d(4, 5, 3, down=2, bias=False)
    blurred = upfirdn2d_reference(x, k, padding=(2, 2, 2, 2))
    expected = F.conv2d(blurred, conv.weight * conv.weight_gain, stride=2)
    out = conv(x)
    assert out.shape == (2, 5, 4, 4)
    torch.testing.assert_close(out, expected)
    skip = EqualConv2d(4, 5, 1, down=2, bias=False)
    expected = F.conv2d(upfirdn2d_reference(x, k, down=2, padding=(1, 1, 1, 1)), skip.weight * skip.weight_gain)
    torch.testing.assert_close(skip(x), expected)


# ------------------------------------------------------- modulated conv


def direct_modulated_conv(x, weight, styles, demodulate, up=1):
    """Per-sample reference: explicitly modulated / demodulated weights, one F.conv2d each."""
    outs = []
    for b in range(x.shape[0]):
        w = weight * styles[b].reshape(1, -1, 1, 1)  # [out, in, k, k]
        if demodulate:
            w = w / torch.sqrt(w.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        if up == 1:
            outs.append(F.conv2d(x[b : b + 1], w, padding=weight.shape[-1] // 2))
        else:
            y = F.conv_transpose2d(x[b : b + 1], w.transpose(0, 1), stride=2)
            outs.append(upfirdn2d_reference(y, fir_kernel(), padding=(1, 1, 1, 1), gain=4))
    return torch.cat(outs)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("up", [1, 2])
def test_modulated_conv_matches_per_sample_computation(fused, demodulate, up):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 5, 6, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(7, 5, 3, 3, generator=g, dtype=torch.float64)
    styles = torch.randn(3, 5, generator=g, dtype=torch.float64) + 1.0
    out = modulated_conv2d(
        x, weight, styles, demodulate=demodulate, up=up, resample_kernel=fir_kernel().double(), fused=fused
    )
    expected = direct_modulated_conv(x, weight, styles, demodulate, up)
    assert out.shape == (3, 7, 6 * up, 6 * up)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_demodulated_output_has_unit_second_moment():
    # Demodulation restores unit output variance for unit-variance, uncorrelated inputs.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 64, 16, 16, generator=g)
    weight = torch.randn(64, 64, 3, 3, generator=g)
    styles = torch.rand(4, 64, generator=g) * 3
    y = modulated_conv2d(x, weight, styles)
    assert y[:, :, 1:-1, 1:-1].square().mean().item() == pytest.approx(1.0, rel=0.1)


def test_torgb_is_unmodulated_linear_1x1_in_its_own_terms():
    torch.manual_seed(0)
    layer = ToRGB(6, 3, w_dim=8)
    x = torch.randn(2, 6, 4, 4)
    w = torch.randn(2, 8)
    styles = layer.affine(w) / math.sqrt(6)
    expected = direct_modulated_conv(x, layer.weight, styles, demodulate=False) + layer.bias.reshape(1, 3, 1, 1)
    torch.testing.assert_close(layer(x, w, fused_modconv=True), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x, w, fused_modconv=False), expected, rtol=1e-5, atol=1e-6)


def test_generator_fused_and_unfused_agree():
    G, _ = tiny_gd(16)
    z = torch.randn(3, 16)
    a = G(z, noise_mode="const", fused_modconv=True)
    b = G(z, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------- FIR


def test_fir_up_down_preserve_constant_image():
    k = fir_kernel()
    assert k.sum().item() == pytest.approx(1.0)
    x = torch.full((2, 3, 8, 8), 0.7)
    up = upsample2d(x, k)
    down = downsample2d(x, k)
    assert up.shape == (2, 3, 16, 16) and down.shape == (2, 3, 4, 4)
    # Away from the zero-padded border the constant is reproduced exactly.
    torch.testing.assert_close(up[:, :, 1:-1, 1:-1], torch.full_like(up[:, :, 1:-1, 1:-1], 0.7))
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 0.7))
    # With periodic extension (no border) the mean is preserved exactly.
    xp = F.pad(x + torch.randn(2, 3, 8, 8), [4, 4, 4, 4], mode="circular")
    torch.testing.assert_close(upsample2d(xp, k)[:, :, 8:-8, 8:-8].mean(), xp[:, :, 4:-4, 4:-4].mean())
    torch.testing.assert_close(downsample2d(xp, k)[:, :, 2:-2, 2:-2].mean(), xp[:, :, 4:-4, 4:-4].mean())


@pytest.mark.parametrize("padding", [(2, 1, 2, 1), (1, 1, 1, 1), (0, 0, 0, 0), (3, 0, -1, 2)])
def test_upfirdn2d_transposed_path_matches_literal_definition(padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    kernel = torch.rand(4, 4, generator=g)  # asymmetric, to check orientation
    out = upfirdn2d(x, kernel, up=2, padding=padding, gain=4)
    torch.testing.assert_close(out, upfirdn2d_reference(x, kernel, up=2, padding=padding, gain=4))
    out = upfirdn2d(x, kernel, down=2, padding=padding)
    torch.testing.assert_close(out, upfirdn2d_reference(x, kernel, down=2, padding=padding))


# --------------------------------------------------------------- mapping


def test_mapping_w_avg_tracking_and_truncation():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, w_dim=8, num_ws=3, num_layers=2)
    z = torch.randn(32, 8)
    assert torch.equal(mapping.w_avg, torch.zeros(8))
    mapping.train()
    w = mapping(z, broadcast=False)
    torch.testing.assert_close(mapping.w_avg, 0.005 * w.mean(0))  # beta 0.995 from zero
    w2 = mapping(z, broadcast=False)
    torch.testing.assert_close(mapping.w_avg, 0.995 * 0.005 * w.mean(0) + 0.005 * w2.mean(0))
    before = mapping.w_avg.clone()
    mapping(z, update_w_avg=False)
    mapping.eval()
    mapping(z)
    assert torch.equal(mapping.w_avg, before)  # eval mode and update_w_avg=False do not update
    # Truncation.
    ws = mapping(z)  # [32, 3, 8]
    ws0 = mapping(z, truncation_psi=0.0)
    torch.testing.assert_close(ws0, mapping.w_avg.expand_as(ws0))
    ws_half = mapping(z, truncation_psi=0.5)
    torch.testing.assert_close(ws_half, 0.5 * (ws + mapping.w_avg))
    ws_cut = mapping(z, truncation_psi=0.0, truncation_cutoff=1)
    torch.testing.assert_close(ws_cut[:, 0], mapping.w_avg.expand(32, 8))
    torch.testing.assert_close(ws_cut[:, 1:], ws[:, 1:])


def test_mapping_normalizes_z_second_moment():
    torch.manual_seed(0)
    mapping = MappingNetwork(z_dim=8, w_dim=8, num_layers=2)
    z = torch.randn(4, 8)
    torch.testing.assert_close(mapping(z * 10.0), mapping(z), rtol=1e-5, atol=1e-6)


def test_generator_truncation_psi0_gives_w_avg_image():
    G, _ = tiny_gd(8)
    G.train()
    G.mapping(torch.randn(64, 16))  # make w_avg non-zero
    G.eval()
    imgs = G(torch.randn(3, 16), truncation_psi=0.0, noise_mode="const")
    torch.testing.assert_close(imgs, imgs[:1].expand_as(imgs))


# ----------------------------------------------------------------- noise


def test_noise_modes():
    G, _ = tiny_gd(8)
    G.eval()
    with torch.no_grad():  # non-zero noise strengths so that the noise is visible
        for layer in G.modules():
            if hasattr(layer, "noise_strength"):
                layer.noise_strength.fill_(0.5)
    ws = G.mapping(torch.randn(2, 16))
    c1, c2 = G.synthesis(ws, noise_mode="const"), G.synthesis(ws, noise_mode="const")
    assert torch.equal(c1, c2)
    r1 = G.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(5))
    r2 = G.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(5))
    r3 = G.synthesis(ws, noise_mode="random", generator=torch.Generator().manual_seed(6))
    n = G.synthesis(ws, noise_mode="none")
    assert torch.equal(r1, r2)
    assert not torch.allclose(r1, r3)
    assert not torch.allclose(c1, n)
    with pytest.raises(ValueError):
        G.synthesis(ws, noise_mode="bogus")


# ---------------------------------------------------------- discriminator


def test_minibatch_std_matches_manual_computation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 3, 3, generator=g)
    out = MinibatchStd(group_size=4)(x)
    assert out.shape == (8, 5, 3, 3)
    torch.testing.assert_close(out[:, :4], x)
    # Groups: samples {0, 2, 4, 6} and {1, 3, 5, 7} (n % (N / G)).
    for members in ([0, 2, 4, 6], [1, 3, 5, 7]):
        std = (x[members].var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        for i in members:
            torch.testing.assert_close(out[i, 4], torch.full((3, 3), std.item()))


def test_minibatch_std_group_falls_back_to_a_divisor():
    x = torch.randn(6, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    out = MinibatchStd(group_size=4)(x)  # 4 does not divide 6: groups of 3
    assert out.shape == (6, 3, 2, 2)
    torch.testing.assert_close(out[:, :2], x)
    for i in range(6):  # sample i is grouped with i + 2 and i + 4 (mod 6): n % (N / G)
        members = x[[i % 2, i % 2 + 2, i % 2 + 4]]
        expect = members.std(0, unbiased=False).mean()
        torch.testing.assert_close(out[i, 2], torch.full((2, 2), float(expect)), atol=1e-6, rtol=1e-5)
    assert out[0, 2, 0, 0] != out[1, 2, 0, 0]  # two different groups, two different statistics


def test_generator_and_discriminator_gradients_reach_every_parameter():
    G, D = tiny_gd(8)
    G.train()
    img = G(torch.randn(4, 16))
    D(img).sum().backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_state_dicts_save_with_safetensors(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    G, D = tiny_gd(8)
    for name, module in (("G", G), ("D", D)):
        path = tmp_path / f"{name}.safetensors"
        safetensors_torch.save_file(module.state_dict(), str(path))
        loaded = safetensors_torch.load_file(str(path))
        assert set(loaded) == set(module.state_dict())
        module.load_state_dict(loaded)
    assert "mapping.w_avg" in G.state_dict()
    assert not any("resample_kernel" in k for k in G.state_dict())
