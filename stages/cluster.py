"""Stage `cluster`: Ward clustering of the localized components' directions (paper Fig. 6).

Distance between components p, q: 1 - |cos(v_p, v_q)|. Writes `--out`: dendrogram.png (each
leaf with its albedo-change thumbnail), supports.png (per flat cluster, the union of its
components' supports on the canonical face), clusters.csv (component, cluster, norm, region).
With synthetic faces, each component is labelled by the ground-truth region (face interior,
around the face, background) that holds most of its support, and the clustering is scored
by purity: the fraction of components whose cluster's majority region is their own.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models import faces as face_model
from models.clustering import purity, region_cosines, region_labels, ward_clusters
from store.artifacts import open_store, write_json
from store.images import save_figure, save_grid, to_uint8
from support.figures import albedo_rgb, split_maps
from support.params import Params
from support.stage import stage_args

log = logging.getLogger("stages.cluster")


def dendrogram_figure(linkage: np.ndarray, thumbs: np.ndarray, labels: list[str], path: Path) -> None:
    """The dendrogram with each leaf's thumbnail (uint8 [K, 3, r, r]) under it."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: PLC0415
    from scipy.cluster.hierarchy import dendrogram  # noqa: PLC0415

    k = len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * k), 4.5), dpi=110)
    tree = dendrogram(linkage, labels=labels, ax=ax, leaf_rotation=90, color_threshold=None)
    ax.set_ylabel("Ward distance (1 - |cos|)")
    for x, leaf in zip(ax.get_xticks(), tree["leaves"]):
        box = AnnotationBbox(
            OffsetImage(thumbs[leaf].transpose(1, 2, 0), zoom=0.6),
            (x, 0),
            xybox=(0, -38),
            xycoords=("data", "axes fraction"),
            boxcoords="offset points",
            frameon=False,
        )
        ax.add_artist(box)
    fig.subplots_adjust(bottom=0.32)
    save_figure(fig, path)


def run(params: Params, components: Path, out: Path, metrics: Path) -> dict:
    start, cluster_params = time.perf_counter(), params.cluster
    store = open_store(components)
    units = torch.from_numpy(store["unit"][:]).double()
    k = len(units)
    if k < 2:
        raise ValueError(
            f"{components} keeps {k} component(s): clustering needs 2 or more "
            "(lower factorize.min_norm or factorize.alpha)"
        )
    r = int(store.attrs["layout"]["depth"][-1])
    support = torch.from_numpy(store["support"][:])  # [K, S]
    pixels = split_maps(support.float(), r)
    touched = (pixels[0] + pixels[1].sum(1)) > 0  # [K, r, r] any channel
    linkage, labels = ward_clusters(units, n_clusters=cluster_params.n_clusters, distance=cluster_params.distance)
    names = list(store["unit"].attrs["rows"])
    U = torch.from_numpy(store["U"][:]).T  # [K, S]
    thumbs = to_uint8(albedo_rgb(split_maps(U, r)[1]))
    out.mkdir(parents=True, exist_ok=True)
    dendrogram_figure(linkage, thumbs, names, out / "dendrogram.png")
    clusters = sorted(set(labels.tolist()))
    unions = torch.stack([touched[torch.from_numpy(labels == c)].any(0) for c in clusters])
    save_grid(
        to_uint8(unions[:, None].float().expand(-1, 3, -1, -1)), out / "supports.png", ncols=len(clusters), scale=4
    )
    regions = face_model.region_masks(r)
    region_names = [f"region:{n}" for n in face_model.REGIONS]
    own = region_labels(touched, torch.stack([regions[n] for n in region_names]))  # [K] index or -1
    table = pd.DataFrame(
        {
            "component": names,
            "cluster": labels,
            "norm": store["norms"][:],
            "region": [face_model.REGIONS[i] if i >= 0 else "" for i in own.tolist()],
            "support_px": touched.flatten(1).sum(1).numpy(),
        }
    )
    table.to_csv(out / "clusters.csv", index=False)
    result = {
        "n_clusters": len(clusters),
        "n_components": k,
        "cluster_sizes": {str(c): int((labels == c).sum()) for c in clusters},
        "cluster_regions": {str(c): table[table.cluster == c].region.value_counts().to_dict() for c in clusters},
    }
    if params.data.source == "synthetic":  # ground-truth regions exist for synthetic faces only
        truth = own.numpy()
        result["purity"] = round(float(purity(labels, truth)), 4)
        result["purity_one_cluster"] = round(float(purity(np.ones_like(labels), truth)), 4)  # the baseline
        within, across = region_cosines(units, truth)
        result["cos_within_region"], result["cos_across_region"] = round(within, 4), round(across, 4)
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_json(metrics, result)
    return result


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["components", "out", "metrics"])
    print(run(params, Path(args.components), Path(args.out), Path(args.metrics)))


if __name__ == "__main__":
    main()
