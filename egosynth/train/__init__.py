"""The bundled trainer: slow-feature and predictive-coding encoders on egocentric stereo clips.

Modules (torch is imported by each, so import them only where training happens):

- `encoders`: ResNet-family backbones (torchvision blocks, random init) over one eye or both.
- `losses`: slowness under SFA constraints, InfoNCE, PredNet error-unit loss.
- `predictive`: latent predictor (GRU / causal temporal conv, CPC-style) and PredNet.
- `fovea`: foveal training crops around each eye's projection of the gaze's fixation point.
- `augment`: per-frame random resized crops, flips and colour jitter of training frames.
- `diagnostics`: eta value, effective rank, next-frame error vs copy-last-frame, linear probe.
- `checkpoint`: weights-only checkpoints (tensors + JSON metadata, no pickled objects).
- `loop`: the training loop (AdamW + warmup/cosine, AMP, resume, TensorBoard, DDP).

User documentation: docs/train.md.
"""
