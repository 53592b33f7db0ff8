#!/usr/bin/env bash
# BiCrossNet on SUES-200 at 250 m: teacher (if missing) → distilled binary student → Recall@K / AP.
# Usage: DATA_DIR=.../SUES-200/train TEST_DIR=.../SUES-200/test \
#          bash train_and_evaluate_sue_250.sh [extra train.py flags for the student]
# Other settings (run names, models, device, teacher/eval flags): see scripts/train_and_evaluate.sh.
DATASET=sues ALTITUDE=250 exec bash "$(dirname "$0")/scripts/train_and_evaluate.sh" "$@"
