"""`egosynth eval`: human alignment on ClickMe and on the synthetic twin (docs/eval.md).

    egosynth eval clickme --data clickme/val --checkpoint run/checkpoints/step_200.pt
    egosynth eval twin-export outputs/demo.zarr --out twins/s1 --shortcut 1
    egosynth eval baseline twins/s1 --out baselines/s1.pt [--harmonize 1]
    egosynth eval twin twins/s0 twins/s1 --checkpoint a.pt --checkpoint b.pt --out report/
    egosynth eval controls twins/s0 --out controls/          (docs/science.md)
    egosynth eval select twins/s1 --checkpoint lambdas/ --out selection.json
    egosynth eval summarize report/ controls/ --out summary/

The experiments' subcommands (baseline, controls, select, summarize) live in
egosynth.commands.eval_science. Nothing heavy is imported at module level (torch, zarr are
imported by the handlers).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from egosynth.checks import count, integer, real
from egosynth.commands import eval_science
from egosynth.commands.eval_models import checkpoints as _checkpoints
from egosynth.commands.eval_models import csv_list as _csv
from egosynth.commands.eval_models import load_models as _load_models
from egosynth.errors import EgosynthError

# egosynth.eval.saliency.METHODS, listed here so that --help does not import torch.
SALIENCY_METHODS = ("gradient", "saliency", "integrated_gradients", "smoothgrad",
                    "input_x_gradient", "guided_backprop")  # fmt: skip


def _parts(values: list[str] | None) -> dict[str, str]:
    out = {}
    for item in values or []:
        cat, sep, part = item.partition("=")
        if not sep or not cat or not part:
            raise EgosynthError(f"--part = {item!r}: expected <category>=<part name>")
        out[cat] = part
    return out


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="CKPT",
        help="egosynth train checkpoint or supervised baseline; repeat for several; "
        "NAME=PATH names the model",
    )
    p.add_argument(
        "--score",
        type=_csv,
        default=["probe", "embedding"],
        help="for encoders: probe (linear probe, true-class logit) and/or embedding "
        "(label-free norm of the standardised embedding); comma-separated",
    )
    p.add_argument(
        "--saliency",
        default="gradient",
        choices=SALIENCY_METHODS,
        help="saliency method (gradient = the reference's; the others come from captum)",
    )
    p.add_argument(
        "--input-size",
        type=count(maximum=4096),
        default=None,
        help="square side the network sees (default: its training frame height)",
    )
    p.add_argument("--max-images", type=count(), default=None, help="cap images per split")
    p.add_argument("--batch-size", type=count(maximum=65_536), default=32)
    p.add_argument(
        "--examples", type=integer(0, 256), default=6, help="images in the overlay figures"
    )
    p.add_argument(
        "--threads", type=integer(0, 4096), default=0, help="torch CPU threads (0 = default)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for report.json and figures (default: print only)",
    )
    p.add_argument("--no-progress", action="store_true")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="Evaluate human alignment (ClickMe, synthetic twin)",
        description="Human alignment with the ClickMe harmonization metric (Fel et al. 2022), "
        "on ClickMe files or on a synthetic twin exported from a clip store. See docs/eval.md.",
    )
    esub = p.add_subparsers(dest="eval_command", metavar="<eval command>", required=True)

    c = esub.add_parser(
        "clickme",
        help="score checkpoints on ClickMe files",
        description="Score models on ClickMe TFRecord shards / npz files. "
        "Encoders: --probe-data gives labelled images for the linear probe; "
        "without it only the label-free embedding saliency is scored.",
    )
    c.add_argument("--data", nargs="+", required=True, help="ClickMe files or folders (test)")
    c.add_argument(
        "--probe-data",
        nargs="+",
        default=None,
        help="labelled ClickMe files or folders to fit the linear probe on",
    )
    _add_model_options(c)
    c.set_defaults(func=run_clickme)

    x = esub.add_parser(
        "twin-export",
        help="export a ClickMe-format twin from a clip store",
        description="Frames of a store -> object crops (256x256), category "
        "labels, 'human' maps from the diagnostic-part masks; train/test split "
        "by held-out clip; optional background-cue shortcut.",
    )
    x.add_argument("store", help="clip store (egosynth render)")
    x.add_argument("--out", type=Path, required=True, help="twin folder")
    x.add_argument(
        "--shortcut",
        type=real(0.0, 1.0),
        default=0.0,
        help="train split: probability that the background tint names the label",
    )
    x.add_argument(
        "--test-shortcut", type=real(0.0, 1.0), default=0.0, help="the same for the test split"
    )
    x.add_argument("--tint", type=real(0.0, 1.0), default=0.5, help="tint strength (0 = no tint)")
    x.add_argument("--eye", type=integer(0, 1), default=0, help="0 left, 1 right")
    x.add_argument("--stride", type=count(), default=2, help="use every n-th frame")
    x.add_argument(
        "--crop",
        type=count(maximum=8192),
        default=None,
        help="fixed crop side in source pixels (default: adaptive, --context)",
    )
    x.add_argument(
        "--context",
        type=real(positive=True, maximum=100.0),
        default=2.5,
        help="adaptive crop side / object bounding-box side",
    )
    x.add_argument("--min-object-px", type=integer(0), default=40)
    x.add_argument("--min-part-px", type=integer(0), default=4)
    x.add_argument(
        "--blur", type=real(0.0, 1000.0), default=6.0, help="human-map blur sigma (256 px units)"
    )
    x.add_argument(
        "--object-weight",
        type=real(0.0),
        default=0.0,
        help="add the whole object mask to the human map with this weight",
    )
    x.add_argument(
        "--part",
        action="append",
        metavar="CATEGORY=PART",
        help="override a category's diagnostic part",
    )
    x.add_argument("--format", choices=("npz", "tfrecord"), default="npz")
    x.add_argument("--max-per-split", type=count(), default=None)
    x.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    x.add_argument(
        "--validation",
        action="store_true",
        help="also hold out the last train clip per scene as validation/ (cued like test)",
    )
    x.add_argument("--no-progress", action="store_true")
    x.set_defaults(func=run_twin_export)

    t = esub.add_parser(
        "twin",
        help="score checkpoints on one or more twins",
        description="Per twin: fit the encoders' linear probes on its train "
        "split, score accuracy and alignment on its test split.",
    )
    t.add_argument("twins", nargs="+", type=Path, help="twin folders (egosynth eval twin-export)")
    _add_model_options(t)
    t.set_defaults(func=run_twin)
    eval_science.register(esub)  # baseline, controls, select, summarize


# --------------------------------------------------------------------------- handlers
def run_twin_export(args: argparse.Namespace) -> int:
    from egosynth.checks import output_dir
    from egosynth.eval.twin import TwinConfig, export_twin

    output_dir(args.out, inputs=[args.store])

    cfg = TwinConfig(
        shortcut=args.shortcut,
        test_shortcut=args.test_shortcut,
        tint=args.tint,
        eye=args.eye,
        stride=args.stride,
        crop=args.crop,
        context=args.context,
        min_object_px=args.min_object_px,
        min_part_px=args.min_part_px,
        blur_sigma=args.blur,
        object_weight=args.object_weight,
        seed=args.seed,
        format=args.format,
        max_per_split=args.max_per_split,
        diagnostic_parts=_parts(args.part),
        validation=args.validation,
    )
    info = export_twin(args.store, args.out, cfg, progress=not args.no_progress)
    for split, s in info["splits"].items():
        print(
            f"{args.out}/{split}: {s['n_images']} images, classes {s['class_counts']}, "
            f"shortcut {s['shortcut']:.2f} (cue agrees with label on "
            f"{s['cue_agreement']:.0%}), scene-label MI {s['scene_label_mi']:.3f} nats"
        )
    print(f"categories: {info['categories']}")
    return 0


# A model named NAME=FOLDER gets this suffix replaced by its training seed (SERIES#SEED, the
# naming egosynth eval summarize groups by).


def _inputs(ds: dict[str, Any]) -> list[str]:
    """The files and folders a dataset entry reads."""
    out: list[str] = []
    for key in ("test", "probe", "twin"):
        v = ds.get(key)
        out += [v] if isinstance(v, str) else list(v or [])
    return out


def _dataset_examples(test, k: int) -> list[int]:
    """Indices of the overlay examples: the first k images (saliency is kept for these)."""
    return list(range(min(k, len(test))))


def _run(args: argparse.Namespace, datasets: list[dict[str, Any]]) -> int:
    import torch

    from egosynth.eval.evaluate import load_split, score_model
    from egosynth.eval.report import (
        format_table,
        plot_alignment_vs_accuracy,
        plot_overlays,
        write_json,
    )

    if args.out is not None:
        from egosynth.checks import output_dir

        given = [p for _, p in _checkpoints(args.checkpoint)]
        output_dir(args.out, inputs=[*given, *(x for ds in datasets for x in _inputs(ds))])
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress
    models = _load_models(_checkpoints(args.checkpoint), args.input_size)
    rows: list[dict[str, Any]] = []
    figures: list[str] = []
    for ds in datasets:
        test = load_split(ds["test"], args.max_images, progress=progress, desc=f"{ds['name']} test")
        test.meta = ds.get("test_meta", [])[: len(test)]
        probe = None
        if ds.get("probe") and any(m.kind == "encoder" for m in models):
            probe = load_split(
                ds["probe"], args.max_images, progress=progress, desc=f"{ds['name']} probe"
            )
        maps: dict[str, Any] = {}
        for model in models:
            n_classes = ds.get("n_classes") or (
                int(max(probe.labels.max(), test.labels.max())) + 1 if probe else None
            )
            scorings = args.score if probe is not None else [s for s in args.score if s != "probe"]
            for scored in score_model(
                model,
                test,
                probe,
                n_classes,
                scorings,
                args.saliency,
                args.batch_size,
                args.examples,
                progress,
            ):
                row = {"dataset": ds["name"], "shortcut": ds.get("shortcut"), **scored.row}
                rows.append(row)
                maps[f"{model.name} {row['scoring']}"] = scored.examples
        if args.out is not None and args.examples > 0:
            idx = _dataset_examples(test, args.examples)
            names = ds.get("categories")
            titles = [names[test.labels[i]] if names else str(test.labels[i]) for i in idx]
            fig = plot_overlays(
                args.out / f"overlays_{ds['name']}.png",
                test.images[idx],
                test.heatmaps[idx],
                maps,
                titles,
            )
            figures.append(str(fig))
    print(format_table(rows))
    if args.out is not None:
        scatter = plot_alignment_vs_accuracy(args.out / "alignment_vs_accuracy.png", rows)
        if scatter is not None:
            figures.append(str(scatter))
        report = {
            "datasets": [{k: v for k, v in ds.items() if k != "test_meta"} for ds in datasets],
            "models": [
                {"name": m.name, "kind": m.kind, "checkpoint": str(p)}
                for m, (_, p) in zip(models, _checkpoints(args.checkpoint), strict=True)
            ],
            "saliency": args.saliency,
            "results": rows,
            "figures": figures,
        }
        path = write_json(args.out / "report.json", report)
        print(f"report: {path}; figures: {', '.join(figures) or 'none'}")
    return 0


def run_clickme(args: argparse.Namespace) -> int:
    ds = {
        "name": "clickme",
        "test": [str(p) for p in args.data],
        "probe": [str(p) for p in args.probe_data] if args.probe_data else None,
    }
    return _run(args, [ds])


def run_twin(args: argparse.Namespace) -> int:
    from egosynth.eval.twin import read_twin_info, read_twin_samples

    datasets = []
    names = [p.name or str(p) for p in args.twins]
    for folder, name in zip(args.twins, names, strict=True):
        info = read_twin_info(folder)
        samples = read_twin_samples(folder)
        datasets.append(
            {
                "name": name if names.count(name) == 1 else str(folder),
                "twin": str(folder),
                "test": str(folder / "test"),
                "probe": str(folder / "train"),
                "categories": info["categories"],
                "n_classes": len(info["categories"]),
                "shortcut": info["splits"]["train"]["shortcut"],
                "test_shortcut": info["splits"]["test"]["shortcut"],
                "splits": info["splits"],
                "test_meta": samples.get("test", []),
            }
        )
    return _run(args, datasets)
