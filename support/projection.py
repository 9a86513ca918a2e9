"""Project images into a pipeline generator's W (or W+): what `facesem project` and `facesem edit
--image` run around models.projector.project.

The generator is copied, so its stored noise maps are optimised on the copy only.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.projector import project
from models.resize import resize
from store.images import expand_inputs, load_face_image, read_photo, signed_to_uint8
from support.generators import LatentGenerator
from support.landmarks import LandmarkDetector, aligned_faces
from support.params import ProjectParams
from support.perceptual import perceptual_distance


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between images in [-1, 1] (peak-to-peak 2; the same value as on 0..255)."""
    mse = float((a.float() - b.float()).square().mean())
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)


@torch.no_grad()
def w_statistics(gen: LatentGenerator, samples: int, seed: int) -> tuple[torch.Tensor, float]:
    """Mean w [w_dim] of `samples` mapped z ~ N(0, I), and the spread sqrt(E ||w - mean||^2) (NVlabs)."""
    z = torch.randn(samples, gen.z_dim, generator=torch.Generator().manual_seed(seed))
    w = torch.cat([gen.mapping(z[i : i + 1000].to(gen.device)) for i in range(0, samples, 1000)]).double()
    w_avg = w.mean(0)
    return w_avg.float(), float((w - w_avg).square().sum(1).mean().sqrt())


def to_generator_input(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 [n, 3, h, w] -> float [n, 3, resolution, resolution] in [-1, 1] (models.resize: area when
    shrinking, bilinear when enlarging). Raises ValueError for anything but 3-channel square images."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ValueError(f"images must be uint8 [n, 3, h, h], got {list(images.shape)}")
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1
    return resize(x, resolution).clamp(-1, 1)


def read_targets(inputs: list[Path], side: int, align: bool, min_size: int = 32) -> tuple[list, np.ndarray, list]:
    """Files or folders -> (names, uint8 [n, 3, side, side], skipped [(file, reason)]).

    Raises FileNotFoundError naming an input that does not exist."""
    files = expand_inputs(inputs)
    detector = LandmarkDetector() if align else None
    names, images, skipped = [], [], []
    for path in files:
        try:
            if align:
                face = aligned_faces(detector, np.asarray(read_photo(path, min_size), np.uint8), max(side, 256))[0]
                face = signed_to_uint8(to_generator_input(face[None], side))[0]
            else:
                face = load_face_image(path, side, min_size, "center")
        except ValueError as err:
            skipped.append((str(path), str(err)))
            continue
        names.append(path.stem)
        images.append(face)
    stack = np.stack(images) if images else np.zeros((0, 3, side, side), np.uint8)
    return names, stack, skipped


@dataclass
class Projected:
    """Per image: ws [n, num_ws, w_dim] (equal rows for space w), reconstructions [n, 3, r, r] in
    [-1, 1], final perceptual distances [n], PSNR in dB [n], the noise maps per layer {name:
    [n, r, r]} (empty when not optimised), and the seconds taken."""

    ws: torch.Tensor
    images: torch.Tensor
    distance: np.ndarray
    psnr_db: np.ndarray
    noise: dict[str, np.ndarray]
    seconds: float


def project_images(
    gen: LatentGenerator, targets: torch.Tensor, params: ProjectParams, *, show_progress: bool = True
) -> Projected:
    """Project targets [n, 3, r, r] in [-1, 1] (r = the generator's resolution) one at a time.

    Raises ValueError when the targets are not at the generator's resolution."""
    r = gen.resolution
    if tuple(targets.shape[1:]) != (3, r, r):
        raise ValueError(f"targets must be [n, 3, {r}, {r}] for this generator, got {list(targets.shape)}")
    device = gen.device
    start = time.perf_counter()
    w_avg, w_std = w_statistics(gen, params.w_avg_samples, params.seed)
    measure = perceptual_distance(params.distance, device)
    copied = LatentGenerator(copy.deepcopy(gen.net), gen.kind, gen.meta)  # its noise maps are optimised
    maps = copied.noise_maps()
    names, noise_maps = list(maps), list(maps.values())
    for m in noise_maps:
        m.requires_grad_(params.optimize_noise)
    ws, images, dist, psnr, noise = [], [], [], [], {n: [] for n in names if params.optimize_noise}
    bar = tqdm(total=len(targets) * params.steps, desc="project", unit="step", disable=not show_progress)
    for i in range(len(targets)):
        target = targets[i : i + 1].to(device)
        result = project(
            copied.synthesis,
            target,
            measure.features,
            measure.distance,
            w_avg.to(device),
            w_std,
            gen.num_ws,
            noise_maps,
            steps=params.steps,
            space=params.space,
            initial_lr=params.initial_lr,
            lr_rampup=params.lr_rampup,
            lr_rampdown=params.lr_rampdown,
            initial_noise_factor=params.initial_noise_factor,
            noise_ramp=params.noise_ramp,
            noise_regularize=params.noise_regularize,
            mse_weight=params.mse_weight,
            generator=torch.Generator().manual_seed(params.seed + i),
            progress=lambda step, d, i=i: (bar.update(1), bar.set_postfix(image=i, distance=f"{d:.4g}")),
        )
        ws.append(result.ws.cpu())
        images.append(result.image.cpu())
        dist.append(result.distance)
        psnr.append(psnr_db(result.image.cpu(), target[0].cpu()))
        for n, m in zip(names, noise_maps):
            if n in noise:
                noise[n].append(m.detach().cpu().numpy().copy())
    bar.close()
    return Projected(
        torch.stack(ws),
        torch.stack(images),
        np.array(dist),
        np.array(psnr),
        {n: np.stack(v) for n, v in noise.items()},
        time.perf_counter() - start,
    )
