"""StyleGAN2 generator and discriminator in plain PyTorch.

Follows the network definitions of Karras et al., "Analyzing and Improving the
Image Quality of StyleGAN" (CVPR 2020) as configured in NVlabs'
stylegan2-ada-pytorch (``networks.py``), written from scratch without custom
CUDA ops so that the same code runs on CPU and GPU:

* equalized learning rate: parameters are stored at unit scale (``N(0, 1)`` /
  ``lr_mul``) and multiplied by ``lr_mul / sqrt(fan_in)`` at every forward pass;
* mapping network: ``z`` normalised by its second moment, ``mapping_layers``
  fully connected leaky-ReLU layers with learning-rate multiplier 0.01, and a
  tracked ``w_avg`` (moving average, beta 0.995) used for truncation;
* synthesis network, "skip" architecture: a learned constant 4x4 input, two
  modulated / demodulated 3x3 convolutions per resolution (the first one
  upsampling), per-pixel noise with a learned strength, and a toRGB output at
  every resolution whose images are upsampled and summed;
* up / downsampling with the separable FIR filter [1, 3, 3, 1] (``upfirdn2d``
  written with ordinary convolutions);
* residual discriminator with minibatch standard deviation.

Images are ``[batch, img_channels, H, W]`` in [-1, 1]. Channel counts per
resolution are ``min(channel_base // resolution, channel_max)``, as in
StyleGAN2-ADA.

Nothing here does I/O. The FIR kernels are non-persistent buffers, so
``state_dict()`` holds only plain, independent tensors (safetensors-ready).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "EqualLinear",
    "EqualConv2d",
    "MappingNetwork",
    "SynthesisLayer",
    "ToRGB",
    "SynthesisBlock",
    "SynthesisNetwork",
    "Generator",
    "DiscriminatorBlock",
    "MinibatchStd",
    "DiscriminatorEpilogue",
    "Discriminator",
    "channels_per_resolution",
    "fir_kernel",
    "upfirdn2d",
    "upsample2d",
    "downsample2d",
    "modulated_conv2d",
    "normalize_2nd_moment",
    "upgrade_legacy_names",
]

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps the activations' second moment at 1


# ----------------------------------------------------------------------------
# Small helpers.


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that the mean of its squares along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> torch.Tensor:
    """Add a per-channel bias (channel axis 1), apply the activation, scale, clamp.

    ``activation`` is "linear" or "lrelu"; "lrelu" includes the sqrt(2) gain, so
    ``gain`` is an *extra* factor on top of it (as ``bias_act`` in StyleGAN2-ADA).
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
        gain = gain * LRELU_GAIN
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r} (expected 'linear' or 'lrelu')")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def channels_per_resolution(resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """``{4: c4, 8: c8, ..., resolution: c}`` with ``c = min(channel_base // res, channel_max)``."""
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {resolution}")
    log2 = int(math.log2(resolution))
    out = {}
    for i in range(2, log2 + 1):
        res = 2**i
        out[res] = max(1, min(channel_base // res, channel_max))
    return out


# ----------------------------------------------------------------------------
# FIR filtering: upfirdn2d in plain torch.


def fir_kernel(taps=(1.0, 3.0, 3.0, 1.0)) -> torch.Tensor:
    """Separable 2-D FIR kernel from 1-D taps, normalised to sum 1. Returns [k, k]."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)  # [k, k]
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter, downsample (StyleGAN2's upfirdn2d).

    x: [batch, channels, h, w]; kernel: [k, k], applied as a true convolution
    (the [1, 3, 3, 1] kernel is symmetric, so orientation only matters for other
    kernels); padding: (left, right, top, bottom) in upsampled pixels, negative
    values crop. Output: [batch, channels, (h * up + top + bottom - k) // down + 1,
    (w * up + left + right - k) // down + 1].
    """
    batch, channels, h, w = x.shape
    k = kernel.shape[-1]
    px0, px1, py0, py1 = padding
    kernel = (kernel * gain).to(dtype=x.dtype, device=x.device)
    if up > 1:
        # Zero insertion + filtering == depthwise transposed convolution with stride
        # `up` (skips the multiplications by the inserted zeros). Its output is the
        # "full" convolution, [batch, channels, (h - 1) * up + k, (w - 1) * up + k];
        # output index n of the padded, valid filtering is index n + k - 1 - p0 of it.
        full = F.conv_transpose2d(x, kernel[None, None].expand(channels, 1, k, k), stride=up, groups=channels)
        out_h = h * up + py0 + py1 - k + 1
        out_w = w * up + px0 + px1 - k + 1
        y0 = k - 1 - py0
        x0 = k - 1 - px0
        # Zero-pad where the requested window reaches beyond the full result, then crop.
        full = F.pad(
            full,
            [max(-x0, 0), max(x0 + out_w - full.shape[3], 0), max(-y0, 0), max(y0 + out_h - full.shape[2], 0)],
        )
        y0, x0 = max(y0, 0), max(x0, 0)
        x = full[:, :, y0 : y0 + out_h, x0 : x0 + out_w]  # [batch, channels, out_h, out_w]
        if down > 1:
            x = x[:, :, ::down, ::down]
        return x
    if any(padding):
        x = F.pad(x, [px0, px1, py0, py1])
    # F.conv2d correlates: flip the kernel for a true convolution.
    weight = kernel.flip([0, 1])[None, None].expand(channels, 1, k, k)  # [channels, 1, k, k]
    return F.conv2d(x, weight, stride=down, groups=channels)


def upsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """[b, c, h, w] -> [b, c, h * factor, w * factor], FIR interpolation (DC gain 1)."""
    k = kernel.shape[-1]
    p0 = (k + factor - 1) // 2
    p1 = (k - factor) // 2
    return upfirdn2d(x, kernel, up=factor, padding=(p0, p1, p0, p1), gain=factor**2)


def downsample2d(x: torch.Tensor, kernel: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """[b, c, h, w] -> [b, c, h // factor, w // factor], FIR anti-aliased."""
    k = kernel.shape[-1]
    p0 = (k - factor + 1) // 2
    p1 = (k - factor) // 2
    return upfirdn2d(x, kernel, down=factor, padding=(p0, p1, p0, p1))


# ----------------------------------------------------------------------------
# Equalized learning-rate layers.


class EqualLinear(nn.Module):
    """Fully connected layer with equalized learning rate.

    The stored weight is ``N(0, 1) / lr_mul``; the forward pass uses
    ``weight * lr_mul / sqrt(in_features)`` and ``bias * lr_mul``, so Adam's
    effective step on the used weight is scaled by ``lr_mul``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str = "linear",
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)  # [out, in]
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [batch, in_features] -> [batch, out_features]
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, self.activation)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activation={self.activation}, lr_mul={self.bias_gain}"
        )


class EqualConv2d(nn.Module):
    """2-D convolution with equalized learning rate and optional FIR downsampling.

    ``down=2`` blurs with the FIR kernel and then convolves with stride 2
    (StyleGAN2's ``conv2d_resample`` with ``down=2``); output is [b, out, h/2, w/2].
    ``gain`` scales the output after the activation (the residual discriminator
    uses sqrt(0.5)).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        gain: float = 1.0,
        conv_clamp: float | None = None,
        resample_taps=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down
        self.gain = gain
        self.conv_clamp = conv_clamp
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("resample_kernel", fir_kernel(resample_taps), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [batch, in_channels, h, w] -> [batch, out_channels, h / down, w / down]
        w = self.weight * self.weight_gain
        k = self.kernel_size
        if self.down > 1:
            fk = self.resample_kernel.shape[-1]
            if k == 1:
                # Downsample first (cheaper), then 1x1 convolution.
                x = downsample2d(x, self.resample_kernel, self.down)
                x = F.conv2d(x, w)
            else:
                # Blur with padding so that the strided valid convolution lands on h / down.
                p0 = (fk - self.down + 1) // 2 + k // 2
                p1 = (fk - self.down) // 2 + k // 2
                x = upfirdn2d(x, self.resample_kernel, padding=(p0, p1, p0, p1))
                x = F.conv2d(x, w, stride=self.down)
        else:
            x = F.conv2d(x, w, padding=k // 2)
        clamp = self.conv_clamp * self.gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"activation={self.activation}, down={self.down}"
        )


# ----------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
    """z [batch, z_dim] -> w [batch, num_ws, w_dim] (or [batch, w_dim] with broadcast=False)."""

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        num_ws: int | None = None,
        num_layers: int = 8,
        layer_features: int | None = None,
        lr_mul: float = 0.01,
        w_avg_beta: float = 0.995,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        layer_features = w_dim if layer_features is None else layer_features
        features = [z_dim] + [layer_features] * (num_layers - 1) + [w_dim]
        for i in range(num_layers):  # fc0 .. fc{num_layers-1}, NVlabs' names
            setattr(self, f"fc{i}", EqualLinear(features[i], features[i + 1], lr_mul=lr_mul, activation="lrelu"))
        self.register_buffer("w_avg", torch.zeros(w_dim))  # [w_dim]

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool | None = None,
        broadcast: bool = True,
    ) -> torch.Tensor:
        """``update_w_avg=None`` updates the tracked mean iff the module is in training mode."""
        x = normalize_2nd_moment(z)  # [batch, z_dim]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)  # [batch, w_dim]
        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                # w_avg <- beta * w_avg + (1 - beta) * mean(w)
                self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if broadcast and self.num_ws is not None:
            x = x.unsqueeze(1).repeat(1, self.num_ws, 1)  # [batch, num_ws, w_dim]
        if truncation_psi != 1.0:
            if truncation_cutoff is None or x.ndim == 2:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


# ----------------------------------------------------------------------------
# Modulated convolution.


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: int = 1,
    resample_kernel: torch.Tensor | None = None,
    fused: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Per-sample modulated (and demodulated) convolution, "same" padding.

    x: [batch, in_channels, h, w]; weight: [out_channels, in_channels, k, k];
    styles: [batch, in_channels]. Returns [batch, out_channels, h * up, w * up].

    The per-sample weight is ``w'_{o,i} = weight_{o,i} * styles_i`` and, with
    ``demodulate``, ``w''_{o,i} = w'_{o,i} / sqrt(sum_{i,kh,kw} w'^2 + eps)``.
    ``fused=True``: one grouped convolution with ``groups=batch`` on the
    per-sample weights. ``fused=False``: scale the activations instead
    (``x * styles``, shared-weight convolution, ``* dcoefs``); identical result,
    usually faster for training on large batches.
    ``up=2``: stride-2 transposed convolution followed by the FIR filter (gain 4).
    """
    batch, in_channels, h, w = x.shape
    out_channels, _, kh, kw = weight.shape
    if up > 1 and resample_kernel is None:
        raise ValueError("up > 1 needs resample_kernel")

    dcoefs = None
    if demodulate:
        wsq = weight.square().sum(dim=[2, 3])  # [out, in]
        # sum_{i,kh,kw} (weight * s_i)^2 = sum_i s_i^2 * sum_{kh,kw} weight^2
        dcoefs = (styles.square() @ wsq.t() + eps).rsqrt()  # [batch, out]

    if fused:
        wmod = weight.unsqueeze(0) * styles.reshape(batch, 1, in_channels, 1, 1)  # [batch, out, in, k, k]
        if dcoefs is not None:
            wmod = wmod * dcoefs.reshape(batch, out_channels, 1, 1, 1)
        xg = x.reshape(1, batch * in_channels, h, w)  # [1, batch*in, h, w]
        if up > 1:
            # conv_transpose2d weight layout: [in_channels, out_channels / groups, k, k]
            wt = wmod.transpose(1, 2).reshape(batch * in_channels, out_channels, kh, kw)
            y = F.conv_transpose2d(xg, wt, stride=up, groups=batch)  # [1, batch*out, (h-1)*up+k, ...]
        else:
            wg = wmod.reshape(batch * out_channels, in_channels, kh, kw)
            y = F.conv2d(xg, wg, padding=kh // 2, groups=batch)  # [1, batch*out, h, w]
        y = y.reshape(batch, out_channels, y.shape[2], y.shape[3])
    else:
        xs = x * styles.reshape(batch, in_channels, 1, 1)  # [batch, in, h, w]
        if up > 1:
            y = F.conv_transpose2d(xs, weight.transpose(0, 1), stride=up)
        else:
            y = F.conv2d(xs, weight, padding=kh // 2)  # [batch, out, h, w]
        if dcoefs is not None:
            y = y * dcoefs.reshape(batch, out_channels, 1, 1)

    if up > 1:
        # y: [batch, out, (h-1)*up + k, (w-1)*up + k]; FIR-filter and crop to h*up.
        fk = resample_kernel.shape[-1]
        p0 = (fk + up - 1) // 2 + kw // 2 - (kw - 1)
        p1 = (fk - up) // 2 + kw // 2 - (kw - up)
        y = upfirdn2d(y, resample_kernel, padding=(p0, p1, p0, p1), gain=up**2)
    return y


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + noise + bias + leaky ReLU. [b, in, r/up, r/up] -> [b, out, r, r]."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        conv_clamp: float | None = None,
        resample_taps=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.conv_clamp = conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)  # w -> styles
        # Unit-variance weight; demodulation makes its scale irrelevant, so no runtime gain.
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))  # [r, r]
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("resample_kernel", fir_kernel(resample_taps), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        generator: torch.Generator | None = None,
        gain: float = 1.0,
    ) -> torch.Tensor:
        # x: [batch, in, h, w]; w: [batch, w_dim]
        styles = self.affine(w)  # [batch, in]
        x = modulated_conv2d(
            x,
            self.weight,
            styles,
            demodulate=True,
            up=self.up,
            resample_kernel=self.resample_kernel,
            fused=fused_modconv,
        )  # [batch, out, r, r]
        if self.use_noise and noise_mode != "none":
            if noise_mode == "random":
                noise = torch.randn(
                    x.shape[0],
                    1,
                    self.resolution,
                    self.resolution,
                    device=x.device,
                    dtype=x.dtype,
                    generator=generator,
                )  # [batch, 1, r, r]
            elif noise_mode == "const":
                noise = self.noise_const.to(x.dtype)  # [r, r]
            else:
                raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
            x = x + noise * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, "lrelu", gain=gain, clamp=clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv without demodulation. [b, in, r, r] -> [b, img_channels, r, r]."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain  # [batch, in]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused_modconv)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture synthesis network.

    The 4x4 block starts from a learned constant and has one conv; every other
    block has an upsampling conv and a plain conv. Each block adds its toRGB
    output to the upsampled image of the previous block. Uses ``num_conv + 1``
    consecutive ws: [conv0, conv1, torgb] (the torgb w is shared with the next
    block's first conv, as in StyleGAN2).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int = 3,
        conv_clamp: float | None = None,
        resample_taps=(1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))  # [c, 4, 4]
            self.conv0 = None
        else:
            self.const = None
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                up=2,
                conv_clamp=conv_clamp,
                resample_taps=resample_taps,
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1
        self.register_buffer("resample_kernel", fir_kernel(resample_taps), persistent=False)

    def forward(
        self,
        x: torch.Tensor | None,
        img: torch.Tensor | None,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [batch, in, r/2, r/2] or None; img: [batch, img_channels, r/2, r/2] or None;
        # ws: [batch, num_conv + 1, w_dim]
        kwargs = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, generator=generator)
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # [batch, c, 4, 4]
            x = self.conv1(x, ws[:, 0], **kwargs)
        else:
            x = self.conv0(x, ws[:, 0], **kwargs)  # [batch, out, r, r]
            x = self.conv1(x, ws[:, 1], **kwargs)
        y = self.torgb(x, ws[:, self.num_conv], fused_modconv=fused_modconv)  # [batch, img_channels, r, r]
        img = y if img is None else upsample2d(img, self.resample_kernel) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [batch, num_ws, w_dim] -> images [batch, img_channels, resolution, resolution]."""

    def __init__(
        self,
        w_dim: int = 512,
        resolution: int = 256,
        img_channels: int = 3,
        channel_base: int = 32768,
        channel_max: int = 512,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.channels = channels_per_resolution(resolution, channel_base, channel_max)
        self.block_resolutions = sorted(self.channels)
        self.num_ws = 0
        for res in self.block_resolutions:  # b4, b8, ..., NVlabs' names
            in_ch = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_ch, self.channels[res], w_dim, res, img_channels, conv_clamp=conv_clamp)
            setattr(self, f"b{res}", block)
            self.num_ws += block.num_conv
        self.num_ws += 1  # final toRGB

    def forward(
        self,
        ws: torch.Tensor,
        noise_mode: str = "random",
        fused_modconv: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """ws [batch, num_ws, w_dim] (or w [batch, w_dim], broadcast) -> images [batch, C, res, res].

        noise_mode: "random" (fresh noise, from `generator` when given), "const" (the stored
        noise_const buffers) or "none". fused_modconv: see `Generator`; None picks it."""
        if fused_modconv is None:
            fused_modconv = (not self.training) and ws.is_cuda
        if ws.ndim == 2:  # [batch, w_dim] -> same w for every layer
            ws = ws.unsqueeze(1).expand(-1, self.num_ws, -1)
        if ws.shape[1:] != (self.num_ws, self.w_dim):
            raise ValueError(f"ws must be [batch, {self.num_ws}, {self.w_dim}], got {list(ws.shape)}")
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws[:, w_idx : w_idx + block.num_conv + 1]  # [batch, num_conv + 1, w_dim]
            x, img = block(x, img, block_ws, noise_mode, fused_modconv, generator)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """StyleGAN2 generator: z [batch, z_dim] -> image [batch, img_channels, res, res] in ~[-1, 1].

    ``fused_modconv`` chooses the grouped-convolution implementation of the
    modulated convolutions (True) or the activation-scaling one (False); both
    compute the same function (tested to float rounding). ``None`` (default):
    grouped convolution for inference on CUDA (as StyleGAN2), activation scaling
    in training mode (as StyleGAN2-ADA) and on CPU, where it measured 1.6x
    (training step) to 3x (inference, batch 16) faster than the grouped one.
    """

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        mapping_layers: int = 8,
        resolution: int = 256,
        channel_base: int = 32768,
        channel_max: int = 512,
        img_channels: int = 3,
        mapping_lr_mul: float = 0.01,
        w_avg_beta: float = 0.995,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim, resolution, img_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim,
            w_dim,
            num_ws=self.num_ws,
            num_layers=mapping_layers,
            lr_mul=mapping_lr_mul,
            w_avg_beta=w_avg_beta,
        )

    def forward(
        self,
        z: torch.Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        update_w_avg: bool | None = None,
        fused_modconv: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg)
        return self.synthesis(ws, noise_mode, fused_modconv, generator)


# ----------------------------------------------------------------------------
# Discriminator.


class DiscriminatorBlock(nn.Module):
    """Residual block: [b, in, r, r] -> [b, out, r/2, r/2].

    ``x_out = sqrt(.5) * skip(x) + sqrt(.5) * conv1(conv0(x))`` where skip is a
    downsampling 1x1 conv without bias and conv1 downsamples. The first block
    (``from_rgb=True``) starts with a 1x1 fromRGB layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        img_channels: int = 3,
        from_rgb: bool = False,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.fromrgb = (
            EqualConv2d(img_channels, in_channels, 1, activation="lrelu", conv_clamp=conv_clamp) if from_rgb else None
        )
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = EqualConv2d(
            in_channels, out_channels, 3, activation="lrelu", down=2, gain=math.sqrt(0.5), conv_clamp=conv_clamp
        )
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, down=2, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fromrgb is not None:
            x = self.fromrgb(x)  # [b, img_channels, r, r] -> [b, in, r, r]
        y = self.skip(x)  # [b, out, r/2, r/2]
        x = self.conv1(self.conv0(x))  # [b, out, r/2, r/2]
        return y + x


class MinibatchStd(nn.Module):
    """Append the mean (over channels and pixels) of the per-group feature std.

    x [N, C, H, W] -> [N, C + num_channels, H, W]. Sample n belongs to group
    ``n % (N // G)``; ``G = min(group_size, N)``, reduced to a divisor of N if needed.
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        while n % g:
            g -= 1
        f = self.num_channels
        y = x.reshape(g, n // g, f, c // f, h, w)  # [G, n, F, c, H, W]
        y = y - y.mean(dim=0)  # deviation from the group mean
        y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, F, c, H, W] std over the group
        y = y.mean(dim=[2, 3, 4])  # [n, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    """4x4 features [b, c, 4, 4] -> logits [b, 1]: mbstd, 3x3 conv, fc, output fc."""

    def __init__(
        self,
        in_channels: int,
        resolution: int = 4,
        mbstd_group: int = 4,
        mbstd_channels: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.mbstd = MinibatchStd(mbstd_group, mbstd_channels) if mbstd_channels > 0 else None
        self.conv = EqualConv2d(in_channels + mbstd_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.fc = EqualLinear(in_channels * resolution * resolution, in_channels, activation="lrelu")
        self.out = EqualLinear(in_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mbstd is not None:
            x = self.mbstd(x)  # [b, c + 1, 4, 4]
        x = self.conv(x)  # [b, c, 4, 4]
        x = self.fc(x.flatten(1))  # [b, c]
        return self.out(x)  # [b, 1]


class Discriminator(nn.Module):
    """Residual StyleGAN2 discriminator: images [b, img_channels, res, res] -> logits [b, 1]."""

    def __init__(
        self,
        resolution: int = 256,
        channel_base: int = 32768,
        channel_max: int = 512,
        mbstd_group: int = 4,
        img_channels: int = 3,
        mbstd_channels: int = 1,
        conv_clamp: float | None = None,
    ):
        super().__init__()
        self.resolution = resolution
        self.img_channels = img_channels
        self.channels = channels_per_resolution(resolution, channel_base, channel_max)
        self.block_resolutions = sorted((r for r in self.channels if r > 4), reverse=True)
        for res in self.block_resolutions:  # b{resolution} .. b8, then the b4 epilogue: NVlabs' names
            block = DiscriminatorBlock(
                self.channels[res],
                self.channels[res // 2],
                img_channels,
                from_rgb=(res == resolution),
                conv_clamp=conv_clamp,
            )
            setattr(self, f"b{res}", block)
        self.from_rgb4 = (
            EqualConv2d(img_channels, self.channels[4], 1, activation="lrelu", conv_clamp=conv_clamp)
            if resolution == 4
            else None
        )
        self.b4 = DiscriminatorEpilogue(self.channels[4], 4, mbstd_group, mbstd_channels, conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.shape[1:] != (self.img_channels, self.resolution, self.resolution):
            raise ValueError(
                f"images must be [batch, {self.img_channels}, {self.resolution}, {self.resolution}], "
                f"got {list(img.shape)}"
            )
        x = img
        if self.from_rgb4 is not None:
            x = self.from_rgb4(x)
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)  # [b, c(res/2), res/2, res/2]
        return self.b4(x)  # [b, 1]


# ----------------------------------------------------------------------------
# State dicts written before the modules took NVlabs' names (facesem < 0.2).

_LEGACY_PREFIXES = (
    (re.compile(r"^synthesis_net\.blocks\.(b\d+)\."), r"synthesis.\1."),
    (re.compile(r"^mapping_net\.layers\.(\d+)\."), r"mapping.fc\1."),
    (re.compile(r"^mapping_net\."), "mapping."),
    (re.compile(r"^blocks\.(b\d+)\.from_rgb\."), r"\1.fromrgb."),
    (re.compile(r"^blocks\.(b\d+)\."), r"\1."),
    (re.compile(r"^epilogue\."), "b4."),
)


def upgrade_legacy_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Generator or Discriminator state dict under the module names this file used before it
    took NVlabs' (``synthesis_net.blocks.bR`` -> ``synthesis.bR``, ``mapping_net.layers.I`` ->
    ``mapping.fcI``, D ``blocks.bR`` -> ``bR``, ``from_rgb`` -> ``fromrgb``, ``epilogue`` -> ``b4``);
    a state dict already under the new names is returned unchanged. Values are not copied."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in _LEGACY_PREFIXES:
            key, n = pattern.subn(replacement, key)
            if n:
                break
        out[key] = value
    return out


def with_resample_filters(state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """A G ("G") or D ("D") state dict plus the `resample_filter` buffers NVlabs' modules register
    (the [1, 3, 3, 1] FIR, here a constant), so that NVlabs' `load_state_dict` takes it as is:
    G on every synthesis block and its conv0 / conv1; D on every block above 4 px and its
    fromrgb / conv0 / conv1 / skip, and on the epilogue's conv (b4.conv)."""
    if kind not in ("G", "D"):
        raise ValueError(f"kind must be 'G' or 'D', got {kind!r}")
    filt = fir_kernel()
    out = dict(state)
    pattern = (
        re.compile(r"^(synthesis\.b\d+)(\.conv[01])?\.weight$")
        if kind == "G"
        else re.compile(r"^(b\d+)(\.(?:fromrgb|conv0|conv1|skip|conv))?\.weight$")
    )
    for key in state:
        match = pattern.match(key)
        if match is None:
            continue
        block, layer = match.group(1), match.group(2) or ""
        if kind == "D" and block == "b4" and layer != ".conv":
            continue
        out[f"{block}{layer}.resample_filter"] = filt.clone()
        if kind == "G" or block != "b4":
            out[f"{block}.resample_filter"] = filt.clone()
    return out
