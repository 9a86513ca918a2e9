"""Data-parallel training under `torchrun` (one process per GPU, or per CPU slot with gloo).

As in NVlabs' stylegan2-ada-pytorch, gradients are averaged by hand (one flattened
all-reduce per optimizer step) instead of wrapping modules in DistributedDataParallel: the
GAN's phases (main, lazy R1, lazy path length) each step a different optimizer on a
different subset of parameters, which DDP's reducer handles poorly. Every rank starts
from the same weights (broadcast from rank 0), sees its own slice of the global batch
(``batch_size // world``) and applies the same averaged update, so the replicas never drift.
Rank 0 alone writes checkpoints, figures and metrics.

    torchrun --standalone --nproc_per_node 4 -m stages.train_gan -- --faces ... (dvc.yaml's arguments; the
    `--` keeps torchrun from reading `--run` as its own option)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place: rank in [0, size); device to train on."""

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> World:
    """Join the process group torchrun describes (WORLD_SIZE > 1); otherwise a world of one.

    CUDA ranks use NCCL and GPU ``LOCAL_RANK``; CPU ranks use gloo."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


def broadcast_parameters(*modules: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op in a world of one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def parameter_digest(*modules: torch.nn.Module) -> str:
    """sha256 (16 hex digits) of the modules' parameters, in order: equal on every rank exactly when
    the trained replicas are bit-identical. Each rank logs it at the end of training. (Buffers
    such as StyleGAN's running w average are per rank, as in NVlabs' code: rank 0's are saved.)"""
    import hashlib  # noqa: PLC0415

    h = hashlib.sha256()
    for module in modules:
        for tensor in module.parameters():
            h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Replace each gradient of the optimizer's parameters by its mean over ranks, in one
    all-reduce of a flat buffer. Which parameters have a gradient is the same on every rank
    (same graph), and those without one keep none, so the optimizer skips them as it would
    in a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return
    flat = torch.cat([p.grad.flatten() for p in params])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
