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

    <bundle>/bake.npz    log_density (R, R, R) float16, bounds (2, 3) float32,
                         colour_mask (ceil(R³ / 8),) uint8: numpy.packbits of the x-major
                         (R, R, R) mask of grid points that hold a colour,
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
import zipfile
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
BAKE_VERSION = 2  # 1: a marching-cubes proxy surface with vertex colours (replaced)
# name -> (dtype, ndim, size of the last axis or None)
_ARRAYS = {
    "log_density": (np.float16, 3, None),
    "bounds": (np.float32, 2, 3),
    "colour_mask": (np.uint8, 1, None),
    "colour": (np.uint8, 2, 3),
}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so a bake is byte-for-byte reproducible


class StaleBake(BundleError):
    """The bake was made from other weights than the bundle's current weights.pt."""


@dataclass
class Baked:
    """A bundle's density grid and sparse colour grid, in nerfstudio's model frame."""

    log_density: NDArray[np.float16]  # (R, R, R) ln(density) at grid points, x-major
    bounds: NDArray[np.float32]  # (2, 3) min and max corner of the grid, model frame
    colour_mask: NDArray[np.uint8]  # packbits of the (R, R, R) mask of coloured grid points
    colour: NDArray[np.uint8]  # (N, 3) colours of the masked points, x-major order
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.log_density.shape[0]

    def mask(self) -> NDArray[np.bool_]:
        """The (R, R, R) bool mask of grid points that hold a colour."""
        n = self.log_density.size
        return np.unpackbits(self.colour_mask, count=n).astype(bool).reshape(self.log_density.shape)

    @classmethod
    def pack_mask(cls, mask: NDArray[np.bool_]) -> NDArray[np.uint8]:
        return np.packbits(np.asarray(mask, bool).ravel())


def sha256_file(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest()


def _npz_bytes(arrays: dict[str, NDArray]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            zf.writestr(info, arr.getvalue(), compresslevel=6)
    return buf.getvalue()


def write_bake(root: Path, baked: Baked) -> Path:
    """Write bake.npz and bake.json atomically (temp files, then rename; json last)."""
    root = Path(root)
    data = _npz_bytes({name: getattr(baked, name) for name in _ARRAYS})
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
    arrays = _load_arrays(npath, data)
    return Baked(info=meta, **arrays)


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
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise BundleError(f"{npath}: not a readable bake ({exc})") from None
    b, ld = out["bounds"], out["log_density"]
    if b.shape != (2, 3) or not np.all(np.isfinite(b)) or not np.all(b[1] > b[0]):
        raise BundleError(f"{npath}: array 'bounds' = {b.tolist()}: not a box")
    if len(set(ld.shape)) != 1 or ld.shape[0] < 2 or not np.all(np.isfinite(ld)):
        raise BundleError(f"{npath}: array 'log_density' {ld.shape}: not a finite cubic grid")
    if len(out["colour_mask"]) != (ld.size + 7) // 8:
        raise BundleError(
            f"{npath}: array 'colour_mask' has {len(out['colour_mask'])} bytes for a "
            f"{ld.shape[0]}^3 grid (expected {(ld.size + 7) // 8})"
        )
    n = int(np.unpackbits(out["colour_mask"], count=ld.size).sum())
    if len(out["colour"]) != n:
        raise BundleError(
            f"{npath}: array 'colour' has {len(out['colour'])} rows for {n} coloured grid points"
        )
    return out
