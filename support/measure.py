"""Measuring generations with the oracle: w -> G(w) -> the factors the oracle predicts."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from models.resize import resize
from store.images import signed_to_uint8
from support.generators import LatentGenerator
from support.oracle import load_oracle, predict


class Measure:
    """w [n, d] -> the factors [n, len(names)] of G(w) as the oracle measures them (default: all it
    measures, univariate and localized; `names` lists them in column order)."""

    def __init__(self, gen: LatentGenerator, oracle_dir: Path, batch: int, device, names: list[str] | None = None):
        self.gen, self.batch, self.device = gen, batch, device
        self.oracle, factor_names = load_oracle(oracle_dir, device)
        self.names = list(factor_names if names is None else names)
        missing = [n for n in self.names if n not in factor_names]
        if missing:
            raise ValueError(f"the oracle in {oracle_dir} does not measure {missing}")
        self.columns = [factor_names.index(n) for n in self.names]

    @torch.no_grad()
    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        r = self.oracle.resolution  # generations area-downsampled to the oracle's input side
        starts = range(0, len(w), self.batch)
        images = torch.cat(
            [
                torch.from_numpy(signed_to_uint8(resize(self.gen.synthesis(w[b : b + self.batch].to(self.device)), r)))
                for b in tqdm(starts, desc="generate", unit="batch", disable=len(starts) < 4)
            ]
        )
        return predict(self.oracle, images, self.device, self.batch)[:, self.columns]
