"""Stage `preview`: a grid of the first faces of data/faces.zarr as a PNG, to look at."""

from __future__ import annotations

from pathlib import Path

from store.artifacts import open_store
from store.images import save_grid
from support.params import Params
from support.stage import stage_args


def run(params: Params, faces: Path, out: Path) -> Path:
    images = open_store(faces)["images"]
    n = min(params.preview.grid**2, images.shape[0])
    return save_grid(images[:n], out, ncols=params.preview.grid, scale=params.preview.scale)


def main() -> None:
    args, params = stage_args(__doc__.splitlines()[0], ["faces", "out"])
    print(f"wrote {run(params, Path(args.faces), Path(args.out))}")


if __name__ == "__main__":
    main()
