"""Training throughput: steps/s and the fraction of step time spent waiting for data.

Runs the same short training (objectives slow + latent + pixel) side by side in one process,
with the streaming loader (egosynth.data) reading in the training process (workers = 0), the
same reading 2 batches ahead in a thread (workers = 0, prefetch = 2), and DataLoader worker
processes (workers = 2), and prints steps/s and the data-wait fraction (target <= 10 %) of
each.

    .venv/bin/python benchmarks/bench_train.py [--store outputs/demo.zarr] [--steps 20]

Without a store at --store, the embedded default scene set is rendered in-process (mesh
backend, no Ray) at 64x48 into a temporary folder first.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def render_default(folder: Path, width: int, height: int) -> Path:
    """The default scene set (2 scenes x 2 clips) at a small resolution, in-process."""
    import yaml

    from egosynth.config import DEFAULT_SCENE_SET, load_scene_set
    from egosynth.render_clip import render_set

    data = yaml.safe_load(Path(DEFAULT_SCENE_SET).read_text())
    base = Path(DEFAULT_SCENE_SET).parent
    data["scenes"] = [str((base / s).resolve()) for s in data["scenes"]]
    data["resolution"] = [width, height]
    data["output"] = str(folder / "bench.zarr")
    cfg = folder / "bench.yaml"
    cfg.write_text(yaml.safe_dump(data))
    sset = load_scene_set(cfg)
    path = folder / "bench.zarr"
    return render_set(sset, path)


def run(
    store: str, workers: int, prefetch: int, steps: int, size: tuple[int, int]
) -> dict[str, float]:
    import torch

    from egosynth.data import LoaderConfig
    from egosynth.train.config import TrainConfig
    from egosynth.train.data import open_store, split_clips, store_loader
    from egosynth.train.encoders import EncoderConfig
    from egosynth.train.loop import Trainer

    s = open_store(store)
    ids = s.clip_ids()
    train, _ = split_clips(ids, [s.clip(c).scene for c in ids])
    loader_cfg = LoaderConfig(
        length=8, stride=2, batch_size=8, seed=0, fields=("rgb",), prefetch=prefetch
    )
    data = store_loader(store, train, torch.device("cpu"), loader_cfg, workers)
    cfg = TrainConfig(
        objectives=("slow", "latent", "pixel"),
        steps=steps,
        size=size,
        encoder=EncoderConfig(width=8, layers=(1, 1), embed_dim=32),
        pixel_channels=(3, 8, 16),
        diag_every=0,
        ckpt_every=0,
        tensorboard=False,
        progress=False,
    )
    trainer = Trainer(cfg, data)
    t0 = time.perf_counter()
    hist = trainer.fit()
    wall = time.perf_counter() - t0
    # The first step pays one-off costs (worker start-up, allocator warm-up): skip it.
    rec = [h for h in hist if "loss" in h][1:]
    wait = sum(h["time/data_fraction"] * h["time/step_s"] for h in rec)
    total = sum(h["time/step_s"] for h in rec)
    return {"steps_per_s": len(rec) / total, "data_fraction": wait / total, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="outputs/demo.zarr")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", default="64x48", help="training resolution WxH")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        store = a.store
        if not Path(store).exists():
            t0 = time.perf_counter()
            store = str(render_default(Path(tmp), 128, 96))
            print(f"rendered the default scene set at 128x96 in {time.perf_counter() - t0:.1f} s")
        print(f"store {store}; {a.steps} steps; train at {a.size}; torch threads {a.threads}")
        arms = {"0 workers": (0, 0), "0 workers, prefetch 2": (0, 2), "2 workers": (2, 0)}
        results = {name: run(store, w, p, a.steps, size) for name, (w, p) in arms.items()}
    print(f"{'loader':>22} {'steps/s':>9} {'data wait':>10}")
    for name, r in results.items():
        print(f"{name:>22} {r['steps_per_s']:>9.2f} {100 * r['data_fraction']:>9.1f}%")
    r0 = results["0 workers"]
    for name in ("0 workers, prefetch 2", "2 workers"):
        r = results[name]
        print(
            f"{name} vs 0 workers: {r['steps_per_s'] / r0['steps_per_s']:.2f}x steps/s; "
            f"data wait {100 * r['data_fraction']:.1f}% (target <= 10%)"
        )


if __name__ == "__main__":
    main()
