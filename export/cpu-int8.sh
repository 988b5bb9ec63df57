#!/usr/bin/env bash
# CPU serving, smallest and fastest: fused graph, dynamic int8, checked on labelled data.
#   bash export/cpu-int8.sh CHECKPOINT OUTPUT DATA.tsv [MAX_DROP]
# Fails (exit 1, manifest.json kept) if int8 loses more than MAX_DROP points (default 1) of the task metric.
set -euo pipefail
checkpoint=${1:?checkpoint}; output=${2:?output dir}; data=${3:?labelled data (.tsv/.csv/.jsonl)}
dsee-export "$checkpoint" --output "$output" --quantize int8 \
    --validate-data "$data" --max-metric-drop "${4:-1}"
