#!/usr/bin/env bash
# BiCrossNet on University-1652: teacher (if missing) → distilled binary student → Recall@K / AP.
# Usage: DATA_DIR=.../University-1652/train TEST_DIR=.../University-1652/test \
#          bash train_and_evaluate_university.sh [extra train.py flags for the student]
# Other settings (run names, models, device, teacher/eval flags): see scripts/train_and_evaluate.sh.
DATASET=university exec bash "$(dirname "$0")/scripts/train_and_evaluate.sh" "$@"
