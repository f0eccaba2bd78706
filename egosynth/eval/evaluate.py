"""Scoring models on ClickMe-format data (real ClickMe or the synthetic twin).

One row per (data set, model, scoring):

    classifier   a model with its own classes (supervised baseline): argmax accuracy; saliency
                 of its true-class logit
    probe        encoder + a linear probe fitted on the probe split: probe accuracy; saliency of
                 the probe's true-class logit through the encoder
    embedding    encoder alone, label-free: saliency of the standardised embedding's squared
                 norm (no accuracy)

Alignment, Spearman, Dice and IoU are the reference metric (egosynth.eval.metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from egosynth.errors import EgosynthError
from egosynth.eval.clickme import count_clickme_samples, iter_clickme_batches
from egosynth.eval.metrics import AlignmentScores, score_saliency
from egosynth.eval.probe import (
    LoadedModel,
    embed,
    fit_linear_probe,
    probed,
    standardised_embedding,
)
from egosynth.eval.saliency import saliency_maps

SCORINGS = ("probe", "embedding")


@dataclass
class SplitData:
    """A ClickMe split in memory: what iter_clickme_batches yields, concatenated."""

    images: np.ndarray  # (N, 224, 224, 3) float32 0..255
    heatmaps: np.ndarray  # (N, 224, 224) float32 processed human maps
    labels: np.ndarray  # (N,) int64
    sources: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)  # twin samples.json rows

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, size: int = 64):
        for i in range(0, len(self), size):
            yield self.images[i : i + size]


def load_split(
    paths: str | Path | Sequence[str | Path],
    max_images: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    desc: str = "load",
) -> SplitData:
    from tqdm import tqdm

    total = count_clickme_samples(paths)
    if max_images:
        total = min(total, max_images)
    images, heat, labels, sources = [], [], [], []
    n = 0
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    for b in iter_clickme_batches(paths, batch_size):
        keep = len(b.labels) if not max_images else min(len(b.labels), max_images - n)
        bad = np.flatnonzero(b.labels[:keep] < 0)
        if bad.size:  # the files may hold any int64; a class index cannot be negative
            i = int(bad[0])
            raise EgosynthError(f"{b.sources[i]}: label = {int(b.labels[i])}: not a class index")
        images.append(b.images[:keep])
        heat.append(b.heatmaps[:keep])
        labels.append(b.labels[:keep])
        sources += b.sources[:keep]
        n += keep
        bar.update(keep)
        if max_images and n >= max_images:
            break
    bar.close()
    if n == 0:
        shown = paths if isinstance(paths, str | Path) else ", ".join(map(str, paths))
        raise EgosynthError(f"{shown}: no ClickMe samples in these files")
    return SplitData(np.concatenate(images), np.concatenate(heat), np.concatenate(labels), sources)


@dataclass
class Scored:
    """One row of results, plus a few saliency maps kept for figures."""

    row: dict[str, Any]
    examples: np.ndarray  # (k, 224, 224) saliency of the first k images


def _predict(model: nn.Module, data: SplitData, batch_size: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for batch in data.batches(batch_size):
            x = torch.as_tensor(batch).permute(0, 3, 1, 2).float()
            out.append(model(x).argmax(1).numpy())
    return np.concatenate(out)


def _alignment(
    model: nn.Module,
    data: SplitData,
    target: str,
    method: str,
    batch_size: int,
    keep: int,
    progress: bool,
    desc: str,
) -> tuple[AlignmentScores, np.ndarray]:
    from tqdm import tqdm

    scores = AlignmentScores()
    examples = []
    for i in tqdm(range(0, len(data), batch_size), desc=desc, unit="batch", disable=not progress):
        sl = slice(i, i + batch_size)
        labels = data.labels[sl] if target == "logit" else None
        sal = saliency_maps(
            model,
            data.images[sl],
            labels,
            method=method,
            target=target,
            batch_size=batch_size,
            channels_last=True,
        )
        scores.extend(score_saliency(sal, data.heatmaps[sl]))
        if len(examples) < keep:
            examples.extend(sal[: keep - len(examples)])
    return scores, np.asarray(examples, dtype=np.float32)


def cue_conflict(data: SplitData) -> np.ndarray | None:
    """Per test image: does the background tint name another category than the label?"""
    if not data.meta or len(data.meta) != len(data):
        return None
    return np.array([m.get("cue", m["label"]) != m["label"] for m in data.meta])


def per_image(
    scores: AlignmentScores, data: SplitData, pred: np.ndarray | None = None
) -> dict[str, list]:
    """Per-image values in test-file order, so intervals can be computed after the run.

    Spearman is the per-image alignment (alignment = mean / 0.65753); `correct` is whether
    the prediction was right; `cue_conflict` marks the shortcut-broken images.
    """
    out: dict[str, list] = {
        "spearman": [float(v) for v in scores.spearman],
        "dice": [float(v) for v in scores.dice],
    }
    if pred is not None:
        out["correct"] = [bool(v) for v in pred == data.labels]
    conflict = cue_conflict(data)
    if conflict is not None:
        out["cue_conflict"] = [bool(v) for v in conflict]
    return out


def model_facts(model: LoadedModel) -> dict[str, Any]:
    """Training settings a summary groups by: seed, width, harmonizer weight (when known)."""
    config = model.meta.get("config") if isinstance(model.meta, dict) else None
    if not isinstance(config, dict):
        return {}
    facts: dict[str, Any] = {}
    if "seed" in config:
        facts["seed"] = config["seed"]
    encoder = config.get("encoder")
    if isinstance(encoder, dict):
        facts.update({k: encoder[k] for k in ("arch", "width") if k in encoder})
    if "harmonize" in config:
        facts["harmonize"] = config["harmonize"]
    return facts


def _accuracies(pred: np.ndarray, data: SplitData) -> dict[str, float]:
    out = {"accuracy": float(np.mean(pred == data.labels))}
    conflict = cue_conflict(data)
    if conflict is not None:
        if conflict.any():
            out["accuracy_cue_conflict"] = float(np.mean(pred[conflict] == data.labels[conflict]))
        if (~conflict).any():
            out["accuracy_cue_agree"] = float(np.mean(pred[~conflict] == data.labels[~conflict]))
    return out


def score_model(
    model: LoadedModel,
    test: SplitData,
    probe_data: SplitData | None,
    n_classes: int | None,
    scorings: Sequence[str] = SCORINGS,
    method: str = "gradient",
    batch_size: int = 32,
    keep: int = 6,
    progress: bool = True,
) -> list[Scored]:
    """Rows for one model on one test split (see the module doc)."""
    rows: list[Scored] = []
    base = {
        "model": model.name,
        "kind": model.kind,
        "method": method,
        "n_images": len(test),
        **model_facts(model),
    }
    if model.kind == "classifier":
        assert model.classifier is not None
        head_size = len(model.classes or [])
        if int(test.labels.max()) >= head_size:
            raise EgosynthError(
                f"model {model.name}: labels go up to {int(test.labels.max())} but the "
                f"classifier has {head_size} classes"
            )
        pred = _predict(model.classifier, test)
        acc = _accuracies(pred, test)
        scores, ex = _alignment(
            model.classifier,
            test,
            "logit",
            method,
            batch_size,
            keep,
            progress,
            f"{model.name} saliency",
        )
        row = {**base, "scoring": "classifier", **acc, **scores.summary()}
        rows.append(Scored({**row, "per_image": per_image(scores, test, pred)}, ex))
        return rows
    unknown = set(scorings) - set(SCORINGS)
    if unknown:
        raise EgosynthError(f"--score: unknown {sorted(unknown)}; choose from {list(SCORINGS)}")
    feats = None
    if probe_data is not None:
        feats = embed(model.features, probe_data.batches())
    if "probe" in scorings:
        if probe_data is None or n_classes is None:
            raise EgosynthError(
                f"model {model.name}: scoring 'probe' needs labelled probe images "
                "(--probe-data, or a twin's train split)"
            )
        probe = fit_linear_probe(feats, torch.as_tensor(probe_data.labels), n_classes)
        net = probed(model, probe)
        train_acc = float(np.mean(_predict(net, probe_data) == probe_data.labels))
        pred = _predict(net, test)
        acc = _accuracies(pred, test)
        scores, ex = _alignment(
            net, test, "logit", method, batch_size, keep, progress, f"{model.name} probe saliency"
        )
        row = {
            **base,
            "scoring": "probe",
            **acc,
            "probe_train_accuracy": train_acc,
            **scores.summary(),
            "per_image": per_image(scores, test, pred),
        }
        rows.append(Scored(row, ex))
    if "embedding" in scorings:
        stats = feats if feats is not None else embed(model.features, test.batches())
        net = standardised_embedding(model, stats)
        scores, ex = _alignment(
            net,
            test,
            "embedding_norm",
            method,
            batch_size,
            keep,
            progress,
            f"{model.name} embedding saliency",
        )
        row = {**base, "scoring": "embedding", **scores.summary()}
        rows.append(Scored({**row, "per_image": per_image(scores, test)}, ex))
    return rows
