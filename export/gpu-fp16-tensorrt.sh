#!/usr/bin/env bash
# A serialized TensorRT engine (model.plan) in fp16, for one GPU model and TensorRT version (plans are not
# portable). The profile covers batch 1-32 and sequences 1-256, tuned for 8 x 128: set yours.
#   pip install 'dsee-deploy[tensorrt]'     # on the CUDA machine that will run the plan
#   bash export/gpu-fp16-tensorrt.sh CHECKPOINT OUTPUT
set -euo pipefail
checkpoint=${1:?checkpoint}; output=${2:?output dir}
dsee-export "$checkpoint" --output "$output" --format tensorrt --fp16 \
    --min-shape 1x1 --opt-shape 8x128 --max-shape 32x256
