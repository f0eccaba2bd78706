"""`egosynth eval`: human alignment on ClickMe and on the synthetic twin (docs/eval.md).

    egosynth eval clickme --data clickme/val --checkpoint run/checkpoints/step_200.pt
    egosynth eval twin-export outputs/demo.zarr --out twins/s1 --shortcut 1
    egosynth eval baseline twins/s1 --out baselines/s1.pt [--harmonize 1]
    egosynth eval twin twins/s0 twins/s1 --checkpoint a.pt --checkpoint b.pt --out report/
    egosynth eval controls twins/s0 --out controls/          (docs/science.md)
    egosynth eval select twins/s1 --checkpoint lambdas/ --out selection.json
    egosynth eval summarize report/ controls/ --out summary/

Nothing heavy is imported at module level (torch, zarr are imported by the handlers).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from egosynth.checks import count, integer, real
from egosynth.errors import EgosynthError

# egosynth.eval.saliency.METHODS, listed here so that --help does not import torch.
SALIENCY_METHODS = ("gradient", "saliency", "integrated_gradients", "smoothgrad",
                    "input_x_gradient", "guided_backprop")  # fmt: skip


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


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
        help="JSON list of published points {name, accuracy, alignment} to mark on the "
        "alignment-vs-accuracy figure",
    )
    m.set_defaults(func=run_summarize)


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
SEED_SUFFIX = "#*"


def _checkpoints(values: list[str]) -> list[tuple[str | None, Path]]:
    """(name, file) pairs; a folder stands for every *.pt under it (sorted).

    Sweeps write one checkpoint per seed into a folder: `NAME=FOLDER` names them NAME#<seed>,
    a plain FOLDER keeps each checkpoint's own name.
    """
    out: list[tuple[str | None, Path]] = []
    for v in values:
        name, sep, path = v.partition("=")
        named = bool(sep and name and not Path(v).exists())
        target = Path(path) if named else Path(v)
        if target.is_dir():
            files = sorted(target.rglob("*.pt"))
            if not files:
                raise EgosynthError(f"--checkpoint = {v!r}: no *.pt checkpoint in this folder")
            out += [((name + SEED_SUFFIX) if named else None, f) for f in files]
        else:
            out.append((name if named else None, target))
    return out


def _load_models(given: list[tuple[str | None, Path]], input_size: int | None) -> list:
    from egosynth.eval.evaluate import model_facts
    from egosynth.eval.probe import load_model

    models = []
    for i, (name, path) in enumerate(given):
        m = load_model(path, input_size, name)
        if m.name.endswith(SEED_SUFFIX):
            m.name = m.name[: -len(SEED_SUFFIX)] + f"#{model_facts(m).get('seed', i)}"
        models.append(m)
    return models


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
    from egosynth.eval.summary import markdown, read_reports, write_summary
    from egosynth.readers import read_json

    reference = []
    if args.reference is not None:
        reference = read_json(args.reference, "reference points")
        if not isinstance(reference, list) or not all(
            isinstance(r, dict) and {"accuracy", "alignment"} <= set(r) for r in reference
        ):
            raise EgosynthError(
                f"{args.reference}: expected a list of {{name, accuracy, alignment}} objects"
            )
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
