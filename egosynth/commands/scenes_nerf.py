"""`egosynth scenes fit | import | check`: NeRF scene bundles (docs/bundles.md).

Registered into the `scenes` subcommand group by egosynth.commands.scenes via
`register_nerf(subparsers)`. Keep this module light: nerfstudio is imported only inside
the functions that run (through egosynth.nerf.nerfstudio and egosynth.render.nerf).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from egosynth.checks import count


def register_nerf(sub: argparse._SubParsersAction) -> None:
    """Add the NeRF-bundle subcommands to the `scenes` group."""
    f = sub.add_parser(
        "fit",
        help="Fit a NeRF (nerfstudio nerfacto) on a scene's capture and write its bundle",
        description="Capture the scene (unless --capture is given), fit nerfacto with "
        "nerfstudio's trainer offline, and write a scene bundle. Re-running resumes from the "
        "last checkpoint. Presets: cpu-small (2-core CPU, bundles < 10 MB), gpu (nerfacto "
        "defaults).",
    )
    f.add_argument("scene", type=Path, help="scene config YAML (backend mesh), or a capture folder")
    f.add_argument("--preset", choices=["cpu-small", "gpu"], default="cpu-small")
    f.add_argument("--capture", type=Path, default=None, help="capture folder to fit on")
    f.add_argument("--out", type=Path, default=None,
                   help="bundle folder (default scene_bundles/<name>)")  # fmt: skip
    f.add_argument("--runs", type=Path, default=None, help="nerfstudio output dir for the run")
    f.add_argument("--iterations", type=count(maximum=10_000_000), default=None,
                   help="override the preset's total")  # fmt: skip
    f.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    f.set_defaults(func=run_fit)

    i = sub.add_parser(
        "import",
        help="Import a nerfstudio output folder as a scene bundle",
        description="Turn a nerfstudio run (config.yml, dataparser_transforms.json, "
        "nerfstudio_models/) into a bundle. Its config.yml is read once, here. Without "
        "--annotations the bundle renders rgb and depth but no masks.",
    )
    i.add_argument("folder", type=Path, help="nerfstudio output folder (containing one run)")
    i.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    i.add_argument("--annotations", type=Path, default=None,
                   help="scene config with objects, floor and world_from_scene")  # fmt: skip
    i.add_argument("--data", type=Path, default=None,
                   help="the run's data folder (transforms.json), when config.yml's path is "
                   "not found: its capture cameras are recorded for `scenes onboard`")  # fmt: skip
    i.set_defaults(func=run_import)

    b = sub.add_parser(
        "bake",
        help="Bake a NeRF bundle's density grid and colour grid (guided/baked modes)",
        description="Derive, from the bundle's own field, the density grid that guided and "
        "baked rendering march through, and the sparse colour grid baked rendering looks "
        "colour up in; written into the bundle (bake.npz, bake.json). Deterministic; a bake "
        "whose weights changed is refused until rebuilt. Works on imported nerfstudio runs.",
    )
    b.add_argument("target", type=Path, help="bundle folder or scene config (backend nerf)")
    b.add_argument("--resolution", type=count(16, 512), default=None,
                   help="density grid points per axis (16..512, default 256)")  # fmt: skip
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=run_bake)

    c = sub.add_parser(
        "check",
        help="Check a NeRF bundle against its mesh ground truth on held-out egocentric views",
        description="PSNR, SSIM, median depth error and instance IoU on held-out egocentric "
        "stereo views, and a side-by-side PNG.",
    )
    c.add_argument("target", type=Path, help="bundle folder or scene config (backend nerf)")
    c.add_argument("--frames", type=count(maximum=10_000), default=4,
                   help="walker frames (x2 eyes)")  # fmt: skip
    c.add_argument("--size", type=count(maximum=8192), nargs=2, default=(128, 96),
                   metavar=("W", "H"))  # fmt: skip
    c.add_argument("--picture", type=Path, default=None, help="side-by-side PNG path")
    c.add_argument("--modes", default=None,
                   help="comma-separated render modes to compare (default: full and, when the "
                   "bundle is baked, guided and baked)")  # fmt: skip
    c.add_argument("--device", default=None)
    c.set_defaults(func=run_check)

    f = sub.add_parser(
        "fidelity",
        help="A rendered store's NeRF frames against the mesh ground truth at the same poses",
        description="Re-render every N-th stored frame (both eyes) of the NeRF scenes of a "
        "store with their bundles' procedural mesh ground truth and report PSNR, SSIM, median "
        "depth error and instance IoU per scene: the fidelity of the data a trainer reads, on "
        "the store's own trajectories. Writes a JSON report and a side-by-side PNG.",
    )
    f.add_argument("store", type=Path, help="clip store rendered from the scene set")
    f.add_argument("scene_set", type=Path, help="the scene set YAML the store was rendered from")
    f.add_argument("--every", type=count(maximum=100_000), default=8,
                   help="compare every N-th frame (default 8)")  # fmt: skip
    f.add_argument("--out", type=Path, default=None, help="JSON report path")
    f.add_argument("--picture", type=Path, default=None, help="side-by-side PNG path")
    f.set_defaults(func=run_fidelity)


def run_fit(args: argparse.Namespace) -> int:
    from egosynth.config import load_scene
    from egosynth.errors import EgosynthError
    from egosynth.nerf.bundle import bundle_size_bytes
    from egosynth.nerf.fit import default_paths, ensure_capture, fit_capture, fit_scene
    from egosynth.nerf.importer import import_run

    if args.scene.is_dir():  # a bare capture: no annotations, bundle renders rgb + depth
        if args.out is None:
            raise EgosynthError(f"{args.scene}: fitting a capture folder needs --out <bundle>")
        runs = args.runs or Path("outputs") / "nerf_runs" / args.preset
        run = fit_capture(args.scene, runs, args.preset, args.iterations, args.device)
        out = import_run(run, args.out, provenance={"preset": args.preset})
    else:
        scene = load_scene(args.scene)
        if scene.backend != "mesh":
            raise EgosynthError(
                f"{args.scene}: backend = {scene.backend!r}: fit needs a mesh scene"
            )
        cap, runs, bundle = default_paths(scene, args.preset)
        capture = args.capture or ensure_capture(scene, cap, args.preset)
        out = fit_scene(scene, capture, args.out or bundle, args.runs or runs, args.preset,
                        args.iterations, args.device)  # fmt: skip
    print(f"wrote bundle {out} ({bundle_size_bytes(out) / 1e6:.1f} MB)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from egosynth.config import load_scene
    from egosynth.nerf.bundle import bundle_size_bytes
    from egosynth.nerf.importer import import_run

    ann = load_scene(args.annotations) if args.annotations else None
    out = import_run(args.folder, args.out, annotations=ann, data=args.data)
    masks = "with annotations" if ann else "no annotations: rgb and depth only"
    print(f"wrote bundle {out} ({bundle_size_bytes(out) / 1e6:.1f} MB, {masks})")
    return 0


def run_bake(args: argparse.Namespace) -> int:
    from egosynth.nerf.bake import BAKE_RESOLUTION, bake
    from egosynth.nerf.check import resolve_target

    _, root = resolve_target(args.target, need_annotations=False)
    baked = bake(root, args.resolution or BAKE_RESOLUTION, progress=not args.no_progress)
    size = sum((root / n).stat().st_size for n in ("bake.npz", "bake.json")) / 1e6
    print(
        f"baked {root}: grid {baked.info['resolution']}^3, "
        f"{baked.info['coloured_points']} coloured points, "
        f"{size:.1f} MB, {baked.info['seconds']:.0f} s"
    )
    return 0


def run_check(args: argparse.Namespace) -> int:
    from egosynth.checks import output_file
    from egosynth.errors import EgosynthError
    from egosynth.nerf.check import check_modes
    from egosynth.render.nerf import RENDER_MODES

    picture = output_file(
        args.picture or Path("outputs") / f"check_{args.target.stem}.png", "--picture"
    )
    modes = args.modes.split(",") if args.modes else None
    bad = [m for m in modes or [] if m not in RENDER_MODES]
    if bad:
        raise EgosynthError(f"--modes = {args.modes!r}: {bad[0]!r} is not one of {RENDER_MODES}")
    table = check_modes(
        args.target, args.frames, args.size[0], args.size[1], picture, args.device, modes
    )
    print(table)
    print(f"side-by-side: {picture}")
    return 0


def run_fidelity(args: argparse.Namespace) -> int:
    import json

    from egosynth.checks import output_file
    from egosynth.config import load_scene_set
    from egosynth.errors import EgosynthError
    from egosynth.nerf.check import store_fidelity

    sset = load_scene_set(args.scene_set)
    out = output_file(args.out, "--out") if args.out else None
    picture = output_file(args.picture, "--picture") if args.picture else None
    rows = store_fidelity(args.store, sset, args.every, picture)
    if not rows:
        raise EgosynthError(
            f"{args.store}: no clips of a nerf scene of {args.scene_set} with a procedural "
            "ground truth: nothing to compare"
        )
    print(f"{'scene':<14} {'clips':>5} {'views':>6} {'PSNR':>8} {'SSIM':>6} {'depth err':>10} "
          f"{'IoU':>6}")  # fmt: skip
    for r in rows:
        x = r.result
        print(f"{r.scene:<14} {r.clips:>5} {x.n_views:>6} {x.psnr_db:>5.2f} dB {x.ssim:>6.3f} "
              f"{100 * x.depth_median_rel_error:>8.1f} % {x.instance_iou:>6.3f}")  # fmt: skip
    if out is not None:
        report = {"store": str(args.store), "scene_set": str(args.scene_set),
                  "every": args.every,
                  "scenes": [{"scene": r.scene, "clips": r.clips, **r.result.as_dict()}
                             for r in rows]}  # fmt: skip
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"report: {out}")
    if picture is not None:
        print(f"side-by-side: {picture}")
    return 0
