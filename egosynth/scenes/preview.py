"""Contact sheets of a scene: a few capture views with depth, instance and part masks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.scenes.capture import CaptureSettings, sample_views

if TYPE_CHECKING:
    from egosynth.config import SceneConfig
    from egosynth.labels import Label
    from egosynth.render.base import Frames


def id_colors(n: int) -> NDArray[np.uint8]:
    """Fixed distinct-ish colours for ids 0..n-1 (id 0 = black)."""
    rng = np.random.default_rng(12345)
    c = rng.integers(60, 256, size=(max(n, 1), 3)).astype(np.uint8)
    c[0] = 0
    return c


def depth_image(depth: NDArray[np.floating], max_m: float) -> NDArray[np.uint8]:
    """Depth as a turbo-coloured uint8 image (near = blue, far = red, none = black)."""
    from matplotlib import colormaps

    rgb = colormaps["turbo"](np.clip(depth / max_m, 0.0, 1.0))[..., :3]
    rgb[depth <= 0] = 0.0
    return np.round(rgb * 255).astype(np.uint8)


def contact_sheet(frames: Frames, max_depth_m: float) -> NDArray[np.uint8]:
    """Rows = views; columns = rgb | depth | instance | part."""
    inst_c = id_colors(int(frames.instance.max()) + 1)
    part_c = id_colors(int(frames.part.max()) + 1)
    rows = []
    for i in range(len(frames)):
        tiles = [
            frames.rgb[i],
            depth_image(frames.depth[i], max_depth_m),
            inst_c[frames.instance[i]],
            part_c[frames.part[i]],
        ]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)


def write_preview(
    scene: SceneConfig,
    out: Path,
    n_views: int = 6,
    width: int = 192,
    height: int = 144,
    seed: int = 0,
) -> tuple[Path, list[Label]]:
    """Render `n_views` capture-style views of `scene` and write the contact sheet PNG."""
    import imageio.v3 as iio

    from egosynth.render import open_renderer

    settings = replace(CaptureSettings(), n_views=n_views, width=width, height=height, seed=seed)
    c2w, K = sample_views(scene, settings)
    renderer = open_renderer(scene)
    frames = renderer.render(c2w, K, width, height)
    x0, y0 = np.min(scene.floor, axis=0)
    x1, y1 = np.max(scene.floor, axis=0)
    sheet = contact_sheet(frames, max_depth_m=float(np.hypot(x1 - x0, y1 - y0)))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out, sheet, extension=".png")
    except OSError as exc:
        raise EgosynthError(f"{out}: cannot write ({exc.strerror})") from None
    return out, renderer.labels()
