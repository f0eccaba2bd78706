"""The user's 2D labels: instance-id masks of a few capture views, part masks, a label table.

Inputs (checked completely before anything is computed or written; every problem is one line
naming the file, the field and the value):

- `--masks DIR`: instance-id PNGs (8- or 16-bit, one channel, 0 = background) named after
  capture images (`frame_00003.png` labels the capture image `images/frame_00003.png`), or one
  COCO JSON file (RLE or polygon `segmentation`s, pycocotools) whose images' `file_name`s name
  capture images and whose annotations carry the instance id as `instance_id` (else `id`).
- `--parts DIR`: optional part-id PNGs with the same names (0 = no part).
- `--labels FILE`: the label table, egosynth's format (what captures write as labels.json):
  `[{"instance_id": 1, "name": "cat_0", "category": "cat", "parts": {"3": "head"}}, ...]`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.labels import Label
from egosynth.nerf.cameras import CaptureCameras


class MaskError(EgosynthError):
    """A mask or label file is unusable; the message names the file, field and value."""


@dataclass
class LabelledView:
    """One capture view's masks: the view index and its id images."""

    view: int
    source: Path
    instance: NDArray[np.uint16]  # (H, W)
    part: NDArray[np.uint16] | None = None


@dataclass
class UserLabels:
    labels: list[Label]
    views: list[LabelledView] = field(default_factory=list)

    def label(self, instance_id: int) -> Label:
        return next(lab for lab in self.labels if lab.instance_id == instance_id)


def read_labels(path: Path) -> list[Label]:
    """The label table file (JSON list of labels with unique ids and names)."""
    from egosynth.readers import read_json

    data = read_json(path, "labels file")
    if not isinstance(data, list) or not data:
        raise MaskError(f"{path}: expected a non-empty JSON list of labels, got {data!r:.40}")
    out: list[Label] = []
    for i, d in enumerate(data):
        if not isinstance(d, dict):
            raise MaskError(f"{path}: field '{i}' = {d!r:.40}: expected an object")
        iid, name, cat = d.get("instance_id"), d.get("name"), d.get("category")
        if not isinstance(iid, int) or isinstance(iid, bool) or not 0 < iid < 65536:
            raise MaskError(f"{path}: field '{i}.instance_id' = {iid!r}: expected 1..65535")
        for key, v in (("name", name), ("category", cat)):
            if not isinstance(v, str) or not v:
                raise MaskError(f"{path}: field '{i}.{key}' = {v!r}: expected a non-empty string")
        parts = d.get("parts", {})
        if not isinstance(parts, dict):
            raise MaskError(f"{path}: field '{i}.parts' = {parts!r:.40}: expected an object")
        pp: dict[int, str] = {}
        for k, v in parts.items():
            if not str(k).isdigit() or not 0 < int(k) < 65536 or not isinstance(v, str) or not v:
                raise MaskError(f"{path}: field '{i}.parts.{k}' = {v!r}: expected 'id': 'name'")
            pp[int(k)] = v
        out.append(Label(iid, name, cat, pp))
    for key in ("instance_id", "name"):
        vals = [getattr(lab, key) for lab in out]
        dup = sorted({v for v in vals if vals.count(v) > 1}, key=str)
        if dup:
            raise MaskError(f"{path}: field '{key}' = {dup[0]!r}: given twice")
    pids = [p for lab in out for p in lab.parts]
    dup_p = sorted({p for p in pids if pids.count(p) > 1})
    if dup_p:
        raise MaskError(f"{path}: field 'parts' = {dup_p[0]}: a part id belongs to two objects")
    return out


def _id_image(path: Path, what: str) -> NDArray[np.uint16]:
    from egosynth.readers import read_image

    img = np.asarray(read_image(path, what))
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16):
        raise MaskError(
            f"{path}: {what} has shape {img.shape} and dtype {img.dtype}: expected a "
            "single-channel 8- or 16-bit PNG of ids"
        )
    return img.astype(np.uint16)


def _match_view(path: Path, stem: str, cams: CaptureCameras) -> int:
    v = cams.index(stem)
    if v is None:
        example = Path(cams.names[0]).name
        raise MaskError(
            f"{path}: name {stem!r} matches no capture image of the bundle (they are named "
            f"like {example!r}; {len(cams)} images)"
        )
    return v


def _check_size(path: Path, img: NDArray, v: int, cams: CaptureCameras) -> None:
    w, h = (int(x) for x in cams.sizes[v])
    if img.shape != (h, w):
        raise MaskError(
            f"{path}: size {img.shape[1]}x{img.shape[0]} differs from capture image "
            f"{cams.names[v]!r} ({w}x{h})"
        )


def _png_views(folder: Path, cams: CaptureCameras, what: str) -> dict[int, tuple[Path, NDArray]]:
    out: dict[int, tuple[Path, NDArray]] = {}
    for p in sorted(folder.glob("*.png")):
        v = _match_view(p, p.stem, cams)
        img = _id_image(p, what)
        _check_size(p, img, v, cams)
        out[v] = (p, img)
    return out


def _coco_views(path: Path, cams: CaptureCameras) -> dict[int, tuple[Path, NDArray]]:
    """Instance-id images from a COCO JSON file (RLE or polygons, via pycocotools)."""
    from pycocotools import mask as cmask

    from egosynth.readers import read_json_object

    data = read_json_object(path, "COCO masks file")
    images, anns = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(anns, list):
        raise MaskError(f"{path}: fields 'images' and 'annotations' must be lists")
    by_id: dict[object, int] = {}
    out: dict[int, tuple[Path, NDArray]] = {}
    for i, im in enumerate(images):
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            raise MaskError(f"{path}: field 'images.{i}' = {im!r:.40}: needs id and file_name")
        v = _match_view(path, Path(str(im["file_name"])).stem, cams)
        w, h = (int(x) for x in cams.sizes[v])
        if (im.get("width", w), im.get("height", h)) != (w, h):
            raise MaskError(
                f"{path}: field 'images.{i}' size {im.get('width')}x{im.get('height')} differs "
                f"from capture image {cams.names[v]!r} ({w}x{h})"
            )
        by_id[im["id"]] = v
        out[v] = (path, np.zeros((h, w), np.uint16))
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            value = a.get("image_id") if isinstance(a, dict) else a
            raise MaskError(
                f"{path}: field 'annotations.{i}.image_id' = {value!r:.40}: no such image"
            )
        v = by_id[a["image_id"]]
        h, w = out[v][1].shape
        iid = a.get("instance_id", a.get("id"))
        if not isinstance(iid, int) or isinstance(iid, bool) or not 0 < iid < 65536:
            raise MaskError(
                f"{path}: field 'annotations.{i}.instance_id' = {iid!r}: expected 1..65535"
            )
        seg = a.get("segmentation")
        try:
            if isinstance(seg, list):  # polygons
                rle = cmask.merge(cmask.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = cmask.frPyObjects(seg, h, w)
            else:
                rle = seg
            m = cmask.decode(rle).astype(bool)
        except (TypeError, ValueError, KeyError) as exc:
            raise MaskError(
                f"{path}: field 'annotations.{i}.segmentation' unreadable ({exc!s:.60})"
            ) from None
        if m.shape != (h, w):
            raise MaskError(
                f"{path}: field 'annotations.{i}.segmentation' size {m.shape[1]}x{m.shape[0]} "
                f"differs from its image ({w}x{h})"
            )
        out[v][1][m] = iid
    return out


def read_user_labels(
    masks: Path, labels_file: Path, cams: CaptureCameras, parts: Path | None = None
) -> UserLabels:
    """Read and check every mask and the label table; one-line MaskErrors, nothing written."""
    labels = read_labels(labels_file)
    known = {lab.instance_id for lab in labels}
    part_owner = {p: lab.instance_id for lab in labels for p in lab.parts}
    if masks.is_file() and masks.suffix == ".json":
        views = _coco_views(masks, cams)
    elif masks.is_dir():
        jsons = sorted(masks.glob("*.json"))
        views = _png_views(masks, cams, "instance mask")
        if not views and len(jsons) == 1:
            views = _coco_views(jsons[0], cams)
    else:
        raise MaskError(f"{masks}: --masks must be a folder of PNGs or a COCO JSON file")
    if not views:
        raise MaskError(
            f"{masks}: no instance masks (*.png named after capture images, or COCO JSON)"
        )
    part_views = _png_views(parts, cams, "part mask") if parts is not None else {}
    if parts is not None and not part_views:
        raise MaskError(f"{parts}: no part masks (*.png named after the instance masks)")
    out = UserLabels(labels)
    for v, (path, inst) in sorted(views.items()):
        ids = set(np.unique(inst).tolist()) - {0}
        missing = sorted(ids - known)
        if missing:
            raise MaskError(
                f"{path}: instance id {missing[0]} is not in the labels ({labels_file})"
            )
        part = None
        if v in part_views:
            ppath, part = part_views[v]
            _check_size(ppath, part, v, cams)
            pids = sorted(set(np.unique(part).tolist()) - {0})
            bad = [p for p in pids if p not in part_owner]
            if bad:
                raise MaskError(f"{ppath}: part id {bad[0]} is not in the labels ({labels_file})")
        out.views.append(LabelledView(v, path, inst, part))
    extra = sorted(set(part_views) - set(views))
    if extra:
        raise MaskError(
            f"{part_views[extra[0]][0]}: a part mask without an instance mask of the same view"
        )
    if not any(np.any(v.instance > 0) for v in out.views):
        raise MaskError(f"{masks}: every instance mask is empty (all 0 = background)")
    return out
