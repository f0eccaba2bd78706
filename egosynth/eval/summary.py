"""`egosynth eval summarize`: many reports -> tables with intervals, trend tests, figures.

Reports (`egosynth eval twin` / `egosynth eval controls`) carry per-image values
(`per_image`: spearman, correct, cue_conflict). Rows are grouped into *conditions* by
(dataset, series, level, scoring); the model name gives the series, level and seed:

    SERIES@LEVEL#SEED     e.g. supervised@0.25#1: series "supervised", level 0.25, seed 1
    NAME#SEED             a condition without a level (an ablation arm, a control)
    NAME                  the seed comes from the checkpoint's config (row "seed"), else 0

Within a condition every seed contributes its images; intervals are the two-stage bootstrap
of egosynth.eval.stats (seeds, then images). A series with three or more levels gets a
Spearman trend test of the per-seed means against the level, for each measure.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egosynth.errors import EgosynthError
from egosynth.eval.metrics import HUMAN_SPEARMAN_CEILING
from egosynth.eval.stats import Interval, hierarchical_bootstrap, spearman_trend

_NAME = re.compile(r"^(?P<series>.+?)(?:@(?P<level>[-+0-9.eE]+))?(?:#(?P<seed>[^#@]+))?$")

# measure -> (title, how to get per-image values from a row's per_image)
MEASURES = ("alignment", "accuracy", "accuracy_cue_conflict", "accuracy_cue_agree")


def parse_model_name(name: str, row_seed: Any = None) -> tuple[str, float | None, str]:
    """(series, level or None, seed label) of a model name (see the module doc)."""
    m = _NAME.match(name)
    series, level, seed = (
        (m.group("series"), m.group("level"), m.group("seed")) if m else (name, None, None)
    )
    try:
        lv = float(level) if level is not None else None
    except ValueError:  # "a@b" where b is not a number: part of the name
        series, lv = f"{series}@{level}", None
    if seed is None:
        seed = str(row_seed) if row_seed is not None else "0"
    return series, lv, seed


def _values(row: dict[str, Any], measure: str) -> np.ndarray | None:
    """Per-image values of one measure in one row, or None when the row lacks them."""
    per = row.get("per_image") or {}
    if measure == "alignment":
        v = per.get("spearman")
        # alignment = mean Spearman / ceiling, so per-image Spearman / ceiling averages to it
        return None if v is None else np.asarray(v, dtype=np.float64) / HUMAN_SPEARMAN_CEILING
    correct = per.get("correct")
    if correct is None:
        return None
    c = np.asarray(correct, dtype=np.float64)
    if measure == "accuracy":
        return c
    conflict = per.get("cue_conflict")
    if conflict is None:
        return None
    mask = np.asarray(conflict, dtype=bool)
    return c[mask] if measure == "accuracy_cue_conflict" else c[~mask]


def read_reports(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """All result rows of the given report.json files (or folders holding one)."""
    from egosynth.readers import read_json

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # a folder: its own report, or every report below it (one per eval stage)
            found = [p / "report.json"] if (p / "report.json").is_file() else []
            found = found or sorted(p.rglob("report.json"))
            if not found:
                raise EgosynthError(f"{p}: no report.json in or below this folder")
            files += found
        else:
            files.append(p)
    rows = []
    for f in files:
        report = read_json(f, "evaluation report")
        results = report.get("results") if isinstance(report, dict) else None
        if not isinstance(results, list):
            raise EgosynthError(f"{f}: no 'results' list: not an egosynth eval report")
        for r in results:
            rows.append({**r, "report": str(f)})
    if not rows:
        raise EgosynthError("summarize: the reports hold no result rows")
    return rows


def summarize_rows(
    rows: Sequence[dict[str, Any]], n_boot: int = 2000, seed: int = 0, n_perm: int = 20000
) -> dict[str, Any]:
    """Conditions with intervals, and trend tests for series with three or more levels."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    meta: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        series, level, seed_label = parse_model_name(str(r.get("model", "?")), r.get("seed"))
        key = (str(r.get("dataset", "")), series, level, str(r.get("scoring", "")))
        meta.setdefault(key, {"kind": r.get("kind"), "seeds": []})
        if seed_label in meta[key]["seeds"]:
            raise EgosynthError(
                f"summarize: {r.get('model')} on {key[0]} ({key[3]}) appears twice with seed "
                f"{seed_label}: name seeds SERIES@LEVEL#SEED"
            )
        meta[key]["seeds"].append(seed_label)
        for m in MEASURES:
            v = _values(r, m)
            if v is not None:
                groups[key][m].append(v)
    conditions = []
    for key in sorted(
        groups, key=lambda k: (k[0], k[1], -math.inf if k[2] is None else k[2], k[3])
    ):
        dataset, series, level, scoring = key
        c: dict[str, Any] = {
            "dataset": dataset,
            "series": series,
            "level": level,
            "scoring": scoring,
            "kind": meta[key]["kind"],
            "seeds": meta[key]["seeds"],
        }
        for m, per_seed in groups[key].items():
            iv = hierarchical_bootstrap(per_seed, n_boot=n_boot, seed=seed)
            c[m] = iv.as_dict()
            c[f"{m}_per_seed"] = [
                float(np.nanmean(v)) if np.isfinite(v).any() else None for v in per_seed
            ]
        conditions.append(c)
    trends = []
    by_series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in conditions:
        if c["level"] is not None:
            by_series[(c["dataset"], c["series"], c["scoring"])].append(c)
    for (dataset, series, scoring), cs in sorted(by_series.items()):
        if len({c["level"] for c in cs}) < 3:
            continue  # a trend needs at least three levels
        for m in MEASURES:
            lv, vals = [], []
            for c in cs:
                for v in c.get(f"{m}_per_seed", []):
                    if v is not None:
                        lv.append(c["level"])
                        vals.append(v)
            if len(set(lv)) < 3:
                continue
            t = spearman_trend(lv, vals, n_perm=n_perm, seed=seed)
            trends.append(
                {
                    "dataset": dataset,
                    "series": series,
                    "scoring": scoring,
                    "measure": m,
                    **t.as_dict(),
                }
            )
    return {"n_boot": n_boot, "seed": seed, "conditions": conditions, "trends": trends}


def _fmt(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("estimate") is None or not math.isfinite(iv["estimate"]):
        return "-"
    return f"{iv['estimate']:.3f} [{iv['low']:.3f}, {iv['high']:.3f}]"


def markdown(summary: dict[str, Any]) -> str:
    """The conditions table and the trend tests as markdown."""
    lines = [
        "| dataset | series | level | scoring | seeds | alignment | accuracy | "
        "acc. cue-conflict | acc. cue-agree |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in summary["conditions"]:
        level = "-" if c["level"] is None else f"{c['level']:g}"
        lines.append(
            f"| {c['dataset']} | {c['series']} | {level} | {c['scoring']} | {len(c['seeds'])} | "
            + " | ".join(_fmt(c.get(m)) for m in MEASURES)
            + " |"
        )
    lines.append("")
    lines.append(
        f"Intervals: 95 % two-stage bootstrap (seeds, then images), {summary['n_boot']} "
        "replicates. Alignment = Spearman / 0.65753."
    )
    if summary["trends"]:
        lines += [
            "",
            "| dataset | series | scoring | measure | n | Spearman rho | p (two-sided) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for t in summary["trends"]:
            p = (
                "-"
                if t["p_value"] is None or not math.isfinite(t["p_value"])
                # small p in scientific notation: 0.0000 would hide the permutation floor
                else (f"{t['p_value']:.4f}" if t["p_value"] >= 1e-3 else f"{t['p_value']:.1e}")
            )
            rho = "-" if not math.isfinite(t["rho"]) else f"{t['rho']:+.3f}"
            kind = "exact" if t["exact"] else f"{t['n_permutations']} permutations"
            lines.append(
                f"| {t['dataset']} | {t['series']} | {t['scoring']} | {t['measure']} | "
                f"{t['n']} | {rho} | {p} ({kind}) |"
            )
    return "\n".join(lines) + "\n"


def _err(iv: dict[str, Any]) -> tuple[float, list[list[float]]]:
    e = iv["estimate"]
    return e, [[e - iv["low"]], [iv["high"] - e]]


def _ok(iv: dict[str, Any] | None) -> bool:
    return bool(iv) and iv.get("estimate") is not None and math.isfinite(iv["estimate"])


def plot_dose_response(path: str | Path, summary: dict[str, Any]) -> Path | None:
    """Per series with levels: alignment and accuracies against the level, 95 % error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from egosynth.eval.report import _save

    series: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for c in summary["conditions"]:
        if c["level"] is not None:
            series[(c["dataset"], c["series"], c["scoring"])].append(c)
    if not series:
        return None
    panels = [
        ("alignment", "alignment (Spearman / 0.65753)"),
        ("accuracy_cue_agree", "accuracy, shortcut-consistent"),
        ("accuracy_cue_conflict", "accuracy, shortcut-broken"),
    ]
    # One row of panels per set of levels: a shortcut sweep (0..1) and a width sweep (4..32)
    # on one axis would squash each other.
    sweeps: dict[tuple, list[tuple]] = defaultdict(list)
    for key, cs in sorted(series.items()):
        sweeps[tuple(sorted({c["level"] for c in cs}))].append(key)
    n_rows = len(sweeps)
    fig, axes = plt.subplots(n_rows, 3, figsize=(13, 3.6 * n_rows + 0.6), squeeze=False)
    colours = plt.get_cmap("tab10").colors
    for row, (levels, keys) in enumerate(sweeps.items()):
        for i, key in enumerate(keys):
            cs = sorted(series[key], key=lambda c: c["level"])
            label = f"{key[1]} ({key[2]}, {key[0]})"
            for col, (m, _) in enumerate(panels):
                pts = [c for c in cs if _ok(c.get(m))]
                if not pts:
                    continue
                axes[row, col].errorbar(
                    [c["level"] for c in pts],
                    [c[m]["estimate"] for c in pts],
                    yerr=[
                        [c[m]["estimate"] - c[m]["low"] for c in pts],
                        [c[m]["high"] - c[m]["estimate"] for c in pts],
                    ],
                    marker="o",
                    capsize=3,
                    lw=1.2,
                    ms=4,
                    color=colours[i % len(colours)],
                    label=label,
                )
        log = min(levels) > 0 and max(levels) / min(levels) >= 4  # widths: a doubling scale
        for col, (_, title) in enumerate(panels):
            ax = axes[row, col]
            if log:
                ax.set_xscale("log", base=2)
            ax.set_xticks(levels)
            ax.set_xticklabels([f"{v:g}" for v in levels], fontsize=7)
            ax.set_xlabel("level: " + ", ".join(sorted({k[1] for k in keys})), fontsize=8)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
            ax.margins(x=0.08, y=0.12)  # error bars and end points never touch the frame
        axes[row, 0].legend(fontsize=7, loc="best")
    fig.suptitle("dose-response (95 % intervals over seeds and test images)", fontsize=10)
    return _save(fig, path, dpi=110)


def plot_alignment_accuracy(
    path: str | Path,
    summary: dict[str, Any],
    reference: Sequence[dict[str, Any]] = (),
) -> Path | None:
    """Alignment against accuracy per condition, error bars both ways; controls as lines.

    One panel per test set (its own legend below it), so that the conditions of one data set
    are compared with that data set's controls only. `reference`: published points
    (`parse_reference`) in every panel: crosses where they have an accuracy, dark-red dotted
    lines where only their alignment is known.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from egosynth.eval.report import _save

    conds = [c for c in summary["conditions"] if _ok(c.get("alignment"))]
    if not conds:
        return None
    datasets = sorted({c["dataset"] for c in conds})
    n_entries = max(len({c["series"] for c in conds if c["dataset"] == d}) for d in datasets)
    fig, axes = plt.subplots(
        1,
        len(datasets),
        figsize=(6.2 * len(datasets), 4.6 + 0.17 * n_entries),
        squeeze=False,
        sharey=True,
    )
    colours = plt.get_cmap("tab10").colors
    markers = "osD^v<>p"
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
    for ax, dataset in zip(axes[0], datasets, strict=True):
        here = [c for c in conds if c["dataset"] == dataset]
        pts = [c for c in here if _ok(c.get("accuracy"))]
        lines = [c for c in here if not _ok(c.get("accuracy"))]
        names = sorted({(c["series"], c["scoring"]) for c in pts})
        handles = []
        for i, name in enumerate(names):
            col, mk = colours[i % len(colours)], markers[(i // len(colours)) % len(markers)]
            cs = [c for c in pts if (c["series"], c["scoring"]) == name]
            for c in cs:
                x, xe = _err(c["accuracy"])
                y, ye = _err(c["alignment"])
                ax.errorbar(x, y, xerr=xe, yerr=ye, marker=mk, color=col, ms=5, capsize=2, lw=0.8)
            levels = [c["level"] for c in cs if c["level"] is not None]
            if len(levels) > 1:  # connect a series in level order; the legend names its ends
                cs = sorted(cs, key=lambda c: c["level"])
                ax.plot(
                    [c["accuracy"]["estimate"] for c in cs],
                    [c["alignment"]["estimate"] for c in cs],
                    color=col,
                    lw=0.6,
                    alpha=0.6,
                )
            span = f", level {min(levels):g} to {max(levels):g}" if levels else ""
            handles.append(
                Line2D([], [], color=col, marker=mk, ls="", label=f"{name[0]} ({name[1]}{span})")
            )
        for j, c in enumerate(lines):  # controls without accuracy: horizontal bands
            iv = c["alignment"]
            ls = styles[j % len(styles)]
            ax.axhline(iv["estimate"], color="grey", ls=ls, lw=1)
            ax.axhspan(iv["low"], iv["high"], color="grey", alpha=0.12)
            handles.append(
                Line2D([], [], color="grey", ls=ls, label=f"{c['series']}: {iv['estimate']:.2f}")
            )
        handles += _draw_reference(ax, reference)
        ax.set_xlabel("accuracy (test split, held-out clips)")
        ax.set_title(dataset, fontsize=10)
        ax.axhline(0, color="black", lw=0.4)
        ax.margins(0.08)
        ax.grid(alpha=0.3)
        ax.legend(
            handles=handles,
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            ncol=2 if len(handles) > 6 else 1,
        )
    axes[0, 0].set_ylabel("alignment (Spearman / 0.65753)")
    fig.suptitle("alignment against accuracy (95 % intervals; grey bands: controls)", fontsize=10)
    return _save(fig, path, dpi=110)


def parse_reference(data: Any, source: str | Path) -> list[dict[str, Any]]:
    """Published reference points: a JSON list of {name, alignment, accuracy?, source?}.

    `accuracy` may be null (only the alignment is published or readable), else in [0, 1].
    A bad entry is one line naming the file, the entry and the field.
    """
    if not isinstance(data, list):
        raise EgosynthError(f"{source}: expected a list of {{name, alignment, accuracy}} objects")
    out = []
    for i, r in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(r, dict):
            raise EgosynthError(f"{where}: expected an object, got {type(r).__name__}")
        if not isinstance(r.get("name"), str) or not r["name"].strip():
            raise EgosynthError(
                f"{where}: field 'name' = {r.get('name')!r:.40}: a non-empty string"
            )
        for key, required in (("alignment", True), ("accuracy", False)):
            v = r.get(key)
            if v is None and not required:
                continue
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            if not ok or (key == "accuracy" and not 0 <= v <= 1):
                raise EgosynthError(
                    f"{where}: field {key!r} = {v!r:.40}: "
                    + ("a number in [0, 1] or null" if key == "accuracy" else "a finite number")
                )
        out.append({"name": r["name"], "alignment": float(r["alignment"]),
                    "accuracy": None if r.get("accuracy") is None else float(r["accuracy"]),
                    "source": str(r.get("source", ""))})  # fmt: skip
    return out


def _draw_reference(ax: Any, reference: Sequence[dict[str, Any]]) -> list[Any]:
    """Reference points on one panel; returns their legend handles."""
    from matplotlib.lines import Line2D

    handles = []
    points = [r for r in reference if r.get("accuracy") is not None]
    for r in points:
        ax.scatter(r["accuracy"], r["alignment"], marker="x", color="dimgrey", s=25)
    if points:
        handles.append(Line2D([], [], color="dimgrey", marker="x", ls="", label="published"))
    lines = sorted(
        (r for r in reference if r.get("accuracy") is None), key=lambda r: r["alignment"]
    )
    for i, r in enumerate(lines):  # neighbours in value alternate ends, so labels do not collide
        ax.axhline(r["alignment"], color="darkred", ls=(0, (1, 2)), lw=0.9, alpha=0.7)
        ax.text(0.99 if i % 2 else 0.01, r["alignment"], f"{r['name']} {r['alignment']:.2f}",
                transform=ax.get_yaxis_transform(), ha="right" if i % 2 else "left",
                va="bottom", fontsize=6, color="darkred")  # fmt: skip
    if lines:
        label = "published alignment (their task: ImageNet / ClickMe)"
        handles.append(Line2D([], [], color="darkred", ls=(0, (1, 2)), label=label))
    return handles


def write_summary(
    out: str | Path,
    rows: Sequence[dict[str, Any]],
    n_boot: int = 2000,
    seed: int = 0,
    reference: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """summary.json, summary.md and the figures into `out`; returns the summary."""
    from egosynth.eval.report import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_rows(rows, n_boot=n_boot, seed=seed)
    figures = []
    for fig in (
        plot_dose_response(out / "dose_response.png", summary),
        plot_alignment_accuracy(out / "alignment_vs_accuracy.png", summary, reference),
    ):
        if fig is not None:
            figures.append(str(fig))
    summary["figures"] = figures
    summary["reports"] = sorted({r["report"] for r in rows if "report" in r})
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown(summary))
    return summary


__all__ = [
    "Interval",
    "markdown",
    "parse_model_name",
    "plot_alignment_accuracy",
    "plot_dose_response",
    "read_reports",
    "summarize_rows",
    "write_summary",
]
