"""The synthetic twin of ClickMe: a ClickMe-format benchmark exported from a clip store.

Each sample is one object seen in one rendered frame:

    image    the frame cropped to a square around the object (2.5x its bounding box, so some
             background stays in view), resized to 256x256 (uint8 RGB)
    label    the object's category, an index into the twin's category table (twin.json)
    heatmap  the "human" map: the object's DIAGNOSTIC part mask (the part that alone tells two
             categories of a family apart, as the store's label table records it: each
             label's `diagnostic_part`), Gaussian blurred like a ClickMe click map, scaled
             to 0..255

The folder holds `train/` and `test/` splits of ClickMe files (per-image npz by default,
or JPEG TFRecord shards exactly as ClickMe's), `twin.json` (categories, settings, counts,
measured shortcut statistics) and `samples.json` (where every sample came from). The ClickMe
reader (`egosynth.eval.clickme`) reads either split unchanged, so the same evaluator runs on
ClickMe and on the twin.

The split follows the trainer's (egosynth.plan.split_clips): the last clip of every
scene with two or more clips is the test split, so the twin's test images come from clips
the encoders never trained on.

The background shortcut: with strength s, every sample's background (instance id 0: room
and furniture) is tinted towards a colour that names a "cue" category; the cue is the true
category with probability s and a uniformly drawn category otherwise. s = 0: the tint carries
no information; s = 1: the tint alone gives the label. `shortcut` sets the train split's
strength and `test_shortcut` the test split's (default 0, so accuracy on the test split
rewards the object, not the background). The scene generator's own knob (a room style that
predicts the category) is a property of the store; the twin reports how much the scene
predicts the label in its splits (`scene_label_mi`).

numpy + the store reader only (no torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from egosynth.errors import EgosynthError
from egosynth.eval.clickme import ClickMeSample, write_clickme_npz, write_clickme_tfrecord
from egosynth.eval.metrics import tf_resize_bilinear
from egosynth.plan import split_clips
from egosynth.store.schema import LabelTable

TWIN_FORMAT = "egosynth-clickme-twin"
TWIN_VERSION = 1
TWIN_SIZE = 256  # ClickMe's image and heatmap size
# "validation" last: a split's index seeds its cues, so train and test images do not change
# when a validation split is added.
SPLITS = ("train", "test", "validation")
FORMATS = ("npz", "tfrecord")
# Tints for the background cue, one per category (cycled if there are more): saturated and far
# apart so that a small network can read them.
CUE_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 40, 40),
    (40, 200, 60),
    (50, 80, 230),
    (240, 200, 30),
    (200, 50, 220),
    (30, 210, 220),
    (250, 130, 20),
    (120, 120, 120),
)


@dataclass
class TwinConfig:
    """Settings of a twin export (all recorded in twin.json)."""

    shortcut: float = 0.0  # background-cue strength of the train split
    test_shortcut: float = 0.0  # ... and of the test split
    tint: float = 0.5  # blend weight of the cue colour over the background
    eye: int = 0  # 0 = left, 1 = right
    stride: int = 2  # use every stride-th frame
    crop: int | None = None  # fixed square crop side in source pixels (None: adaptive, below)
    context: float = 2.5  # adaptive crop side = context x the object's bounding-box side ...
    min_crop: int = 32  # ... but at least this many source pixels (and at most the short side)
    min_object_px: int = 40  # visible object pixels needed (source resolution)
    min_part_px: int = 4  # visible diagnostic-part pixels needed
    blur_sigma: float = 6.0  # Gaussian blur of the part mask, in 256x256 pixels
    object_weight: float = 0.0  # weight of the whole-object mask added to the part mask
    seed: int = 0
    format: str = "npz"
    max_per_split: int | None = None
    diagnostic_parts: dict[str, str] = field(default_factory=dict)  # category -> part override
    # Hold out the last train clip of every scene (with two or more train clips) as a
    # validation split, cued like the test split: choices (the harmonizer's lambda) are made
    # there, never on test.
    validation: bool = False

    def __post_init__(self) -> None:
        for name in ("shortcut", "test_shortcut", "tint"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise EgosynthError(f"twin: {name} = {value}: must be in [0, 1]")
        if self.eye not in (0, 1):
            raise EgosynthError(f"twin: eye = {self.eye}: must be 0 (left) or 1 (right)")
        if self.stride < 1:
            raise EgosynthError(f"twin: stride = {self.stride}: must be >= 1")
        if self.crop is not None and self.crop < 8:
            raise EgosynthError(f"twin: crop = {self.crop}: must be >= 8 pixels")
        if self.context < 1 or self.min_crop < 8:
            raise EgosynthError(
                f"twin: context = {self.context}, min_crop = {self.min_crop}: need context >= 1 "
                "and min_crop >= 8"
            )
        if self.format not in FORMATS:
            raise EgosynthError(f"twin: format = {self.format!r}: expected one of {FORMATS}")
        if self.blur_sigma < 0 or self.object_weight < 0:
            raise EgosynthError("twin: blur_sigma and object_weight must be >= 0")


# --------------------------------------------------------------------------- pure helpers
def gaussian_blur_2d(image: NDArray, sigma: float) -> NDArray[np.float64]:
    """Separable Gaussian blur (truncated at 3 sigma, zero padding) of an (H, W) map."""
    image = np.asarray(image, dtype=np.float64)
    if sigma <= 0:
        return image.copy()
    radius = max(1, math.ceil(3 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2 * sigma**2))
    k /= k.sum()
    rows = np.apply_along_axis(np.convolve, 1, image, k, mode="same")
    return np.apply_along_axis(np.convolve, 0, rows, k, mode="same")


def crop_box(
    mask: NDArray[np.bool_], side: int | None, context: float = 2.5, min_side: int = 32
) -> tuple[int, int, int]:
    """(top, left, side) of a square centred on the mask's bounding box, shifted to lie inside
    the frame. `side` None: context x the box's longer side, at least `min_side`; the side is
    capped by the frame's short side."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if side is None:
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        side = max(min_side, round(context * extent))
    side = min(side, h, w)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    return top, left, side


def resize_nearest(mask: NDArray, size: int) -> NDArray:
    """Nearest-neighbour resize of a square (S, S) label map to (size, size), pixel centres."""
    s = mask.shape[0]
    idx = np.minimum(((np.arange(size) + 0.5) * s / size).astype(np.int64), s - 1)
    return mask[np.ix_(idx, idx)]


def human_map(
    part_mask: NDArray[np.bool_],
    object_mask: NDArray[np.bool_],
    sigma: float,
    object_weight: float = 0.0,
) -> NDArray[np.uint8]:
    """The twin's "human" click map: blurred diagnostic-part mask (+ a weighted object mask),
    scaled so its peak is 255, as uint8 like a ClickMe heatmap."""
    raw = part_mask.astype(np.float64) + object_weight * object_mask.astype(np.float64)
    blurred = gaussian_blur_2d(raw, sigma)
    peak = blurred.max()
    if peak <= 0:
        return np.zeros(raw.shape, np.uint8)
    return np.round(blurred / peak * 255.0).astype(np.uint8)


def tint_background(
    image: NDArray[np.uint8], background: NDArray[np.bool_], colour: Sequence[int], alpha: float
) -> NDArray[np.uint8]:
    """Blend `colour` over the background pixels with weight `alpha`."""
    out = image.astype(np.float64)
    out[background] = (1 - alpha) * out[background] + alpha * np.asarray(colour, np.float64)
    return np.round(out).clip(0, 255).astype(np.uint8)


def draw_cue(label: int, n_classes: int, strength: float, rng: np.random.Generator) -> int:
    """The cue category: the label with probability `strength`, else uniform over classes."""
    if rng.random() < strength:
        return label
    return int(rng.integers(n_classes))


def mutual_information(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Plug-in mutual information (nats) between two paired discrete sequences."""
    if len(a) == 0:
        return 0.0
    ua, ia = np.unique(np.asarray(a, dtype=str), return_inverse=True)
    ub, ib = np.unique(np.asarray(b, dtype=str), return_inverse=True)
    joint = np.zeros((len(ua), len(ub)))
    np.add.at(joint, (ia, ib), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


# --------------------------------------------------------------------------- store side
@dataclass
class SourceObject:
    """One labelled object of a scene: its instance id, category and diagnostic part ids."""

    instance_id: int
    category: str
    diagnostic_ids: tuple[int, ...]


def diagnostic_part_of(
    category: str, overrides: dict[str, str], recorded: str | None = None
) -> str:
    """The name of the diagnostic part of an object of `category`: the user's override, else
    what the store's label table `recorded` for it (`Label.diagnostic_part`).

    Labels that record none - stores written before labels carried it, scenes whose
    annotations name none - fall back to the procedural generator's table (numpy-only; it
    imports nothing above it, tests/test_imports.py).
    """
    if category in overrides:
        return overrides[category]
    if recorded is not None:
        return recorded
    from egosynth.scenes.shapes import DIAGNOSTIC_PART  # the fallback only

    if category not in DIAGNOSTIC_PART:
        raise EgosynthError(
            f"twin: category {category!r} has no diagnostic part (the store's label table "
            f"names none, known: {sorted(DIAGNOSTIC_PART)}); give one with --part "
            f"{category}=<part name>"
        )
    return DIAGNOSTIC_PART[category]


def scene_objects(labels: LabelTable, overrides: dict[str, str]) -> list[SourceObject]:
    """The store's label table of one scene -> objects with their diagnostic part ids."""
    out = []
    for lab in labels:
        part = diagnostic_part_of(lab.category, overrides, lab.diagnostic_part)
        ids = tuple(sorted(pid for pid, name in lab.parts.items() if name == part))
        out.append(SourceObject(lab.instance_id, lab.category, ids))
    return out


@dataclass
class TwinSample:
    """One exported sample and where it came from."""

    sample: ClickMeSample
    meta: dict[str, Any]


def _frame_samples(
    rgb: NDArray,
    instance: NDArray,
    part: NDArray,
    objects: list[SourceObject],
    categories: list[str],
    cfg: TwinConfig,
) -> Iterator[tuple[SourceObject, ClickMeSample, tuple[int, int, int]]]:
    """The (unshortcut) samples of one mono frame: one per sufficiently visible object."""
    for obj in objects:
        obj_mask = instance == obj.instance_id
        if obj_mask.sum() < cfg.min_object_px:
            continue
        part_mask = np.isin(part, obj.diagnostic_ids) & obj_mask
        if part_mask.sum() < cfg.min_part_px:
            continue
        top, left, s = crop_box(obj_mask, cfg.crop, cfg.context, cfg.min_crop)
        win = (slice(top, top + s), slice(left, left + s))
        image = tf_resize_bilinear(rgb[win], (TWIN_SIZE, TWIN_SIZE))
        image = np.round(image).clip(0, 255).astype(np.uint8)
        heat = human_map(
            resize_nearest(part_mask[win], TWIN_SIZE),
            resize_nearest(obj_mask[win], TWIN_SIZE),
            cfg.blur_sigma,
            cfg.object_weight,
        )
        label = categories.index(obj.category)
        yield obj, ClickMeSample(image, heat, label), (top, left, s)


def iter_twin_samples(
    store,
    clip_ids: Sequence[str],
    categories: list[str],
    cfg: TwinConfig,
    strength: float,
    split: str,
) -> Iterator[TwinSample]:
    """Samples of the given clips, in (clip, frame, instance) order, with the background cue
    of `strength` applied."""
    n_cls = len(categories)
    index = 0
    for cid in clip_ids:
        clip = store.clip(cid)
        objects = scene_objects(clip.labels, cfg.diagnostic_parts)
        if not objects:
            continue
        arrays = clip.read(names=["rgb", "instance", "part"])
        for t in range(0, clip.n_frames, cfg.stride):
            rgb = arrays["rgb"][t, cfg.eye]
            inst = arrays["instance"][t, cfg.eye]
            part = arrays["part"][t, cfg.eye]
            for obj, sample, (top, left, s) in _frame_samples(
                rgb, inst, part, objects, categories, cfg
            ):
                rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
                cue = draw_cue(sample.label, n_cls, strength, rng)
                if cfg.tint > 0:
                    # Every split is tinted, at strength 0 with random cues: twins that differ
                    # only in `shortcut` then share identical test images, and a tint seen
                    # only in training is no train/test shift.
                    bg = resize_nearest(inst[top : top + s, left : left + s] == 0, TWIN_SIZE)
                    colour = CUE_COLOURS[cue % len(CUE_COLOURS)]
                    sample.image = tint_background(sample.image, bg, colour, cfg.tint)
                meta = {
                    "clip": cid,
                    "scene": clip.scene,
                    "frame": t,
                    "eye": cfg.eye,
                    "instance": obj.instance_id,
                    "label": sample.label,
                    "category": obj.category,
                    "cue": cue,
                    "crop": [top, left, s],
                }
                sample.source = f"{cid}/{t}/{obj.instance_id}"
                yield TwinSample(sample, meta)
                index += 1


def _write_split(folder: Path, samples: list[TwinSample], fmt: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        for i, s in enumerate(samples):
            write_clickme_npz(folder / f"{i:06d}.npz", s.sample)
    else:
        per_shard = 256
        for k in range(0, max(len(samples), 1), per_shard):
            chunk = samples[k : k + per_shard]
            if chunk:
                write_clickme_tfrecord(
                    folder / f"twin-{k // per_shard:05d}.tfrecords", (s.sample for s in chunk)
                )


def export_twin(
    store_path: str | Path, out: str | Path, cfg: TwinConfig, progress: bool = True
) -> dict[str, Any]:
    """Export a store's clips as a ClickMe-format twin in `out`; returns twin.json's content."""
    from tqdm import tqdm

    from egosynth.store import ClipStore

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not (out / "twin.json").is_file():
            raise EgosynthError(f"{out}: exists, is not empty and is not a twin; refusing")
        for split in SPLITS:  # replace an earlier twin wholesale
            for f in (out / split).glob("*") if (out / split).is_dir() else []:
                f.unlink()
    store = ClipStore(store_path)
    ids = store.clip_ids()
    if not ids:
        raise EgosynthError(f"{store_path}: no complete clips to export")
    scenes = [store.clip(c).scene for c in ids]
    categories = sorted({cat for c in ids for cat in store.clip(c).labels.categories})
    if len(categories) < 2:
        raise EgosynthError(
            f"{store_path}: the label table has {len(categories)} categor(y/ies) "
            f"({categories}); a twin needs at least 2"
        )
    train_ids, test_ids = split_clips(ids, scenes)
    if not test_ids:
        raise EgosynthError(
            f"{store_path}: no scene has two clips, so there is no held-out clip for the test "
            "split (render with --clips 2 or more)"
        )
    val_ids: list[str] = []
    if cfg.validation:
        train_ids, val_ids = split_clips(train_ids, [store.clip(c).scene for c in train_ids])
        if not val_ids:
            raise EgosynthError(
                f"{store_path}: no scene has three clips, so there is no clip for a validation "
                "split besides the test clip (render with --clips 3 or more)"
            )
    info: dict[str, Any] = {
        "format": TWIN_FORMAT,
        "version": TWIN_VERSION,
        "source": str(store_path),
        "categories": categories,
        "config": asdict(cfg),
        "splits": {},
    }
    all_meta: dict[str, list[dict]] = {}
    for split, clip_ids, strength in (
        ("train", train_ids, cfg.shortcut),
        ("test", test_ids, cfg.test_shortcut),
        *([("validation", val_ids, cfg.test_shortcut)] if val_ids else []),
    ):
        samples = []
        gen = iter_twin_samples(store, clip_ids, categories, cfg, strength, split)
        for s in tqdm(gen, desc=f"twin {split}", unit="img", disable=not progress):
            samples.append(s)
            if cfg.max_per_split and len(samples) >= cfg.max_per_split:
                break
        if not samples:
            raise EgosynthError(
                f"{store_path}: no object of the {split} clips {clip_ids} shows at least "
                f"{cfg.min_object_px} px with {cfg.min_part_px} px of its diagnostic part"
            )
        _write_split(out / split, samples, cfg.format)
        metas = [s.meta for s in samples]
        all_meta[split] = metas
        labels = [m["label"] for m in metas]
        info["splits"][split] = {
            "clips": clip_ids,
            "n_images": len(samples),
            "shortcut": strength,
            "class_counts": np.bincount(labels, minlength=len(categories)).tolist(),
            "cue_agreement": float(np.mean([m["cue"] == m["label"] for m in metas])),
            "cue_label_mi": mutual_information([m["cue"] for m in metas], labels),
            "scene_label_mi": mutual_information([m["scene"] for m in metas], labels),
            "label_entropy": mutual_information(labels, labels),
        }
    (out / "samples.json").write_text(json.dumps(all_meta))
    (out / "twin.json").write_text(json.dumps(info, indent=2))
    return info


def read_twin_info(folder: str | Path) -> dict[str, Any]:
    """twin.json of a twin folder, checked."""
    path = Path(folder) / "twin.json"
    if not path.exists():
        raise EgosynthError(
            f"{folder}: not a twin (no twin.json; make one with `egosynth eval twin-export`)"
        )
    from egosynth.readers import read_json_object

    info = read_json_object(path, "twin.json")
    if info.get("format") != TWIN_FORMAT:
        raise EgosynthError(f"{path}: format = {info.get('format')!r}: expected {TWIN_FORMAT!r}")
    if info.get("version") != TWIN_VERSION:
        raise EgosynthError(f"{path}: version = {info.get('version')!r}: expected {TWIN_VERSION}")
    return info


def read_twin_samples(folder: str | Path) -> dict[str, list[dict]]:
    """samples.json of a twin: per split, where each sample came from (same order as files)."""
    path = Path(folder) / "samples.json"
    if not path.exists():
        return {}
    from egosynth.readers import read_json_object

    return read_json_object(path, "samples.json")
