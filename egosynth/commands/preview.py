"""`egosynth preview`: write a video preview of a clip: left | right | depth | instances."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from egosynth.store import Clip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview",
        help="Write a video preview of clips from a store",
        description="Write an mp4 or gif of one clip: left eye | right eye | left depth "
        "(colour-mapped, near = warm) | left instance masks (one colour per object).",
    )
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--clip", default=None, help="clip id (default: the first complete clip)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .mp4 or .gif (default: <store>_<clip>.mp4 beside the store)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from egosynth.checks import output_file
    from egosynth.errors import EgosynthError
    from egosynth.store import ClipStore

    store = ClipStore(args.store)
    ids = store.clip_ids()
    if not ids:
        raise EgosynthError(f"{args.store}: no complete clips to preview")
    clip = store.clip(args.clip if args.clip is not None else ids[0])
    out = args.out
    if out is None:
        base = str(args.store).rstrip("/").removesuffix(".zarr")
        out = Path(f"{base}_{clip.clip_id}.mp4" if "://" not in base else f"{clip.clip_id}.mp4")
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise EgosynthError(f"--out = {str(out)!r}: must end in .mp4 or .gif")
    output_file(out, inputs=[args.store])
    n = write_preview(clip, out)
    print(f"wrote {out} ({n} frames of {clip.clip_id})")
    return 0


def instance_colours(ids: Any) -> Any:
    """(..., 3) uint8 colour per instance id: 0 black, others well-separated hues (golden ratio)."""
    import colorsys

    import numpy as np

    ids = np.asarray(ids)
    table = np.zeros((int(ids.max(initial=0)) + 1, 3), np.uint8)
    for i in range(1, len(table)):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
        table[i] = (int(r * 255), int(g * 255), int(b * 255))
    return table[ids]


def depth_colours(depth: Any, far: float) -> Any:
    """(..., 3) uint8 turbo colour map of z-depth in [0, far]; 0 (nothing hit) stays black."""
    import matplotlib
    import numpy as np

    d = np.asarray(depth, np.float32)
    x = np.clip(1.0 - d / max(far, 1e-6), 0.0, 1.0)  # near = warm
    rgb = (matplotlib.colormaps["turbo"](x)[..., :3] * 255).astype(np.uint8)
    rgb[~(d > 0)] = 0
    return rgb


def preview_frames(clip: Clip, start: int, stop: int, far: float) -> Any:
    """(n, H, 4W, 3) uint8 panels: left | right | left depth | left instances."""
    import numpy as np

    a = clip.read(start, stop, ["rgb", "depth", "instance"])
    rgb = a["rgb"]
    return np.concatenate(
        [
            rgb[:, 0],
            rgb[:, 1],
            depth_colours(a["depth"][:, 0], far),
            instance_colours(a["instance"][:, 0]),
        ],
        axis=2,
    )


def write_preview(clip: Clip, out: Path) -> int:
    """Write the clip's panels to `out` (.mp4 via pyav, or .gif); returns the frame count."""
    import imageio.v3 as iio
    import numpy as np

    from egosynth.errors import EgosynthError

    depth = clip.read(names=["depth"])["depth"].astype(np.float32)
    finite = depth[np.isfinite(depth) & (depth > 0)]
    far = float(np.percentile(finite, 99)) if finite.size else 1.0
    step = int(clip.attrs.get("chunk_frames", 8))
    frames = np.concatenate(
        [
            preview_frames(clip, s, min(s + step, clip.n_frames), far)
            for s in range(0, clip.n_frames, step)
        ]
    )
    # H.264 in yuv420p needs even sides: pad one black row/column where needed.
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".gif":
            iio.imwrite(out, frames, duration=1000.0 / clip.fps, loop=0)
        else:
            iio.imwrite(out, frames, fps=clip.fps, plugin="pyav", codec="libx264")
    except OSError as exc:
        raise EgosynthError(f"{out}: cannot write the preview ({exc.strerror or exc})") from None
    return len(frames)
