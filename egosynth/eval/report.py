"""Evaluation output: a JSON report, a terminal table, and figures (matplotlib, Agg).

Figures:
    overlays_<dataset>.png       per example image: the image, the human map, then each
                                 model's saliency (rows), normalised per map
    alignment_vs_accuracy.png    one point per (dataset, model, scoring) with an accuracy
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = (
    ("dataset", "dataset", "{}"),
    ("shortcut", "train shortcut", "{:.2f}"),
    ("model", "model", "{}"),
    ("scoring", "scoring", "{}"),
    ("accuracy", "acc", "{:.3f}"),
    ("accuracy_cue_conflict", "acc conflict", "{:.3f}"),
    ("alignment_score", "alignment", "{:.3f}"),
    ("spearman", "spearman", "{:.3f}"),
    ("dice", "dice", "{:.3f}"),
    ("iou", "iou", "{:.3f}"),
    ("n_images", "n", "{}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of result rows (missing values shown as '-')."""
    header = [title for _, title, _ in COLUMNS]
    body = [[_cell(r, key, fmt) for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_json(path: str | Path, report: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(report), indent=2))
    return path


def _norm(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    lo, hi = np.nanmin(m), np.nanmax(m)
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def plot_overlays(
    path: str | Path,
    images: np.ndarray,
    human: np.ndarray,
    saliency: dict[str, np.ndarray],
    titles: Sequence[str] | None = None,
) -> Path:
    """Columns = examples; rows = image, human map over the image, each model's saliency.

    Drawn as one mosaic in one axes, the maps blended here as matplotlib would (jet at alpha
    0.5 over the image; at 0.6 over the image at 40 % for the models): an axes per panel, two
    images each, took ~1.5 s a figure on a small CPU, several times the mosaic's time.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["image", "human map", *saliency]
    k, (h, w) = len(images), np.shape(images)[1:3]
    gap = max(2, h // 32)  # white between panels
    mosaic = np.ones((len(names) * (h + gap) - gap, max(k * (w + gap) - gap, 1), 3))

    def put(row: int, col: int, tile: np.ndarray) -> None:
        mosaic[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = tile

    for j in range(k):
        img = np.clip(np.asarray(images[j], np.float64) / 255.0, 0, 1)
        put(0, j, img)
        put(1, j, _blend(img, human[j], 0.5))
        for i, maps in enumerate(saliency.values()):
            put(2 + i, j, _blend(img * 0.4, maps[j], 0.6) if j < len(maps) else img * 0.4)
    fig, ax = plt.subplots(figsize=(1.8 * k, 1.8 * len(names)))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(names))], names, fontsize=7)
    ax.set_xticks([c * (w + gap) + w / 2 for c in range(k)] if titles else [])
    if titles:
        ax.set_xticklabels(list(titles)[:k], fontsize=7)
        ax.xaxis.tick_top()
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return _save(fig, path, dpi=90)


def _blend(base: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """`heat` (normalised, jet) over `base` (H, W, 3) at `alpha`; NaN shows the base, as
    matplotlib draws its transparent 'bad' colour. A map of another size is resampled to the
    base's (nearest), as imshow stretches both over one axes."""
    import matplotlib

    heat = np.asarray(heat, np.float64)
    h, w = base.shape[:2]
    if heat.shape != (h, w):
        rows = np.arange(h) * heat.shape[0] // h
        cols = np.arange(w) * heat.shape[1] // w
        heat = heat[rows][:, cols]
    rgba = matplotlib.colormaps["jet"](_norm(heat))
    a = alpha * rgba[..., 3:4]
    return (1 - a) * base + a * rgba[..., :3]


def plot_alignment_vs_accuracy(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path | None:
    """Scatter of alignment against accuracy for rows that have both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [
        r
        for r in rows
        if r.get("accuracy") is not None
        and r.get("alignment_score") is not None
        and math.isfinite(r["alignment_score"])
    ]
    if not pts:
        return None
    # Colour names the model (and its scoring), marker the dataset; both in legends beside
    # the axes: labels printed at the points overlapped and ran off the right edge.
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(8, 4.5))
    datasets = sorted({r.get("dataset", "") for r in pts})
    models = sorted({f"{r['model']} ({r['scoring']})" for r in pts})
    markers, colours = "os^Dv<>p", plt.get_cmap("tab10").colors
    for r in pts:
        m = markers[datasets.index(r.get("dataset", "")) % len(markers)]
        c = colours[models.index(f"{r['model']} ({r['scoring']})") % len(colours)]
        ax.scatter(r["accuracy"], r["alignment_score"], marker=m, color=c, s=36,
                   edgecolors="black", linewidths=0.4)  # fmt: skip
    model_keys = [Line2D([], [], ls="", marker="o", color=colours[i % len(colours)], label=name)
                  for i, name in enumerate(models)]  # fmt: skip
    data_keys = [Line2D([], [], ls="", marker=markers[i % len(markers)], color="grey", label=d)
                 for i, d in enumerate(datasets)]  # fmt: skip
    ax.legend(handles=model_keys + data_keys, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), title="colour: model (scoring)\nmarker: dataset",
              title_fontsize=7)  # fmt: skip
    ax.set_xlabel("accuracy (test split)")
    ax.set_ylabel("alignment (Spearman / 0.65753)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("human alignment against accuracy")
    return _save(fig, path, dpi=110)


def _save(fig: Any, path: str | Path, dpi: int) -> Path:
    """Lay out, write (making the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # legends beside the axes included
    plt.close(fig)
    return path
