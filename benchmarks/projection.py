"""The projector (`facesem project`) on generations whose w is known, and on real portraits.

    .venv/bin/python benchmarks/projection.py [--generator data/gan/generator.safetensors]
        [--oracle data/oracle] [--n 12] [--steps 1000] [--distance vgg16 inception] [--json]

For each perceptual distance: PSNR (dB, at the generator's resolution) of the reconstructions of
n generations, the distance of the found w from the true one relative to the spread of w
(sqrt E||w - mean w||^2; two independent w are sqrt(2) = 1.41 apart), Pearson r of the
oracle-measured yaw of reconstruction vs original (the learned oracle of `--oracle`, when
there), and seconds per image; then the distances reached on the package portraits (scikit-
image's astronaut, matplotlib's grace_hopper), FFHQ-aligned. With --json ends with one JSON line
{"generator", "n", "steps", "<distance>": {"psnr_db", "psnr_db_min", "w_distance_rel", "yaw_r",
"seconds_per_image", "portraits": {name: {"psnr_db", "perceptual_distance"}}}}.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store.images import signed_to_uint8  # noqa: E402
from support.generators import load_generator  # noqa: E402
from support.oracle import load_oracle, predict  # noqa: E402
from support.params import load_params  # noqa: E402
from support.projection import project_images, read_targets, to_generator_input, w_statistics  # noqa: E402


def portraits(folder: Path) -> list[Path]:
    import matplotlib.cbook  # noqa: PLC0415
    import skimage.data  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    Image.fromarray(skimage.data.astronaut()).save(folder / "astronaut.png")
    shutil.copy(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), folder / "grace_hopper.jpg")
    return [folder / "astronaut.png", folder / "grace_hopper.jpg"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="data/gan/generator.safetensors")
    parser.add_argument("--oracle", default="data/oracle", help="a train_oracle folder (yaw r skipped when absent)")
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--distance", nargs="+", default=["vgg16", "inception"])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    gen = load_generator(ROOT / args.generator)
    base = load_params(ROOT / "params.yaml").project
    z = torch.randn(args.n, gen.z_dim, generator=torch.Generator().manual_seed(args.seed))
    w_true = gen.mapping(z)
    truth = gen.synthesis(w_true)
    measured_yaw = None
    if (ROOT / args.oracle / "oracle.safetensors").is_file():
        model, factor_names = load_oracle(ROOT / args.oracle)

        def measured_yaw(images: torch.Tensor) -> torch.Tensor:  # at the oracle's side, as evaluate does
            at_side = to_generator_input(signed_to_uint8(images), model.resolution)
            return predict(model, torch.from_numpy(signed_to_uint8(at_side)), "cpu")[:, factor_names.index("yaw")]

    _, w_spread = w_statistics(gen, base.w_avg_samples, base.seed)
    tmp = Path(tempfile.mkdtemp())
    names, photos, skipped = read_targets(portraits(tmp), gen.resolution, align=True)
    result = {"generator": args.generator, "n": args.n, "steps": args.steps}
    print(f"{args.generator} ({gen.resolution} px), {args.n} generations, {args.steps} steps")
    print(f"{'distance':<10} {'PSNR dB':>8} {'min':>6} {'|w-w*|/spread':>14} {'yaw r':>6} {'s/img':>7}")
    for kind in args.distance:
        params = base.model_copy(update={"steps": args.steps, "distance": kind})
        found = project_images(gen, truth, params)
        row = {
            "psnr_db": round(float(found.psnr_db.mean()), 2),
            "psnr_db_min": round(float(found.psnr_db.min()), 2),
            "w_distance_rel": round(float((found.ws[:, 0] - w_true).norm(dim=1).mean() / w_spread), 3),
            "yaw_r": None,
            "seconds_per_image": round(found.seconds / args.n, 1),
        }
        if measured_yaw is not None:
            before, after = measured_yaw(truth), measured_yaw(found.images)
            row["yaw_r"] = round(float(np.corrcoef(before, after)[0, 1]), 3)
        real = project_images(gen, to_generator_input(photos, gen.resolution), params)
        row["portraits"] = {
            n: {"psnr_db": round(float(p), 2), "perceptual_distance": round(float(d), 4)}
            for n, p, d in zip(names, real.psnr_db, real.distance)
        }
        result[kind] = row
        yaw_r = "-" if row["yaw_r"] is None else f"{row['yaw_r']:.3f}"
        print(
            f"{kind:<10} {row['psnr_db']:>8.2f} {row['psnr_db_min']:>6.2f} {row['w_distance_rel']:>14.3f} "
            f"{yaw_r:>6} {row['seconds_per_image']:>7.1f}"
        )
        for n, v in row["portraits"].items():
            print(f"  portrait {n}: PSNR {v['psnr_db']:.2f} dB, {kind} distance {v['perceptual_distance']:.4f}")
    shutil.rmtree(tmp)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
