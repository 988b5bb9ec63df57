#!/usr/bin/env bash
# A Triton model repository entry (REPOSITORY/NAME/config.pbtxt + NAME/1/model.onnx) for the onnxruntime
# backend, with dynamic batching. Pass int8 as the 4th argument for a CPU int8 model.
#   bash export/triton.sh CHECKPOINT REPOSITORY NAME [int8]
#   docker run --rm -p 8000:8000 -v "$PWD/REPOSITORY:/models" nvcr.io/nvidia/tritonserver:<tag>-py3 \
#       tritonserver --model-repository=/models
set -euo pipefail
checkpoint=${1:?checkpoint}; repository=${2:?repository dir}; name=${3:?model name}
dsee-export "$checkpoint" --output "$repository" --format triton --name "$name" \
    --max-batch-size 32 --max-queue-delay-us 500 ${4:+--quantize "$4"}
