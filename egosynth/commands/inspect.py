"""`egosynth inspect`: summarise a clip store (and validate its checksums)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="Summarise a clip store (and validate its checksums)",
        description="Print a table of the clips in a store: scene, frames, size on disk and "
        "completeness. --validate checks every clip the store names (clip folders, root "
        "index, consolidated metadata): its metadata, every array's shape, and every chunk "
        "that must exist: present, of the right size, its crc32c checksum verified.",
    )
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--validate", action="store_true", help="read every chunk, verify checksums")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _rgb_codec(clip: Any) -> str:  # an egosynth.store.Clip
    """rgb's layout ("raw" frames or "lz4" chunks); "-" while a writer has not made it yet
    (or when it is missing or corrupt: --validate says which)."""
    from egosynth.errors import EgosynthError

    try:
        return clip.codec("rgb")
    except (KeyError, EgosynthError):
        return "-"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from egosynth.errors import EgosynthError
    from egosynth.store import ClipStore

    store = ClipStore(args.store, consolidated=False)  # the truth, not the last snapshot
    a = store.attrs
    listed = store.listed_clips()  # every clip named anywhere, corrupt ones included
    ids = list(listed)
    print(
        f"{args.store}: schema {a.get('schema_version')}, set {a.get('set_name')!r}, "
        f"fingerprint {a.get('fingerprint')}, store_status {a.get('store_status')}"
    )
    rows = [("clip", "scene", "frames", "size", "WxH", "fps", "rgb", "status")]
    total_frames, total_bytes, n_complete = 0, 0, 0
    for cid in ids:
        try:
            if listed[cid] is not None:
                raise EgosynthError(listed[cid])
            clip = store.clip(cid, allow_incomplete=True)
        except EgosynthError:  # --validate names the problem
            rows.append((cid, "?", "?", _size(store.nbytes_stored(cid)), "?", "?", "-", "corrupt"))
            continue
        c = clip.attrs
        nbytes = store.nbytes_stored(cid)
        total_bytes += nbytes or 0
        if clip.complete:
            n_complete += 1
            total_frames += c["n_frames"] if isinstance(c.get("n_frames"), int) else 0
        rows.append(
            (
                cid,
                str(c.get("scene", "?")),
                str(c.get("n_frames", "?")),
                _size(nbytes),
                f"{c.get('width', '?')}x{c.get('height', '?')}",
                f"{c.get('fps', '?')}",
                _rgb_codec(clip),
                str(c.get("status", "?")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"{n_complete}/{len(ids)} clips complete, {total_frames} stereo frames, "
        f"{_size(total_bytes)} on disk"
    )
    if not args.validate:
        return 0
    with tqdm(
        total=store.n_chunks(), unit="chunk", desc="validate", disable=args.no_progress
    ) as bar:
        problems = store.validate(on_chunk=lambda: bar.update(1))
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 1
    print(
        f"valid: every chunk of {n_complete} clips present, its size and checksum verified; "
        "every array's shape checked"
    )
    return 0
