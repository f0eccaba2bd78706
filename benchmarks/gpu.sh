#!/usr/bin/env bash
# GPU check (issue 14), <= 5 minutes on one CUDA GPU, on a fresh clone where the README's
# install has been run (.venv present; this script installs nothing):
#   bench_nerf for full, guided and baked on CUDA, on both committed bundles, and
#   `egosynth render` stereo frames/s per GPU at 128x96 and 256x192.
# Prints everything to stdout; put the numbers into docs/cost.md in place of its assumptions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name(0))"
for b in scene_bundles/*/; do
  timeout 90 $PY benchmarks/bench_nerf.py --bundle "$b" --device cuda --frames 8 --size 256 192
done
out=$(mktemp -d)
for size in "128 96" "256 192"; do
  set -- $size
  cat > "$out/set_$1.yaml" <<YAML
name: gpu_$1
scenes: [$(pwd)/scene_configs/scenes/room_0_nerf.yaml, $(pwd)/scene_configs/scenes/room_1_nerf.yaml]
clips_per_scene: 1
clip_seconds: 2.0
fps: 10
resolution: [$1, $2]
rig: adult
motion: adult
seed: 0
output: $out/store_$1.zarr
YAML
  start=$(date +%s.%N)
  timeout 120 .venv/bin/egosynth render "$out/set_$1.yaml" --device gpu --workers 1
  end=$(date +%s.%N)
  echo "render ${1}x${2}: 40 stereo frames in $(echo "$end - $start" | bc) s wall (incl. Ray start)"
done
