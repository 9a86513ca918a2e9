"""Loading the trained oracle (stage train_oracle) and measuring factors with it."""

from __future__ import annotations

from pathlib import Path

import torch

from models.oracle import FactorRegressor
from store.checkpoints import CheckpointError, load_checkpoint, load_weights
from store.datasets import to_unit


@torch.no_grad()
def predict(model: FactorRegressor, images: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    """uint8 images [N, 3, r, r] -> factors [N, F] (CPU)."""
    model.eval()
    return torch.cat([model(to_unit(images[b : b + batch]).to(device)).cpu() for b in range(0, len(images), batch)])


def load_oracle(folder: Path, device="cpu") -> tuple[FactorRegressor, list[str]]:
    """The trained oracle and its factor names."""
    weights = folder / "oracle.safetensors"
    state, meta = load_checkpoint(weights, device)
    try:
        model = FactorRegressor(len(meta["factor_names"]), meta["resolution"], meta["width"])
    except KeyError as err:
        raise CheckpointError(f"{weights}: its sidecar lacks {err}: is it an oracle that train_oracle wrote?") from None
    load_weights(model, state, weights, f"oracle (width {meta['width']}, {meta['resolution']} px)")
    return model.to(device).eval(), meta["factor_names"]
