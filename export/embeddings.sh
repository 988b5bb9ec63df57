#!/usr/bin/env bash
# Sentence embeddings: last_hidden_state plus a pooled sentence_embedding (pooling and normalization as the
# base model's sentence-transformers config says; mean pooling otherwise). Works on a bare encoder directory
# or on a tuned checkpoint's encoder.
#   bash export/embeddings.sh MODEL_OR_CHECKPOINT OUTPUT [int8]
set -euo pipefail
source=${1:?model dir or checkpoint}; output=${2:?output dir}
dsee-export "$source" --output "$output" --task feature-extraction ${3:+--quantize "$3"}
