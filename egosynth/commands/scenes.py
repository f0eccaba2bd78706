"""`egosynth scenes`: generate, capture and preview scenes (fit/import/check: scenes_nerf)."""

from __future__ import annotations

import argparse
from pathlib import Path

from egosynth.checks import count, integer, real


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scenes",
        help="Generate, capture, preview (and fit, import, check) scenes",
        description="Procedural ground-truth scenes and their multi-view captures. "
        "See docs/scenes.md.",
    )
    ssub = p.add_subparsers(dest="scenes_command", metavar="<subcommand>", required=True)

    g = ssub.add_parser(
        "generate",
        help="Write the scene configs of a procedural generator config",
        description="Write scene configs <out>/<name>_<i>.yaml for i < count of a generator "
        "config (scene_configs/procedural/*.yaml). Same config, same bytes.",
    )
    g.add_argument("config", type=Path, help="generator config YAML")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: ../scenes beside a config in a 'procedural' folder, "
        "else the config's folder)",
    )
    g.add_argument(
        "--count", type=count(maximum=10_000), default=None, help="override the config's count"
    )
    g.set_defaults(func=run_generate)

    c = ssub.add_parser(
        "capture",
        help="Render a multi-view capture in nerfstudio's data format",
        description="Render views spread over the walkable floor at eye heights and write "
        "transforms.json (OpenGL poses), images/, depth/ (mm), instance/, part/, scene.yaml.",
    )
    c.add_argument("scene", type=Path, help="scene config YAML (backend mesh)")
    c.add_argument("--out", type=Path, required=True, help="capture folder")
    c.add_argument(
        "--views", type=count(maximum=100_000), default=200, help="number of views (default 200)"
    )
    c.add_argument(
        "--size", type=count(maximum=8192), nargs=2, default=(256, 192), metavar=("W", "H")
    )
    c.add_argument(
        "--hfov",
        type=real(positive=True, below=180.0),
        default=90.0,
        help="horizontal field of view, degrees",
    )
    c.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    c.add_argument("--no-depth", action="store_true", help="do not write depth images")
    c.add_argument("--no-masks", action="store_true", help="do not write instance/part images")
    c.set_defaults(func=run_capture)

    v = ssub.add_parser(
        "preview",
        help="Write a contact sheet: views with depth, instance and part masks",
        description="Render a few capture views and write one PNG: a row per view with "
        "rgb | depth | instance ids | part ids.",
    )
    v.add_argument("scene", type=Path, help="scene config YAML")
    v.add_argument("--out", type=Path, default=None, help="PNG (default <scene>_preview.png)")
    v.add_argument("--views", type=count(maximum=1000), default=6)
    v.add_argument(
        "--size", type=count(maximum=8192), nargs=2, default=(192, 144), metavar=("W", "H")
    )
    v.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    v.set_defaults(func=run_preview)

    from egosynth.commands.scenes_nerf import register_nerf

    register_nerf(ssub)

    from egosynth.commands.scenes_onboard import register_onboard

    register_onboard(ssub)


def _default_out(config: Path) -> Path:
    folder = config.resolve().parent
    return folder.parent / "scenes" if folder.name == "procedural" else folder


def run_generate(args: argparse.Namespace) -> int:
    import os

    from egosynth.checks import output_dir
    from egosynth.errors import EgosynthError
    from egosynth.scenes.procedural import load_generator, write_scenes

    gen = load_generator(args.config)
    if args.count is not None:
        gen = gen.model_copy(update={"count": args.count})
    out = output_dir(args.out or _default_out(args.config), inputs=[args.config])
    for i in range(gen.count):  # the files it writes must not include the config itself
        target = out / f"{gen.name}_{i}.yaml"
        if target.exists() and os.path.samefile(target, args.config):
            raise EgosynthError(f"{target}: would overwrite the input generator config")
    paths = write_scenes(gen, out)
    print(f"wrote {len(paths)} scene configs to {out} ({paths[0].name} .. {paths[-1].name})")
    return 0


def _load_mesh_scene(path: Path):
    from egosynth.config import load_scene
    from egosynth.errors import EgosynthError

    scene = load_scene(path)
    if scene.backend != "mesh":
        raise EgosynthError(f"{path}: backend = {scene.backend!r}: captures need a mesh scene")
    return scene


def run_capture(args: argparse.Namespace) -> int:
    from egosynth.checks import check_memory, output_dir
    from egosynth.scenes.capture import CaptureSettings, write_capture

    output_dir(args.out, inputs=[args.scene])
    scene = _load_mesh_scene(args.scene)
    check_memory(4 * 8 * args.size[0] * args.size[1], f"a {args.size[0]}x{args.size[1]} view")
    settings = CaptureSettings(
        n_views=args.views,
        width=args.size[0],
        height=args.size[1],
        hfov_deg=args.hfov,
        seed=args.seed,
        depth=not args.no_depth,
        masks=not args.no_masks,
    )
    path = write_capture(scene, args.out, settings)
    print(f"wrote {settings.n_views} views of {scene.name} to {path.parent} ({path.name})")
    return 0


def run_preview(args: argparse.Namespace) -> int:
    from egosynth.checks import check_memory, output_file
    from egosynth.config import load_scene
    from egosynth.scenes.preview import write_preview

    out = output_file(args.out or Path(f"{args.scene.stem}_preview.png"), inputs=[args.scene])
    scene = load_scene(args.scene)  # any backend: the renderer interface is the same
    check_memory(
        args.views * 4 * 8 * args.size[0] * args.size[1],
        f"{args.views} views of {args.size[0]}x{args.size[1]}",
    )
    path, labels = write_preview(scene, out, args.views, args.size[0], args.size[1], args.seed)
    cats = ", ".join(f"{lab.instance_id}:{lab.category}" for lab in labels)
    print(f"wrote {path} (rows: rgb | depth | instance | part; objects {cats})")
    return 0
