#!/usr/bin/env bash
# GPU serving with ONNX Runtime's CUDA provider: fused graph in fp16 (fp32 inputs and outputs).
# Needs onnxruntime-gpu in place of onnxruntime:
#   pip uninstall -y onnxruntime && pip install 'dsee-deploy[gpu]'
#   bash export/gpu-fp16-onnxruntime.sh CHECKPOINT OUTPUT [DATA.tsv]
set -euo pipefail
checkpoint=${1:?checkpoint}; output=${2:?output dir}
dsee-export "$checkpoint" --output "$output" --fp16 ${3:+--validate-data "$3"}
