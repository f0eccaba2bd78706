"""`egosynth demo`: the embedded default end to end (pipelines/demo.yaml), then a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

from egosynth.commands.pipeline import add_run_options
from egosynth.config import REPO_ROOT

DEMO_PIPELINE = REPO_ROOT / "pipelines" / "demo.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="Run the embedded default end to end on this machine (render, train, eval)",
        description="Render the committed NeRF bundles (and, as a control, the same rooms' "
        "meshes), check the NeRF clips against the meshes, train slow-feature and predictive "
        "encoders and supervised baselines on the NeRF clips, and score them on the synthetic "
        "ClickMe twin with and without a background shortcut, and on the mesh twin "
        "(pipelines/demo.yaml; finished stages are cached). "
        "Ends with a summary table and the paths of the pictures it wrote.",
    )
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from egosynth.commands.pipeline import parse_overrides
    from egosynth.pipeline import load_pipeline, pipeline_env, run_pipeline

    t0 = time.perf_counter()
    overrides = parse_overrides(args.set)
    results = run_pipeline(
        DEMO_PIPELINE, overrides, force=args.force, jobs=args.jobs, warm=not args.cold
    )
    workdir = Path(pipeline_env(load_pipeline(DEMO_PIPELINE, overrides), DEMO_PIPELINE)["workdir"])
    report = workdir / "eval" / "report.json"
    print(
        f"\negosynth demo finished in {time.perf_counter() - t0:.0f} s "
        f"({sum(r.status == 'ran' for r in results)} stages ran, "
        f"{sum(r.status == 'skipped' for r in results)} cached)\n"
    )
    if report.is_file():
        from egosynth.eval.report import format_table
        from egosynth.readers import read_json_object

        print(format_table(read_json_object(report, "eval report").get("results", [])))
    fidelity = workdir / "fidelity.json"
    if fidelity.is_file():
        from egosynth.readers import read_json_object

        print("\nNeRF clips against the mesh ground truth at the same poses (fidelity.json):")
        for row in read_json_object(fidelity, "fidelity report").get("scenes", []):
            print(f"  {row['scene']}: PSNR {row['psnr_db']:.2f} dB, SSIM {row['ssim']:.3f}, "
                  f"depth error {100 * row['depth_median_rel_error']:.1f} %, "
                  f"instance IoU {row['instance_iou']:.3f}")  # fmt: skip
    pictures = sorted(p for p in workdir.rglob("*") if p.suffix in (".png", ".gif", ".mp4"))
    print("\npictures:")
    for p in pictures:
        print(f"  {p}")
    return 0
