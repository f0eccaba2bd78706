"""The bake of a NeRF bundle: plain arrays in the bundle, read and written safely.

`egosynth scenes bake` derives, from the bundle's own field (never from the mesh ground truth):

- a **density grid**: ln(density) of the field on a regular grid over the scene box, in
  nerfstudio's model frame (the frame the field lives in): guided and baked rendering march
  through it in place of nerfacto's proposal networks;
- a **sparse colour grid** on the same grid points: the field's colour at every grid point
  that carries compositing weight for rays from the scene's free space, seen along the mean
  direction those rays came from (baked rendering looks colour up here instead of running
  the field).

Files, next to bundle.json::

    <bundle>/bake.npz    log_density_q (R, R, R) uint8: ln(density) quantised linearly over
                         log_density_range (2,) float32 [lo, hi] (lower values clipped),
                         bounds (2, 3) float32: the grid box (both grids span it),
                         colour_resolution (1,) int32: C, the colour grid's points per axis,
                         colour_mask (ceil(C³ / 8),) uint8: numpy.packbits of the x-major
                         (C, C, C) mask of colour-grid points that hold a colour,
                         colour (N, 3) uint8: their colours, in mask order — a zip of .npy
                         files written with fixed timestamps (same inputs -> same bytes),
                         read with allow_pickle=False
    <bundle>/bake.json   format version, sha256 of weights.pt (a stale bake is detected),
                         sha256 of bake.npz (a corrupt one is detected), settings and stats

Nothing here imports nerfstudio or torch; building a bake lives in egosynth.nerf.bake.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.nerf.bundle import WEIGHTS, BundleError
from egosynth.readers import check_inside, read_bytes, read_json_object

BAKE_NPZ = "bake.npz"
BAKE_JSON = "bake.json"
BAKE_FORMAT = "egosynth-nerf-bake"
BAKE_VERSION = 3  # 1: a proxy surface with vertex colours; 2: float16 density, one resolution
# The uint8 density grid keeps ln(density) between the field's own extremes, clipped to a
# window of LN_DENSITY_SPAN e-folds whose top is where a bin of a march across the box is
# opaque anyway (optical depth 50 in 1/128 of the box diagonal): denser points cannot render
# differently, and LN_DENSITY_SPAN below that, a ray's optical depth across the whole box is
# < 0.01. 255 levels: a step <= 0.063 (6 % in density). Committed rooms: [-9.0, 7.0].
LN_DENSITY_SPAN = 16.0
OPAQUE_BIN_DEPTH, BINS_PER_DIAGONAL = 50.0, 128
# name -> (dtype, ndim, size of the last axis or None)
_ARRAYS = {
    "log_density_q": (np.uint8, 3, None),
    "log_density_range": (np.float32, 1, 2),
    "bounds": (np.float32, 2, 3),
    "colour_resolution": (np.int32, 1, 1),
    "colour_mask": (np.uint8, 1, None),
    "colour": (np.uint8, 2, 3),
}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so a bake is byte-for-byte reproducible


class StaleBake(BundleError):
    """The bake was made from other weights than the bundle's current weights.pt."""


@dataclass
class Baked:
    """A bundle's density grid and sparse colour grid, in nerfstudio's model frame."""

    log_density: NDArray[np.float32]  # (R, R, R) ln(density) at grid points, x-major
    bounds: NDArray[np.float32]  # (2, 3) min and max corner of both grids, model frame
    colour_mask: NDArray[np.uint8]  # packbits of the (C, C, C) mask of coloured grid points
    colour: NDArray[np.uint8]  # (N, 3) colours of the masked points, x-major order
    colour_resolution: int = 0  # C; 0: the density grid's
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.colour_resolution = int(self.colour_resolution or self.log_density.shape[0])

    @property
    def resolution(self) -> int:
        return self.log_density.shape[0]

    def mask(self) -> NDArray[np.bool_]:
        """The (C, C, C) bool mask of colour-grid points that hold a colour."""
        shape = (self.colour_resolution,) * 3
        n = int(np.prod(shape))
        return np.unpackbits(self.colour_mask, count=n).astype(bool).reshape(shape)

    @classmethod
    def pack_mask(cls, mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
        return np.packbits(np.asarray(mask, bool).ravel())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def _npz_bytes(arrays: dict[str, NDArray]) -> bytes:
    """An npz (zip of .npy) with LZMA members: numpy.load reads it as any npz. LZMA, not
    deflate: room_0's grids take 16.0 MB instead of 20.0 MB (the 20 MB budget), for ~1 s
    more to read and ~25 s more to write."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_LZMA) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_LZMA
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, arr.getvalue())
    return buf.getvalue()


def log_density_range(log_density: NDArray, bounds: NDArray) -> NDArray[np.float32]:
    """[lo, hi] the uint8 grid spans (see LN_DENSITY_SPAN)."""
    diagonal = float(np.linalg.norm(np.asarray(bounds[1]) - np.asarray(bounds[0])))
    top = math.log(OPAQUE_BIN_DEPTH * BINS_PER_DIAGONAL / diagonal)
    hi = min(float(np.max(log_density)), top)
    lo = max(float(np.min(log_density)), top - LN_DENSITY_SPAN)
    lo = min(lo, hi - 1e-3)  # a constant field still gets a (tiny) range
    return np.array([lo, hi], np.float32)


def quantize_log_density(log_density: NDArray, value_range: NDArray) -> NDArray[np.uint8]:
    lo, hi = (float(v) for v in value_range)
    q = (np.clip(np.asarray(log_density, np.float32), lo, hi) - lo) * (255.0 / (hi - lo))
    return np.round(q).astype(np.uint8)


def dequantize_log_density(q: NDArray[np.uint8], value_range: NDArray) -> NDArray[np.float32]:
    lo, hi = (float(v) for v in value_range)
    return (lo + q.astype(np.float32) * np.float32((hi - lo) / 255.0)).astype(np.float32)


def write_bake(root: Path, baked: Baked) -> Path:
    """Write bake.npz and bake.json atomically (temp files, then rename; json last)."""
    root = Path(root)
    value_range = log_density_range(baked.log_density, baked.bounds)
    arrays = {
        "log_density_q": quantize_log_density(baked.log_density, value_range),
        "log_density_range": value_range,
        "bounds": baked.bounds,
        "colour_resolution": np.array([baked.colour_resolution], np.int32),
        "colour_mask": baked.colour_mask,
        "colour": baked.colour,
    }
    data = _npz_bytes(arrays)
    own = ("format", "format_version", "weights_sha256", "npz_sha256")
    meta = {
        "format": BAKE_FORMAT,
        "format_version": BAKE_VERSION,
        "weights_sha256": sha256_file(root / WEIGHTS),
        "npz_sha256": hashlib.sha256(data).hexdigest(),
        **{k: v for k, v in baked.info.items() if k not in own},
    }
    for name, payload in (
        (BAKE_NPZ, data),
        (BAKE_JSON, (json.dumps(meta, indent=1) + "\n").encode()),
    ):
        tmp = root / f".{name}.tmp"
        tmp.write_bytes(payload)
        tmp.replace(root / name)
    return root / BAKE_NPZ


def has_bake(root: Path) -> bool:
    return (Path(root) / BAKE_JSON).is_file() and (Path(root) / BAKE_NPZ).is_file()


def read_bake(root: Path) -> Baked:
    """Read and verify a bundle's bake; StaleBake if the weights changed, BundleError if bad."""
    root = Path(root)
    jpath = check_inside(root, root / BAKE_JSON, "bake.json")
    meta = read_json_object(jpath, "bake.json")
    if meta.get("format") != BAKE_FORMAT:
        raise BundleError(f"{jpath}: field 'format': not an {BAKE_FORMAT} file")
    if meta.get("format_version") != BAKE_VERSION:
        raise BundleError(
            f"{jpath}: field 'format_version' = {meta.get('format_version')!r}: "
            f"this egosynth reads {BAKE_VERSION} (rebuild with `egosynth scenes bake {root}`)"
        )
    if meta.get("weights_sha256") != sha256_file(check_inside(root, root / WEIGHTS, "weights")):
        raise StaleBake(
            f"{jpath}: stale: made from other weights than {root / WEIGHTS} "
            f"(rebuild with `egosynth scenes bake {root}`)"
        )
    npath = check_inside(root, root / BAKE_NPZ, "bake.npz")
    data = read_bytes(npath, "bake.npz")
    if hashlib.sha256(data).hexdigest() != meta.get("npz_sha256"):
        raise BundleError(
            f"{npath}: corrupt: its checksum does not match bake.json "
            f"(rebuild with `egosynth scenes bake {root}`)"
        )
    a = _load_arrays(npath, data)
    ld = dequantize_log_density(a["log_density_q"], a["log_density_range"])
    return Baked(ld, a["bounds"], a["colour_mask"], a["colour"],
                 int(a["colour_resolution"][0]), info=meta)  # fmt: skip


def _load_arrays(npath: Path, data: bytes) -> dict[str, NDArray]:
    out: dict[str, NDArray] = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            for name, (dtype, ndim, cols) in _ARRAYS.items():
                if name not in z.files:
                    raise BundleError(f"{npath}: array '{name}' is missing")
                a = z[name]
                if a.dtype != dtype or a.ndim != ndim or (cols and a.shape[-1] != cols):
                    raise BundleError(
                        f"{npath}: array '{name}': {a.dtype} {a.shape}, expected {np.dtype(dtype)} "
                        f"with {ndim} axes"
                    )
                out[name] = a
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise BundleError(f"{npath}: not a readable bake ({exc})") from None
    b, ld, vr = out["bounds"], out["log_density_q"], out["log_density_range"]
    if b.shape != (2, 3) or not np.all(np.isfinite(b)) or not np.all(b[1] > b[0]):
        raise BundleError(f"{npath}: array 'bounds' = {b.tolist()}: not a box")
    if len(set(ld.shape)) != 1 or ld.shape[0] < 2:
        raise BundleError(f"{npath}: array 'log_density_q' {ld.shape}: not a cubic grid")
    if not (np.all(np.isfinite(vr)) and vr[0] < vr[1]):
        raise BundleError(f"{npath}: array 'log_density_range' = {vr.tolist()}: not a range")
    c = int(out["colour_resolution"][0])
    if not 2 <= c <= 1024:
        raise BundleError(f"{npath}: array 'colour_resolution' = {c}: choose 2..1024")
    if len(out["colour_mask"]) != (c**3 + 7) // 8:
        raise BundleError(
            f"{npath}: array 'colour_mask' has {len(out['colour_mask'])} bytes for a "
            f"{c}^3 colour grid (expected {(c**3 + 7) // 8})"
        )
    n = int(np.unpackbits(out["colour_mask"], count=c**3).sum())
    if len(out["colour"]) != n:
        raise BundleError(
            f"{npath}: array 'colour' has {len(out['colour'])} rows for {n} coloured grid points"
        )
    return out
