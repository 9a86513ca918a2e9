"""`facesem`: run the pipeline, one stage, look into artifacts.

facesem run [--target STAGE ...] [--force]   the Prefect flow over dvc.yaml's DAG
facesem serve --cron "0 3 * * *" [--dry-run] the same flow on a schedule (PREFECT_API_URL's server)
facesem stage NAME [--force]                 one stage through DVC (dvc repro --single-item)
facesem inspect [ARTIFACT[/ARRAY]] [--rev REV] [--export OUT] | --diff REV1 REV2
                                             artifacts: shape, dtype, chunks, size, provenance, statistics
facesem dag [--sync-deps]                    the stages and their upstream, from dvc.yaml (or fix its code deps)
facesem params                               validate params.yaml and print it resolved
facesem edit --direction yaw --seeds 0,1,2 --scales -3:3:7 --out grid.png
                                             faces moved along a learned direction (Eq. 4)
facesem edit --direction yaw --image me.jpg | --latent w.zarr --out grid.jpg
                                             a photo projected (or stored latents), then edited
facesem project PHOTO... --out w.zarr [--json]
                                             StyleGAN2's projector: photos -> w (or w+)
facesem align IN... OUT [--json]             FFHQ-align photos (dlib landmarks)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pipeline  # noqa: F401  (sets DVC/Prefect environment defaults first)
from support.project import project_root

# ---- argument types: one per kind of value, shared by every command (argparse exits 2 naming the argument)


def _arg_type(parse, name: str):
    """An argparse type from a parser that raises ValueError with the reason."""

    def convert(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    convert.__name__ = name
    return convert


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or value == float("inf"):
            raise ValueError(f"must be a positive finite {kind.__name__}, got {text!r}")
        return value

    return _arg_type(parse, f"positive {kind.__name__}")


def _scales(text: str):
    from support.edit import parse_scales  # noqa: PLC0415

    return parse_scales(text)


def _seeds(text: str):
    from support.edit import parse_seeds  # noqa: PLC0415

    return parse_seeds(text)


POSITIVE_INT, POSITIVE_FLOAT = _positive(int), _positive(float)
MAX_SIDE = 4096  # px: FFHQ is 1024; 4x supersampled alignment of a larger side needs tens of GB


def _side(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SIDE:
        raise ValueError(f"must be an integer side in px from 1 to {MAX_SIDE}, got {text!r}")
    return value


SIDE = _arg_type(_side, "side")
SCALES, SEEDS = _arg_type(_scales, "scales"), _arg_type(_seeds, "seeds")


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.flow import run_pipeline
    from pipeline.lifetime import reap_children_on_exit, run_lock

    with run_lock(project_root()):  # one run per checkout; the second is refused naming the first
        reap_children_on_exit()  # the Prefect server, dvc and the stages end with this process, even on SIGKILL
        states = run_pipeline(targets=args.target or None, force=args.force)
    width = max(map(len, states), default=0)
    for name, state in states.items():
        print(f"{name:<{width}}  {state}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from pipeline.flow import build_deployment, describe_deployment

    os.chdir(project_root())  # served runs start here; the entrypoint is relative to it
    deployment = build_deployment(
        name=args.name,
        cron=args.cron,
        interval=args.interval,
        timezone=args.timezone,
        targets=args.target,
        force=args.force,
    )
    print(describe_deployment(deployment), flush=True)
    if args.dry_run:
        print("dry run: nothing was sent to a server")
        return 0
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # the temporary server has no scheduler: nothing would run
        raise RuntimeError(
            "serving needs a Prefect server: start one (`prefect server start`) and "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api, or point it at a "
            "shared server (docs/operations.md)"
        )
    serve(deployment, limit=args.limit)  # until Ctrl-C, which pauses the schedule
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from pipeline.dvc_process import dvc_command, stage_environment
    from pipeline.lifetime import reap_children_on_exit, run_lock
    from support.params import load_params

    load_params(project_root() / "params.yaml")  # before DVC removes the stage's outputs to re-run it
    cmd = dvc_command("repro", "--single-item", args.name, *(["--force"] if args.force else []))
    with run_lock(project_root()):
        reap_children_on_exit()
        return subprocess.call(cmd, cwd=project_root(), env=stage_environment())


def cmd_inspect(args: argparse.Namespace) -> int:
    from tools import inspect_artifacts as insp

    root = project_root()
    if args.diff:
        if args.rev or args.export:
            raise ValueError("--diff REV1 REV2 takes neither --rev nor --export")
        print(insp.diff_text(insp.diff(root, *args.diff, address=args.artifact)))
        return 0
    source = insp.open_source(root, args.rev)
    if args.export:
        if not args.artifact:
            raise ValueError("--export needs ARTIFACT/ARRAY, e.g. `facesem inspect faces/images --export faces.png`")
        print(insp.export(source, args.artifact, args.export, rows=args.rows, zoom=args.zoom))
    elif args.artifact:
        print(insp.summary_text(source, args.artifact))
    else:
        print(insp.listing_text(source))
    return 0


def cmd_dag(args: argparse.Namespace) -> int:
    from pipeline.dag import load_dag

    if args.sync_deps:
        from pipeline.code_deps import sync_deps

        changes = sync_deps(project_root())
        for name, (added, removed) in changes.items():
            print(f"{name}: + {', '.join(added) or '-'}; - {', '.join(removed) or '-'}")
        print(f"dvc.yaml: {len(changes)} stage(s) updated" if changes else "dvc.yaml: code deps already exact")
        return 0

    for name, upstream in load_dag(project_root()).items():
        print(f"{name} <- {', '.join(upstream) or '(source)'}")
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from support.params import load_params

    params = load_params(project_root() / args.file)
    print(json.dumps(params.model_dump(), indent=2))
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from store.artifacts import read_json
    from store.images import GRID_FORMATS, save_grid
    from support.device import select_device
    from support.edit import edit_grid, load_direction
    from support.generators import load_generator

    root = project_root()
    seeds, scales = args.seeds, args.scales
    if Path(args.out).suffix.lower() not in GRID_FORMATS:  # before any work
        raise ValueError(f"--out {args.out}: the image format comes from the suffix: one of {', '.join(GRID_FORMATS)}")
    if args.image:
        from tools.project import overwrites_input

        if overwrites_input(Path(args.out), args.image):
            raise ValueError(f"--out {args.out} would replace an input photo; choose another --out")
    stores = (
        [root / args.directions]
        if args.directions
        else [root / "data" / n for n in ("directions.zarr", "components.zarr") if (root / "data" / n).exists()]
    )
    if not stores:
        raise FileNotFoundError("no direction stores under data/ yet: run the pipeline (facesem run)")
    direction, sigma_w = load_direction(stores, args.direction)
    gen = load_generator(root / args.generator, select_device(args.device))
    if args.image or args.latent:
        grid, ncols, rows = _edit_photos(args, gen, direction, sigma_w, scales)
        out = save_grid(grid, args.out, ncols=ncols, scale=args.zoom)
        what = f"{len(rows)} {'photos' if args.image else 'latents'} ({', '.join(rows)})"
        columns = ("original, reconstruction, " if args.image else "generation, ") + f"s = {scales}"
    else:
        out = save_grid(edit_grid(gen, direction, sigma_w, seeds, scales), args.out, ncols=len(scales), scale=args.zoom)
        what, columns = f"{len(seeds)} seeds", f"s = {scales}"
    evaluated = root / "data" / "metrics" / "evaluate.json"
    tangled = read_json(evaluated).get("entangled", {})
    if args.direction in tangled:
        e = tangled[args.direction]
        print(
            f"warning: {args.direction} is entangled: it moves {e['moves_more']} more than {args.direction} "
            f"({e['other']:.2f} vs {e['own']:.2f} data stds per unit s, {evaluated})",
            file=sys.stderr,
        )
    print(f"{out}: {what} (rows) x {columns} (columns), sigma_w = {sigma_w:.4g}")
    return 0


def _edit_photos(args, gen, direction, sigma_w, scales):
    """--image (project first, then edit; the original leads each row) or --latent (edit stored latents)."""
    import numpy as np

    from support.edit import edit_latents
    from support.params import load_params
    from tools.project import check_latents, read_and_project, read_latents

    if args.latent:
        ws, names, noise = read_latents(args.latent)
        check_latents(ws, gen, args.latent)
        return edit_latents(gen, ws, direction, sigma_w, scales, noise), 1 + len(scales), names
    params = load_params(project_root() / "params.yaml").project
    if args.steps:
        params = params.model_copy(update={"steps": args.steps})
    names, images, projected, skipped = read_and_project(gen, args.image, params, align=not args.no_align)
    for file, reason in skipped:
        print(f"skipped {file}: {reason}", file=sys.stderr)
    edits = edit_latents(gen, projected.ws, direction, sigma_w, scales, projected.noise)
    rows = np.concatenate([images[:, None], edits.reshape(len(names), 1 + len(scales), *images.shape[1:])], 1)
    return rows.reshape(-1, *images.shape[1:]), 2 + len(scales), names


def cmd_project(args: argparse.Namespace) -> int:
    from support.device import select_device
    from support.generators import load_generator
    from support.params import load_params
    from tools.project import project_photos

    root = project_root()
    params = load_params(root / "params.yaml").project
    update = {k: v for k, v in (("steps", args.steps), ("space", args.space), ("distance", args.distance)) if v}
    params = params.model_copy(update=update)
    gen = load_generator(root / args.generator, select_device(args.device))
    summary = project_photos(
        gen, args.generator, args.photos, Path(args.out), params, align=not args.no_align, save_noise=args.save_noise
    )
    print(
        f"{summary['out']}: {summary['n']} photos projected into {params.space} ({summary['skipped']} skipped), "
        f"PSNR {summary['psnr_db']:.2f} dB, {params.distance} distance {summary['perceptual_distance']:.4g}, "
        f"{summary['steps']} steps, {summary['seconds']:.0f} s; pairs in {summary['png']}"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_import_gan(args: argparse.Namespace) -> int:
    from support.interchange import import_generator

    summary = import_generator(args.file, args.out)
    print(
        f"{summary['weights']}: {summary['format']} StyleGAN2, {summary['resolution']} px, z {summary['z_dim']}, "
        f"w {summary['w_dim']} x {summary['num_ws']} layers, {summary['mapping_layers']} mapping layers"
        + ("" if summary["has_D"] else ", no discriminator (use it as is: gan.kimg 0)")
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_export_gan(args: argparse.Namespace) -> int:
    from support.interchange import export_generator

    root = project_root()
    summary = export_generator(
        root / args.generator,
        args.out,
        None if args.no_directions else root / args.directions,
        None if args.no_directions else root / args.components,
    )
    print(
        f"{args.out}: {', '.join(summary['files'])} ({summary['resolution']} px, w {summary['w_dim']}; "
        f"{summary['directions']} directions, {summary['components']} components)"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from tools.align import align_photos

    done = align_photos(args.inputs, Path(args.out), args.size, args.all_faces)
    print(
        f"{args.out}: {done['aligned']} aligned faces from {done['photos']} photos, {done['skipped']} skipped "
        f"(reasons in {done['report']})"
    )
    if args.json:
        print(json.dumps(done))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="facesem", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline as a Prefect flow (DVC decides what is up to date)")
    p.add_argument("--target", action="append", help="only this stage and its upstream (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run stages even if up to date")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("serve", help="serve the flow on a schedule (the Prefect server of PREFECT_API_URL)")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--cron", help='a cron expression, e.g. "0 3 * * *" (every day at 03:00)')
    when.add_argument("--interval", type=POSITIVE_FLOAT, metavar="SECONDS", help="or a run every SECONDS")
    p.add_argument("--timezone", default="UTC", help="IANA time zone of the schedule (default: UTC)")
    p.add_argument("--name", default="scheduled", help="deployment name: facesem/NAME (default: scheduled)")
    p.add_argument("--target", action="append", help="only this stage and its upstream (repeatable)")
    p.add_argument("--force", action="store_true", help="re-run stages even if up to date")
    p.add_argument(
        "--limit",
        type=POSITIVE_INT,
        default=1,
        help="flow runs at once (default 1: a run that comes due while one runs waits)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="build the deployment and print it (name, entrypoint, schedule, parameters) without contacting a server",
    )
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("stage", help="run one stage through DVC")
    p.add_argument("name")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_stage)
    p = sub.add_parser(
        "inspect",
        help="list artifacts (shape, dtype, chunks, size, provenance); "
        "summarize or export one at any git rev / dvc exp; diff two revs",
    )
    p.add_argument(
        "artifact",
        nargs="?",
        help="ARTIFACT[/ARRAY]: faces, faces/images, data/faces.zarr/gt/depth (default: list all under data/)",
    )
    p.add_argument(
        "--rev", help="a git revision or `dvc exp` name, read through DVC without a checkout (default: the work tree)"
    )
    p.add_argument(
        "--export",
        metavar="OUT",
        help="OUT.png: a grid of uint8 [N, 3, H, W] images; OUT.csv: the rows of a 1-D or 2-D array",
    )
    p.add_argument("--rows", type=POSITIVE_INT, help="rows exported (default: 16 images, every row of a CSV)")
    p.add_argument("--zoom", type=POSITIVE_INT, default=1, help="nearest-neighbour upscaling of an exported PNG")
    p.add_argument(
        "--diff",
        nargs=2,
        metavar=("REV1", "REV2"),
        help="compare params, metrics and array statistics of two revisions ('workspace': the work tree)",
    )
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("dag", help="print the stages and their upstream stages (from dvc.yaml)")
    p.add_argument(
        "--sync-deps",
        action="store_true",
        help="rewrite each stage's Python deps in dvc.yaml to its project import closure",
    )
    p.set_defaults(func=cmd_dag)
    p = sub.add_parser("params", help="validate params.yaml and print the resolved values")
    p.add_argument("--file", default="params.yaml")
    p.set_defaults(func=cmd_params)
    p = sub.add_parser("edit", help="a grid of generations moved along a named direction (Eq. 4)")
    p.add_argument("--direction", required=True, help="e.g. yaw, pitch, light_x (see directions.zarr)")
    p.add_argument("--seeds", type=SEEDS, default="0,1,2", help="comma list: one row per seed")
    p.add_argument("--scales", type=SCALES, default="-3:3:7", help="s of Eq. 4: start:stop:count or a comma list")
    p.add_argument("--out", default="edit.png")
    p.add_argument("--directions", help="a directions store (default: data/directions.zarr, then data/components.zarr)")
    p.add_argument("--generator", default="data/gan/generator.safetensors")
    p.add_argument("--device", default="auto")
    p.add_argument("--zoom", type=POSITIVE_INT, default=3, help="nearest-neighbour upscaling of the PNG")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--image", nargs="+", type=Path, metavar="PHOTO", help="project these photos, then edit them")
    source.add_argument("--latent", metavar="FILE", help="edit the latents of `facesem project` (.zarr / .npy)")
    p.add_argument("--steps", type=POSITIVE_INT, help="--image: projector steps (default: project.steps)")
    p.add_argument("--no-align", action="store_true", help="--image: centre square instead of FFHQ alignment")
    p.set_defaults(func=cmd_edit)
    p = sub.add_parser(
        "import-gan",
        help="convert a StyleGAN2 checkpoint (NVlabs .pkl, rosinality .pt) into DIR/generator.safetensors; "
        "nothing in the file is executed",
    )
    p.add_argument("file", help="the checkpoint")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for generator.safetensors + .json, samples.png")
    p.add_argument("--json", action="store_true", help="end with one JSON line (format, resolution, w_dim, ...)")
    p.set_defaults(func=cmd_import_gan)
    p = sub.add_parser(
        "export-gan",
        help="write the generator (and D) under NVlabs' key names + config.json, and the directions and "
        "components as .npy unit vectors [k, w_dim] + .json (names, sigma_w)",
    )
    p.add_argument("--generator", default="data/gan/generator.safetensors")
    p.add_argument("--directions", default="data/directions.zarr")
    p.add_argument("--components", default="data/components.zarr")
    p.add_argument("--no-directions", action="store_true", help="the networks only")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--json", action="store_true", help="end with one JSON line (files, resolution, w_dim, counts)")
    p.set_defaults(func=cmd_export_gan)
    p = sub.add_parser(
        "align", help="FFHQ-align photos (dlib 68 landmarks): IN... -> OUT/<name>.png + align_report.csv"
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="photos or folders of photos")
    p.add_argument("out", metavar="OUT", help="output folder")
    p.add_argument("--size", type=SIDE, default=256, help=f"output side in px, at most {MAX_SIDE} (default 256)")
    p.add_argument("--all-faces", action="store_true", help="every face of a photo (default: the largest)")
    p.add_argument("--json", action="store_true", help="end with one JSON line (photos, aligned, skipped, report)")
    p.set_defaults(func=cmd_align)
    p = sub.add_parser(
        "project",
        help="StyleGAN2's projector: FFHQ-aligned photos -> w (or w+) of the generator; params.yaml `project`",
    )
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photos or folders of photos")
    p.add_argument(
        "--out", required=True, help="FILE.zarr or FILE.npy (+ FILE.json); FILE.png: target | reconstruction"
    )
    p.add_argument("--generator", default="data/gan/generator.safetensors")
    p.add_argument("--steps", type=POSITIVE_INT, help="optimisation steps per photo (default: project.steps)")
    p.add_argument("--space", choices=("w", "w+"), help="W (the paper's) or W+ (default: project.space)")
    p.add_argument("--distance", choices=("vgg16", "inception"), help="perceptual distance (default: project.distance)")
    p.add_argument("--save-noise", action="store_true", help="store the optimised noise maps too (.zarr only)")
    p.add_argument("--no-align", action="store_true", help="centre square instead of FFHQ alignment (generations)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="end with one JSON line (psnr_db, perceptual_distance, ...)")
    p.set_defaults(func=cmd_project)
    return parser


def _join_negative_values(argv: list[str], options=("--scales",)) -> list[str]:
    """'--scales -3:3:7' -> '--scales=-3:3:7' (argparse would take '-3:3:7' for an option)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help (0) or a bad argument (2, named by argparse on stderr)
        return int(done.code or 0)
    try:
        return args.func(args)
    except KeyError as err:  # str() of a KeyError quotes its message
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)  # FileExistsError & co. name the path
        return 2


if __name__ == "__main__":
    sys.exit(main())
