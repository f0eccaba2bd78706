"""`egosynth eval` subcommands of the experiments (docs/science.md): supervised baselines,
the controls, choosing on validation, and the summary with intervals.

    egosynth eval baseline twins/s1 --out baselines/s1.pt [--harmonize 1]
    egosynth eval controls twins/s0 --out controls/
    egosynth eval select twins/s1 --checkpoint lambdas/ --out selection.json
    egosynth eval summarize report/ controls/ --out summary/

Registered under `egosynth eval` by egosynth.commands.eval; torch is imported by the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from egosynth.checks import count, integer, real
from egosynth.commands.eval_models import checkpoints as _checkpoints
from egosynth.commands.eval_models import csv_list as _csv
from egosynth.commands.eval_models import load_models as _load_models
from egosynth.errors import EgosynthError


def register(esub: argparse._SubParsersAction) -> None:
    b = esub.add_parser(
        "baseline",
        help="train a supervised baseline on a twin's train split",
        description="ResNet backbone + linear head on static twin frames: "
        "cross-entropy, optionally + the harmonizer loss with the part maps.",
    )
    b.add_argument("twin", type=Path, help="twin folder")
    b.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    b.add_argument("--name", default=None, help="model name in reports")
    b.add_argument("--steps", type=count(), default=300)
    b.add_argument("--batch-size", type=count(maximum=65_536), default=32)
    b.add_argument("--lr", type=real(positive=True, maximum=1e3), default=1e-3)
    b.add_argument("--weight-decay", type=real(0.0), default=1e-4)
    b.add_argument("--input-size", type=count(maximum=4096), default=48)
    b.add_argument(
        "--harmonize", type=real(0.0), default=0.0, help="harmonizer weight (0: cross-entropy only)"
    )
    b.add_argument(
        "--harmonize-from",
        type=Path,
        default=None,
        help="selection JSON of `egosynth eval select`: take its harmonizer weight",
    )
    b.add_argument("--arch", default="resnet18")
    b.add_argument("--width", type=count(maximum=4096), default=16)
    b.add_argument("--embed-dim", type=count(maximum=65_536), default=64)
    b.add_argument("--no-flip", action="store_true")
    b.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    b.add_argument("--threads", type=integer(0, 4096), default=0)
    b.add_argument("--max-images", type=count(), default=None)
    b.add_argument("--no-progress", action="store_true")
    b.set_defaults(func=run_baseline)

    k = esub.add_parser(
        "controls",
        help="score the controls (centre bias, shuffled maps, random network, noise ceiling)",
        description="Controls scored like models on each twin's test split: a centre-bias "
        "Gaussian, the human maps shuffled across images, a randomly initialised network's "
        "saliency, and the noise ceiling of the human maps (docs/science.md).",
    )
    k.add_argument("twins", nargs="+", type=Path, help="twin folders")
    k.add_argument("--out", type=Path, required=True, help="folder for report.json")
    k.add_argument(
        "--controls",
        type=_csv,
        default=["centre-bias", "shuffled-human", "random-init", "noise-ceiling"],
        help="comma-separated subset of centre-bias, shuffled-human, random-init, noise-ceiling",
    )
    k.add_argument(
        "--seeds", type=_csv, default=["0", "1", "2"], help="seeds of the random controls"
    )
    k.add_argument("--arch", default="resnet10", help="random-init network (as the baselines)")
    k.add_argument("--width", type=count(maximum=4096), default=8)
    k.add_argument("--embed-dim", type=count(maximum=65_536), default=64)
    k.add_argument("--input-size", type=count(maximum=4096), default=48)
    k.add_argument("--max-images", type=count(), default=None, help="cap images per split")
    k.add_argument("--batch-size", type=count(maximum=65_536), default=32)
    k.add_argument("--threads", type=integer(0, 4096), default=0)
    k.add_argument("--no-progress", action="store_true")
    k.set_defaults(func=run_controls)

    v = esub.add_parser(
        "select",
        help="choose among baselines (e.g. harmonizer weights) on a twin's validation split",
        description="Score candidate baseline checkpoints on the twin's validation/ split "
        "(egosynth eval twin-export --validation) and write the best one's settings as JSON; "
        "`egosynth eval baseline --harmonize-from` reads its harmonizer weight. The test split "
        "is never read.",
    )
    v.add_argument("twin", type=Path, help="twin folder with a validation/ split")
    v.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="CKPT",
        help="candidate baseline; repeat; NAME=PATH names it",
    )
    v.add_argument(
        "--metric",
        default="alignment_score",
        choices=("alignment_score", "accuracy", "accuracy_cue_conflict"),
        help="what the choice maximises on the validation split",
    )
    v.add_argument("--out", type=Path, required=True, help="selection JSON file to write")
    v.add_argument("--max-images", type=count(), default=None)
    v.add_argument("--batch-size", type=count(maximum=65_536), default=32)
    v.add_argument("--threads", type=integer(0, 4096), default=0)
    v.add_argument("--no-progress", action="store_true")
    v.set_defaults(func=run_select)

    m = esub.add_parser(
        "summarize",
        help="tables with 95 %% intervals, trend tests and figures from eval reports",
        description="Group the rows of egosynth eval reports into conditions (model names "
        "SERIES@LEVEL#SEED), bootstrap 95 %% intervals over seeds and test images, test "
        "monotonic trends over levels, write summary.json, summary.md and figures.",
    )
    m.add_argument("reports", nargs="+", type=Path, help="report.json files or their folders")
    m.add_argument("--out", type=Path, required=True, help="folder for the summary")
    m.add_argument("--n-boot", type=count(maximum=1_000_000), default=2000)
    m.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    m.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="JSON list of published points {name, alignment, accuracy (or null), source} to "
        "mark on the alignment-vs-accuracy figure (e.g. docs/data/harmonization_reference.json)",
    )
    m.set_defaults(func=run_summarize)


# --------------------------------------------------------------------------- handlers
def run_baseline(args: argparse.Namespace) -> int:
    from egosynth.checks import output_file
    from egosynth.eval.baseline import BaselineConfig, save_baseline, train_baseline
    from egosynth.eval.evaluate import load_split
    from egosynth.eval.twin import read_twin_info
    from egosynth.train.encoders import EncoderConfig

    output_file(args.out, inputs=[args.twin])
    info = read_twin_info(args.twin)
    if args.harmonize_from is not None:
        args.harmonize = _selected_harmonize(args.harmonize_from)
    cfg = BaselineConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        input_size=args.input_size,
        harmonize=args.harmonize,
        flip=not args.no_flip,
        seed=args.seed,
        threads=args.threads,
        encoder=EncoderConfig(arch=args.arch, width=args.width, embed_dim=args.embed_dim),
    )
    data = load_split(
        args.twin / "train", args.max_images, progress=not args.no_progress, desc="twin train"
    )
    model, summary = train_baseline(
        data.images,
        data.labels,
        data.heatmaps if cfg.harmonize else None,
        info["categories"],
        cfg,
        not args.no_progress,
    )
    name = args.name or ("harmonized" if cfg.harmonize else "supervised")
    path = save_baseline(
        args.out,
        model,
        info["categories"],
        cfg,
        name,
        {"twin": str(args.twin), "train_summary": summary},
    )
    print(json.dumps({"checkpoint": str(path), "name": name, **summary}, indent=2))
    return 0


def run_controls(args: argparse.Namespace) -> int:
    from itertools import islice

    import torch

    from egosynth.checks import output_dir
    from egosynth.eval.clickme import iter_clickme
    from egosynth.eval.controls import CONTROLS, map_controls, random_init_model
    from egosynth.eval.evaluate import load_split, score_model
    from egosynth.eval.report import format_table, write_json
    from egosynth.eval.twin import read_twin_info, read_twin_samples

    unknown = set(args.controls) - set(CONTROLS)
    if unknown:
        raise EgosynthError(f"--controls: unknown {sorted(unknown)}; choose from {list(CONTROLS)}")
    try:
        seeds = [int(s) for s in args.seeds]
    except ValueError:
        raise EgosynthError(f"--seeds = {','.join(args.seeds)}: expected integers") from None
    output_dir(args.out, inputs=list(args.twins))
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    rows: list[dict[str, Any]] = []
    datasets = []
    for folder in args.twins:
        info = read_twin_info(folder)
        name = folder.name or str(folder)
        test = load_split(folder / "test", args.max_images, progress=progress, desc=f"{name} test")
        test.meta = read_twin_samples(folder).get("test", [])[: len(test)]
        # the raw 256x256 maps (same file order as load_split) for the noise ceiling
        raw = [s.heatmap for s in islice(iter_clickme(folder / "test"), len(test))]
        sigma = float(info["config"]["blur_sigma"])
        base = {"dataset": name, "shortcut": info["splits"]["train"]["shortcut"]}
        datasets.append({"name": name, "twin": str(folder), "n_images": len(test)})
        for i, seed in enumerate(seeds):
            # the centre bias has no randomness: one seed is the whole condition
            which = [c for c in args.controls if c != "centre-bias" or i == 0]
            for row in map_controls(test.heatmaps, raw, sigma, seed, which):
                rows.append({**base, **row})
            if "random-init" in which:
                model = random_init_model(
                    info["categories"],
                    args.arch,
                    args.width,
                    args.embed_dim,
                    args.input_size,
                    seed,
                )
                for scored in score_model(
                    model,
                    test,
                    None,
                    len(info["categories"]),
                    (),
                    "gradient",
                    args.batch_size,
                    0,
                    progress,
                ):
                    rows.append({**base, **scored.row, "kind": "control"})
    print(format_table(rows))
    report = {"datasets": datasets, "controls": args.controls, "seeds": seeds, "results": rows}
    path = write_json(args.out / "report.json", report)
    print(f"report: {path}")
    return 0


def run_summarize(args: argparse.Namespace) -> int:
    from egosynth.eval.summary import markdown, parse_reference, read_reports, write_summary
    from egosynth.readers import read_json

    reference = []
    if args.reference is not None:
        reference = parse_reference(read_json(args.reference, "reference points"), args.reference)
    rows = read_reports(args.reports)
    summary = write_summary(args.out, rows, n_boot=args.n_boot, seed=args.seed, reference=reference)
    print(markdown(summary))
    print(
        f"summary: {args.out / 'summary.json'}, {args.out / 'summary.md'}; figures: "
        f"{', '.join(summary['figures']) or 'none'}"
    )
    return 0


def _selected_harmonize(path: Path) -> float:
    """The harmonizer weight a selection file (egosynth eval select) chose."""
    import math

    from egosynth.readers import read_json_object

    sel = read_json_object(path, "selection")
    value = sel.get("chosen", {}).get("harmonize") if isinstance(sel.get("chosen"), dict) else None
    if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise EgosynthError(f"{path}: no chosen harmonizer weight (chosen.harmonize = {value!r})")
    return float(value)


def run_select(args: argparse.Namespace) -> int:
    import math

    import torch

    from egosynth.checks import output_file
    from egosynth.eval.evaluate import load_split, score_model
    from egosynth.eval.report import format_table, write_json
    from egosynth.eval.twin import read_twin_info, read_twin_samples

    info = read_twin_info(args.twin)
    if "validation" not in info["splits"]:
        raise EgosynthError(
            f"{args.twin}: no validation split (export with `egosynth eval twin-export "
            "--validation`): choices are never made on the test split"
        )
    given = _checkpoints(args.checkpoint)
    output_file(args.out, inputs=[args.twin, *(p for _, p in given)])
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    val = load_split(args.twin / "validation", args.max_images, progress=progress, desc="val")
    val.meta = read_twin_samples(args.twin).get("validation", [])[: len(val)]
    rows = []
    for (_, path), model in zip(given, _load_models(given, None), strict=True):
        if model.kind != "classifier":
            raise EgosynthError(f"{path}: select compares supervised baselines only")
        for scored in score_model(
            model, val, None, len(info["categories"]), (), "gradient", args.batch_size, 0, progress
        ):
            row = {k: v for k, v in scored.row.items() if k != "per_image"}
            rows.append({**row, "checkpoint": str(path), "dataset": "validation"})
    print(format_table(rows))

    def value(r: dict[str, Any]) -> float:
        v = r.get(args.metric)
        return v if isinstance(v, int | float) and math.isfinite(v) else -math.inf

    best = max(rows, key=value)  # first among equals: the candidates' order decides ties
    if value(best) == -math.inf:
        raise EgosynthError(f"select: no candidate has a finite {args.metric} on validation")
    write_json(
        args.out,
        {
            "twin": str(args.twin),
            "split": "validation",
            "metric": args.metric,
            "chosen": best,
            "candidates": rows,
        },
    )
    print(
        f"chosen: {best['model']} (harmonize {best.get('harmonize')}, "
        f"{args.metric} {value(best):.3f}) -> {args.out}"
    )
    return 0
