"""`egosynth train`: train slow-feature / predictive-coding encoders on a clip store.

Only argparse at module level: torch, torchvision, lightly and zarr are imported when the
command runs. User documentation: docs/train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from egosynth.checks import count, integer, real

DEFAULT_STORE = "outputs/demo.zarr"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _size(text: str) -> tuple[int, int] | None:
    if text.lower() in ("native", "none"):
        return None
    vals = _ints(text)
    if len(vals) != 2 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT (e.g. 64x48), got {text!r}")
    return vals[0], vals[1]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected 0 (off) or a fraction in (0, 1], got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="Train slow-feature / predictive-coding encoders on clips",
        description="Train a ResNet-family encoder (and/or a PredNet) on windows of stereo "
        "frames from a clip store, with the chosen objectives combined: slow (slowness under "
        "SFA constraints, stereo positives), latent (CPC-style InfoNCE k frames ahead), pixel "
        "(PredNet next-frame prediction). Logs TensorBoard scalars and diagnostics (eta, "
        "effective rank, next-frame error vs copy-last-frame, linear probe of object category "
        "on held-out clips) and writes weights-only checkpoints. Multi-GPU: run under "
        "`torchrun --nproc-per-node N -m egosynth.cli train ...`. See docs/train.md.",
    )
    p.add_argument("store", nargs="?", default=DEFAULT_STORE, help=f"clip store ({DEFAULT_STORE})")
    p.add_argument("--out", type=Path, default=Path("outputs/train/run"), help="run folder")
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        help="slow | latent | pixel | predictive (= latent,pixel); repeat or comma-separate "
        "to combine (default: slow)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=count(), default=200)
    g.add_argument(
        "--batch-size", type=count(maximum=65_536), default=8, help="windows per batch (per rank)"
    )
    g.add_argument("--window", type=count(maximum=100_000), default=8, help="frames per window")
    g.add_argument("--stride", type=count(), default=4, help="frames between window starts")
    g.add_argument("--skip", type=count(), default=1, help="frames between a window's frames")
    g.add_argument(
        "--workers", type=integer(0, 1024), default=0, help="DataLoader worker processes"
    )
    g.add_argument(
        "--threads", type=integer(0, 4096), default=0, help="torch CPU threads (0 = default)"
    )
    g.add_argument("--size", type=_size, default=(64, 48), help="WxH to resize to, or native")
    g.add_argument("--fovea", type=_fraction, default=0.0,
                   help="train on foveal crops around each eye's fixation point, this fraction "
                   "of the frame height tall, resized to --size (0 = whole frames)")  # fmt: skip
    g.add_argument("--augment", default="",
                   help="per-frame training augmentations, a comma list of crop (random "
                   "resized crop + flip) and colour (jitter, grey); default none")  # fmt: skip
    g.add_argument("--shuffle-time", action="store_true",
                   help="ablation: each window's frames are drawn at random from the whole "
                   "batch (the same frames, no temporal order; docs/science.md)")  # fmt: skip
    g.add_argument("--lr", type=real(positive=True, maximum=1e3), default=1e-3)
    g.add_argument("--weight-decay", type=real(0.0), default=1e-4)
    g.add_argument("--warmup", type=integer(0), default=10, help="linear warm-up steps")
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    g.add_argument("--grad-clip", type=real(0.0), default=5.0, help="0 = off")
    g.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default="auto")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=integer(0, 2**63 - 1), default=0)
    g.add_argument("--deterministic", action="store_true", help="deterministic torch kernels")
    g.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from a checkpoint (default: newest in OUT)")  # fmt: skip
    e = p.add_argument_group("encoder")
    e.add_argument("--arch", default="resnet18", help="resnet10|resnet18|resnet34|resnet50")
    e.add_argument(
        "--width", type=count(maximum=4096), default=16, help="channels of the first stage"
    )
    e.add_argument("--layers", type=_ints, default=None, help="blocks per stage, e.g. 1,1,1")
    e.add_argument("--embed-dim", type=count(maximum=65_536), default=64)
    e.add_argument("--eyes", choices=("left", "right", "both"), default="both")
    e.add_argument("--fusion", choices=("mean", "concat"), default="mean")
    o = p.add_argument_group("objectives")
    o.add_argument("--constraint", choices=("penalty", "whiten"), default="whiten",
                   help="SFA constraints: whitening, or mean/var/cov penalties")  # fmt: skip
    o.add_argument("--stereo-weight", type=real(0.0), default=25.0, help="0 = no stereo positives")
    o.add_argument("--context", choices=("gru", "tcn"), default="gru")
    o.add_argument("--horizons", type=_ints, default=(1, 3), help="frames ahead, e.g. 1,3")
    o.add_argument("--temperature", type=real(positive=True), default=0.1)
    o.add_argument("--pixel-channels", type=_ints, default=(3, 16, 32),
                   help="PredNet channels per layer (first = 3)")  # fmt: skip
    d = p.add_argument_group("logging")
    d.add_argument("--log-every", type=count(), default=10)
    d.add_argument("--ckpt-every", type=count(), default=100)
    d.add_argument("--diag-every", type=integer(0), default=100, help="0 = no diagnostics")
    d.add_argument("--validation", action="store_true",
                   help="score diagnostics on validation clips (the last training clip of each "
                   "scene, then not trained on) instead of the held-out clips: for choosing "
                   "settings without looking at held-out data")  # fmt: skip
    d.add_argument(
        "--probe-windows", type=count(maximum=100_000), default=32, help="windows per probe split"
    )
    d.add_argument("--no-tensorboard", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from egosynth.checks import output_dir

    # Checked before any work: a run that cannot write its checkpoints must not train first.
    output_dir(args.out, inputs=[args.store])
    if args.resume not in (None, "latest"):  # a refused or unreadable checkpoint: before work
        from egosynth.train.checkpoint import load_checkpoint

        load_checkpoint(args.resume)
    summary = run_from_args(args)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's)
        print(json.dumps(summary, indent=1, sort_keys=True), file=sys.stdout)
    return 0


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig the command line describes."""
    from egosynth.train.config import TrainConfig
    from egosynth.train.encoders import EncoderConfig
    from egosynth.train.losses import SlowConfig

    enc = EncoderConfig(
        arch=args.arch,
        width=args.width,
        layers=args.layers,
        embed_dim=args.embed_dim,
        eyes=args.eyes,
        fusion=args.fusion,
    )
    slow = SlowConfig(constraint=args.constraint, stereo=args.stereo_weight)
    return TrainConfig(
        objectives=tuple(args.objective or ("slow",)),
        steps=args.steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        schedule=args.schedule,
        grad_clip=args.grad_clip,
        amp=args.amp,
        device=args.device,
        seed=args.seed,
        size=args.size,
        fovea=args.fovea,
        augment=args.augment,
        shuffle_time=getattr(args, "shuffle_time", False),
        deterministic=args.deterministic,
        encoder=enc,
        slow=slow,
        latent_context=args.context,
        horizons=tuple(args.horizons),
        temperature=args.temperature,
        pixel_channels=tuple(args.pixel_channels),
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        diag_every=args.diag_every,
        tensorboard=not args.no_tensorboard,
        progress=not args.no_progress,
    )


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """`egosynth train`: store -> train/held-out split -> Trainer.fit -> summary."""
    import torch

    from egosynth.data import LoaderConfig
    from egosynth.errors import EgosynthError
    from egosynth.train.data import open_store, probe_from_store, split_clips, store_loader
    from egosynth.train.fovea import FOVEA_FIELDS
    from egosynth.train.loop import Trainer, pick_device, summarise

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    store = open_store(args.store)
    ids = store.clip_ids()
    if not ids:
        raise EgosynthError(f"{args.store}: no complete clips")
    scene_of = {c: store.clip(c).scene for c in ids}
    train_ids, held_ids = split_clips(ids, [scene_of[c] for c in ids])
    if getattr(args, "validation", False):
        # Choose settings on validation clips carved out of the training clips by the same
        # rule; the held-out clips are then neither trained on nor scored.
        train_ids, held_ids = split_clips(train_ids, [scene_of[c] for c in train_ids])
        if not held_ids:
            raise EgosynthError(
                f"{args.store}: --validation needs a scene with >= 3 clips (train, validation, "
                "held out)"
            )
    device = pick_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    fields = ("rgb", *(FOVEA_FIELDS if getattr(args, "fovea", 0.0) > 0 else ()))
    loader_cfg = LoaderConfig(
        length=args.window, stride=args.stride, skip=args.skip, fields=fields,
        batch_size=args.batch_size, seed=args.seed,
    )  # fmt: skip
    data = store_loader(args.store, train_ids, device, loader_cfg, args.workers)
    probe = None
    if cfg.diag_every:
        probe = probe_from_store(
            args.store, train_ids, held_ids, args.window, args.probe_windows, size=cfg.size
        )
    trainer = Trainer(cfg, data, out=args.out, probe=probe)
    trainer.fit(resume=args.resume)
    summary = summarise(trainer)
    scored = "validation_clips" if getattr(args, "validation", False) else "heldout_clips"
    summary.update({"train_clips": train_ids, scored: held_ids})
    return summary
