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


@torch.no_grad()
def landmark_table2(
    gen: LatentGenerator, units: torch.Tensor, n: int, batch: int, seed: int, device, oracle, max_side: int = 256
) -> dict:
    """Table 2 with the landmark oracle (support.landmark_oracle): Pearson r of w . v with the pitch,
    yaw and roll landmarks + solvePnP read off G(w) (area-downsized to at most `max_side`), over the
    samples where a face is found. units [k, d]; n fresh samples (seed).

    Returns {"table2" [k, 3] (NaN when fewer than 3 faces), "n_measured", "measured_mask" [n]
    bool, "w" [n, d], "y" [n, 3]}.
    """
    from models.peers import pearson  # noqa: PLC0415

    z = torch.randn(n, gen.z_dim, generator=torch.Generator().manual_seed(seed))
    ws, poses = [], []
    for b in tqdm(range(0, n, batch), desc="landmark oracle", unit="batch"):
        w = gen.mapping(z[b : b + batch].to(device))
        images = signed_to_uint8(resize(gen.synthesis(w), min(gen.resolution, max_side)))
        ws.append(w.cpu())
        poses.append(torch.from_numpy(oracle.measure(images)))
    w, y = torch.cat(ws), torch.cat(poses)
    found = ~torch.isnan(y[:, 0])
    table = (
        pearson(w[found] @ units.T.to(w), y[found]).float()
        if int(found.sum()) >= 3
        else torch.full((len(units), y.shape[1]), float("nan"))
    )
    return {"table2": table, "n_measured": int(found.sum()), "measured_mask": found, "w": w, "y": y}
