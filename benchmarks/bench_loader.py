"""Read the same windows three ways, in one run, and print the rates and their ratios.

(a) egosynth.data.WindowLoader over a clip store (Zarr; rgb as the store writes it by default,
    raw frames with a crc32c each, or with --rgb lz4 as Blosc-lz4 + crc32c chunks),
(b) raw numpy memmaps of the same frames (no decoding: the upper bound),
(c) mp4 files of the same frames (H.264, both eyes side by side), decoded with PyAV: for each
    window, seek to the keyframe before its first frame and decode forward.

Every path produces the same batch: rgb (B, T, E, 3, H, W) uint8 (a channels-last view) for
the same window list in the same (seed, epoch) order. Frames are photos (scikit-image's
astronaut / coffee / chelsea) panned across, the right eye offset by a few pixels, so the
codecs see natural-image content. Targets (issue 6): (a) >= 0.5x (b) and >= 3x (c).
(a) is the loader as configured by default: it reads (and for lz4 decodes) a batch on its
decode threads (one per CPU, up to 4); (a1) is the same loader held to one decode thread, the
column to compare with the single-threaded memmap copy.

    .venv/bin/python benchmarks/bench_loader.py            # ~1 min on 2 cores
    EGOSYNTH_STORE_FAST=0 .venv/bin/python benchmarks/bench_loader.py   # (a) through plain zarr

The store's fast path (egosynth/store/_fast.py: raw frames mapped and checked once, Blosc chunks
decoded into the batch) is on unless EGOSYNTH_STORE_FAST=0; comparing the two runs (and the two
with --rgb lz4 --cache-mb 32, which decodes every epoch) shows what it buys.

As in training, each loader lives across epochs: epoch 0 starts cold (store not yet opened,
empty cache, cache memory fresh from the OS), later epochs reuse what the cache kept. Per epoch
the paths read that epoch's windows in turn; a row keeps the best of --repeat steady epochs
(>= 1) of each path, "cold" is (a)/(b) in epoch 0 and "hits" the cache hit rate of the last
epoch. Raw rgb frames never enter the loader's cache (the page cache serves them, as for the
memmap). With --rgb lz4 and the default 256 MiB cache the decoded frames fit (steady epochs
mostly copy from the cache); `--cache-mb 32` then makes every epoch decode-bound.
--chunk-frames and --clevel (0 = Blosc stores the bytes uncompressed) set the store's layout.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from egosynth.data import WindowLoader
from egosynth.data.synthetic import prepare
from egosynth.store import RGB_LAYOUTS
from egosynth.store import _fast as fast_path


def photo_frames(n: int, height: int, width: int, k: int) -> np.ndarray:
    """(n, 2, H, W, 3) uint8: a camera panning over a photo; eye 1 sees it 4 px to the side."""
    from skimage import data, transform

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    photo = photos[k % len(photos)]
    scale = 2 * height / photo.shape[0]
    img = (transform.rescale(photo, scale, channel_axis=2, anti_aliasing=True) * 255).astype(
        np.uint8
    )
    out = np.empty((n, 2, height, width, 3), np.uint8)
    span_y, span_x = img.shape[0] - height, img.shape[1] - width - 4
    for t in range(n):
        y = int(span_y * (0.5 + 0.5 * np.sin(0.05 * t + k)))
        x = int(span_x * (0.5 + 0.5 * np.cos(0.07 * t + 2 * k)))
        out[t, 0] = img[y : y + height, x : x + width]
        out[t, 1] = img[y : y + height, x + 4 : x + 4 + width]
    return out


def build(root: Path, args: argparse.Namespace) -> tuple[Path, list[np.ndarray], list[Path]]:
    """Write the store, the .npy files and the mp4 files of the same clips."""
    import av

    store = root / "bench.zarr"
    prepare(store)
    memmaps, mp4s = [], []
    for k in tqdm(range(args.clips), desc="writing clips (zarr, npy, mp4)"):
        rgb = photo_frames(args.frames, args.height, args.width, k)
        z = np.zeros(rgb.shape[:-1], np.uint8)  # rgb only: other image arrays stay empty
        write_clip(store, k, args, {"rgb": rgb, "depth": z, "instance": z, "part": z})
        npy = root / f"c{k:05d}.npy"
        np.save(npy, rgb)
        memmaps.append(np.load(npy, mmap_mode="r"))
        mp4 = root / f"c{k:05d}.mp4"
        with av.open(str(mp4), "w") as out:
            stream = out.add_stream("libx264", rate=Fraction(10))
            stream.width, stream.height, stream.pix_fmt = 2 * args.width, args.height, "yuv420p"
            stream.options = {"crf": "18", "g": str(args.gop), "preset": "fast"}
            for t in range(args.frames):
                sbs = np.concatenate([rgb[t, 0], rgb[t, 1]], axis=1)  # eyes side by side
                for packet in stream.encode(av.VideoFrame.from_ndarray(sbs, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        mp4s.append(mp4)
    return store, memmaps, mp4s


def write_clip(store: Path, k: int, args: argparse.Namespace, frames: dict) -> None:
    """One clip through the store's writer, with the benchmark's chunk and Blosc level."""
    from egosynth.data.synthetic import FPS, pattern_meta
    from egosynth.store import ClipWriter

    n, h, w = args.frames, args.height, args.width
    attrs = {"scene": "synthetic", "seed": k, "fps": FPS}
    cw = ClipWriter(
        store, f"c{k:05d}", n, h, w, attrs, args.chunk_frames, clevel=args.clevel, rgb=args.rgb
    )
    for t0 in range(0, n, cw.chunk_frames):
        cw.write_frames(t0, {name: v[t0 : t0 + cw.chunk_frames] for name, v in frames.items()})
    cw.write_meta(*pattern_meta(k, n))
    cw.complete()


def plan(loader: WindowLoader) -> list[tuple[np.ndarray, np.ndarray]]:
    """(clip positions, starts) of each batch of the epoch, in the loader's order."""
    out = []
    for lo in range(0, len(loader.index), loader.batch_size):
        ids = loader.order()[lo : lo + loader.batch_size]
        out.append(loader.index.locate(ids))
    return out


def batch_buffer(b: int, args: argparse.Namespace) -> np.ndarray:
    return np.empty((b, args.length, 2, args.height, args.width, 3), np.uint8)


def read_memmap(memmaps: list[np.ndarray], batches, args) -> Iterator[np.ndarray]:
    step = args.skip
    for clips, starts in batches:
        out = batch_buffer(len(clips), args)
        for i, (c, s) in enumerate(zip(clips, starts, strict=True)):
            out[i] = memmaps[c][s : s + (args.length - 1) * step + 1 : step]
        yield out.transpose(0, 1, 2, 5, 3, 4)


def read_mp4(mp4s: list[Path], batches, args) -> Iterator[np.ndarray]:
    import av

    containers = [av.open(str(p)) for p in mp4s]
    try:
        for clips, starts in batches:
            out = batch_buffer(len(clips), args)
            for i, (c, s) in enumerate(zip(clips, starts, strict=True)):
                out[i] = decode_window(containers[c], int(s), args)
            yield out.transpose(0, 1, 2, 5, 3, 4)
    finally:
        for c in containers:
            c.close()


def decode_window(container, start: int, args: argparse.Namespace) -> np.ndarray:
    """Frames start, start + skip, ... of one clip: seek to the keyframe before, decode on."""
    stream = container.streams.video[0]
    tb = stream.time_base
    wanted = {start + j * args.skip: j for j in range(args.length)}
    last = max(wanted)
    container.seek(int(Fraction(start, 10) / tb), stream=stream, backward=True)
    out = np.empty((args.length, 2, args.height, args.width, 3), np.uint8)
    for frame in container.decode(stream):
        t = round(float(frame.pts * tb) * 10)
        if t in wanted:
            sbs = frame.to_ndarray(format="rgb24")
            out[wanted[t], 0], out[wanted[t], 1] = sbs[:, : args.width], sbs[:, args.width :]
        if t >= last:
            break
    return out


def rate(make: Callable[[], Iterator[np.ndarray]], n_windows: int) -> float:
    """Windows per second of one pass over an iterator of batches.

    `make()` runs before the clock starts (it builds a fresh loader: cold cache, no store
    opened yet; opening the store and its clips happens inside the timed pass).
    """
    batches = make()
    t0 = time.perf_counter()
    total = sum(batch.shape[0] for batch in batches)
    dt = time.perf_counter() - t0
    assert total == n_windows, (total, n_windows)
    return n_windows / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--length", type=int, default=8, help="frames per window (T)")
    p.add_argument("--strides", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--skip", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--block", type=int, default=8, help="windows kept together by the shuffle")
    p.add_argument(
        "--cache-mb",
        type=int,
        default=256,
        help="loader chunk cache (MiB; the loader's "
        "default; 32 is smaller than the 96 MiB of frames: decode-bound)",
    )
    p.add_argument("--chunk-frames", type=int, default=None, help="store chunk (default: store's)")
    p.add_argument("--clevel", type=int, default=5, help="Blosc level of the store (0: stored)")
    p.add_argument(
        "--rgb", choices=RGB_LAYOUTS, default="raw", help="the store's rgb layout (default raw)"
    )
    p.add_argument(
        "--decode-threads", type=int, default=None, help="(a)'s decode threads (default: auto)"
    )
    p.add_argument("--repeat", type=int, default=3, help="passes per path; the best is kept")
    p.add_argument("--gop", type=int, default=16, help="mp4 keyframe interval (frames)")
    p.add_argument("--mp4-batches", type=int, default=6, help="batches timed for mp4 (slow)")
    p.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp dir)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store, memmaps, mp4s = build(Path(tmp), args)
        rgb_mb = sum(m.nbytes for m in memmaps) / 2**20
        store_mb = sum(f.stat().st_size for f in store.rglob("*") if f.is_file()) / 2**20
        mp4_mb = sum(f.stat().st_size for f in mp4s) / 2**20
        print(
            f"{args.clips} clips x {args.frames} stereo frames {args.height}x{args.width}, "
            f"rgb {'raw frames' if args.rgb == 'raw' else f'Blosc lz4 clevel {args.clevel}'}, "
            f"rgb only; on disk: npy {rgb_mb:.0f} MiB, store {store_mb:.0f} MiB, mp4 "
            f"{mp4_mb:.1f} MiB. Windows of T={args.length}, skip {args.skip}, batch "
            f"{args.batch}, (seed 0, epoch 0) order, one process, cache {args.cache_mb} MiB, "
            f"store fast path {'on' if fast_path.enabled() else f'OFF ({fast_path.SWITCH}=0)'}."
        )
        for m in memmaps:  # page cache warm for every path (the store was just written too)
            m.sum()
        print(
            f"{'stride':>6} {'shuffle':>8} {'windows':>7} {'(a) loader':>11} {'(a1) 1 thr':>9} "
            f"{'(b) memmap':>11} {'(c) mp4':>9} {'(a)/(b)':>8} {'(a1)/(b)':>8} {'cold':>8} "
            f"{'(a)/(c)':>8} "
            f"{'hits':>5}   (windows/s)"
        )
        for stride in args.strides:
            for block in (1, args.block):
                row(store, memmaps, mp4s, args, stride, block)
        print("targets: (a)/(b) >= 0.5, (a)/(c) >= 3")


def row(store: Path, memmaps, mp4s, args: argparse.Namespace, stride: int, block: int) -> None:
    def make_loader(threads: int | None = args.decode_threads) -> WindowLoader:
        return WindowLoader(
            store,
            length=args.length,
            stride=stride,
            skip=args.skip,
            seed=0,
            block=block,
            batch_size=args.batch,
            fields=("rgb",),
            cache_bytes=args.cache_mb << 20,
            decode_threads=threads,
        )

    # As in training: each loader lives across epochs (its cache warm, its evicted buffers
    # reused); epoch 0 starts cold. Per epoch, the three paths read that epoch's windows in
    # turn; the best steady epoch (>= 1) of each path is kept (busy machine).
    single, multi = make_loader(1), make_loader()
    n = len(multi.index)
    r_a = r_1 = r_b = cold = hits = 0.0
    for epoch in range(args.repeat + 1):
        single.set_epoch(epoch)
        multi.set_epoch(epoch)
        batches = plan(multi)
        multi.reader.cache.hits = multi.reader.cache.misses = 0
        one = rate(lambda: (b["rgb"] for b in single), n)
        got = rate(lambda: (b["rgb"] for b in multi), n)
        mm = rate(lambda: read_memmap(memmaps, batches, args), n)  # noqa: B023
        if epoch == 0:
            cold = got / mm
            few = batches[: args.mp4_batches]  # the first batches of the same order
            r_c = rate(lambda: read_mp4(mp4s, few, args), sum(len(c) for c, _ in few))  # noqa: B023
            continue
        r_a, r_1, r_b = max(r_a, got), max(r_1, one), max(r_b, mm)
        hits = hit_rate(multi)
    print(
        f"{stride:>6} {'block ' + str(block):>8} {n:>7} {r_a:>11.0f} {r_1:>9.0f} {r_b:>11.0f} "
        f"{r_c:>9.0f} {r_a / r_b:>7.2f}x {r_1 / r_b:>7.2f}x {cold:>7.2f}x {r_a / r_c:>7.1f}x "
        f"{hits:>5.0%}"
    )


def hit_rate(loader: WindowLoader) -> float:
    c = loader.reader.cache
    return c.hits / max(1, c.hits + c.misses)


if __name__ == "__main__":
    main()
