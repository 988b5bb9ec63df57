#!/usr/bin/env bash
# CPU serving at full precision: fused graph, validated against PyTorch at 1e-4 (the default export).
#   bash export/cpu-fp32.sh CHECKPOINT OUTPUT [DATA.tsv]
set -euo pipefail
checkpoint=${1:?checkpoint}; output=${2:?output dir}
dsee-export "$checkpoint" --output "$output" ${3:+--validate-data "$3"}
