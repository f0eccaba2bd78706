"""Human-alignment evaluation: the ClickMe metric, ClickMe data, saliency and the harmonizer.

numpy-only parts (importable without torch or TensorFlow):
    egosynth.eval.metrics   the reference alignment metric (Spearman / 0.65753, Dice, IoU) and
                            its heatmap preprocessing (TF bilinear resize, reference blur)
    egosynth.eval.clickme   ClickMe TFRecord shards and npz files: read, write, batch
torch parts (import them explicitly):
    egosynth.eval.saliency    saliency maps of torch models (gradient default, captum options)
    egosynth.eval.harmonizer  the harmonizer loss for supervised training
    egosynth.eval.probe       checkpoints -> models, linear probe, label-free embedding score
    egosynth.eval.evaluate    scoring models on ClickMe-format splits
    egosynth.eval.baseline    supervised baseline on twin frames (CE, optional harmonizer)
numpy-only, imported explicitly:
    egosynth.eval.twin        the synthetic ClickMe twin exported from a clip store
    egosynth.eval.report      JSON report, terminal table, figures

See docs/eval.md for the line-by-line correspondence with serre-lab/Harmonization.
"""

from egosynth.eval.clickme import (
    ClickMeBatch,
    ClickMeRecord,
    ClickMeSample,
    count_clickme_samples,
    find_clickme_files,
    iter_clickme,
    iter_clickme_batches,
    read_clickme_npz,
    read_clickme_records,
    read_clickme_tfrecord,
    write_clickme_npz,
    write_clickme_tfrecord,
)
from egosynth.eval.metrics import (
    HUMAN_SPEARMAN_CEILING,
    AlignmentScores,
    alignment_score,
    dice,
    gaussian_blur,
    gaussian_kernel,
    intersection_over_union,
    preprocess_clickme_heatmaps,
    preprocess_clickme_images,
    score_clickme,
    score_saliency,
    spearman_correlation,
    tf_resize_bilinear,
)

__all__ = [
    "HUMAN_SPEARMAN_CEILING",
    "AlignmentScores",
    "ClickMeBatch",
    "ClickMeRecord",
    "ClickMeSample",
    "alignment_score",
    "count_clickme_samples",
    "dice",
    "find_clickme_files",
    "gaussian_blur",
    "gaussian_kernel",
    "intersection_over_union",
    "iter_clickme",
    "iter_clickme_batches",
    "preprocess_clickme_heatmaps",
    "preprocess_clickme_images",
    "read_clickme_npz",
    "read_clickme_records",
    "read_clickme_tfrecord",
    "score_clickme",
    "score_saliency",
    "spearman_correlation",
    "tf_resize_bilinear",
    "write_clickme_npz",
    "write_clickme_tfrecord",
]
