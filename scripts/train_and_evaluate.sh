#!/usr/bin/env bash
# The whole BiCrossNet recipe for one dataset: train the ConvNeXt teacher, train the binary student
# with bi-gradual unfreezing, Lion/Adam and distillation, then evaluate both in both directions.
# A finished run is reused and an interrupted one resumed; nothing is overwritten.
# Called by train_and_evaluate_*.sh, which set DATASET (university|sues) and, for SUES-200, ALTITUDE.
#
# Environment (defaults in brackets):
#   DATA_DIR        training folder      [data/University-1652/train | data/SUES-200/train]
#   TEST_DIR        test folder          [data/University-1652/test  | data/SUES-200/test]
#   CHECKPOINT_DIR  runs go here         [checkpoints]
#   NAME            student run name     [bicrossnet_<dataset>]
#   TEACHER_NAME    teacher run name     [teacher_<dataset>]
#   STUDENT_MODEL   [bicrossnet_bnext_tiny]     TEACHER_MODEL  [mccg_convnext_tiny]
#   DEVICE          auto|cpu|cuda        [auto]  (AMP is used on CUDA)
#   TEACHER_FLAGS   extra train.py flags for the teacher, e.g. "--epochs 5"
#   EVAL_FLAGS      extra test.py flags, e.g. "--batchsize 128"
# Arguments: extra train.py flags for the student (they override the recipe below).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

DATASET=${DATASET:?set DATASET to university or sues}
case "$DATASET" in
  university) ROOT=data/University-1652; DATASET_FLAGS=(--dataset university); TAG=university ;;
  sues) ROOT=data/SUES-200; ALTITUDE=${ALTITUDE:?set ALTITUDE for SUES-200}
        DATASET_FLAGS=(--dataset sues --altitude "$ALTITUDE"); TAG=sues_$ALTITUDE ;;
  *) echo "error: DATASET must be university or sues, got '$DATASET'" >&2; exit 2 ;;
esac
DATA_DIR=${DATA_DIR:-$ROOT/train}
TEST_DIR=${TEST_DIR:-$ROOT/test}
CHECKPOINT_DIR=${CHECKPOINT_DIR:-checkpoints}
NAME=${NAME:-bicrossnet_$TAG}
TEACHER_NAME=${TEACHER_NAME:-teacher_$TAG}
STUDENT_MODEL=${STUDENT_MODEL:-bicrossnet_bnext_tiny}
TEACHER_MODEL=${TEACHER_MODEL:-mccg_convnext_tiny}
DEVICE=${DEVICE:-auto}
read -r -a TEACHER_EXTRA <<< "${TEACHER_FLAGS:-}"
read -r -a EVAL_EXTRA <<< "${EVAL_FLAGS:-}"

for dir in "$DATA_DIR" "$TEST_DIR"; do
  if [ ! -d "$dir" ]; then
    echo "error: dataset folder '$dir' does not exist; set DATA_DIR and TEST_DIR (see README: Using the real data)" >&2
    exit 2
  fi
done

COMMON=(--checkpoint_dir "$CHECKPOINT_DIR" --data_dir "$DATA_DIR" --device "$DEVICE" --amp "${DATASET_FLAGS[@]}")

# An existing run is continued (and left alone once finished), never overwritten.
resume_flag() { [ -f "$CHECKPOINT_DIR/$1/last.pth" ] && echo --resume || true; }

echo "== teacher $TEACHER_MODEL -> $CHECKPOINT_DIR/$TEACHER_NAME"
"$PYTHON" train.py --name "$TEACHER_NAME" --model "$TEACHER_MODEL" "${COMMON[@]}" $(resume_flag "$TEACHER_NAME") \
  --optimizer sgd --lr 0.01 --epochs 200 --steps 80 120 --bigradual_n1 0 --bigradual_n2 0 \
  "${TEACHER_EXTRA[@]}"

echo "== student $STUDENT_MODEL -> $CHECKPOINT_DIR/$NAME"
"$PYTHON" train.py --name "$NAME" --model "$STUDENT_MODEL" "${COMMON[@]}" $(resume_flag "$NAME") \
  --optimizer adamlion --lr 0.006 --epochs 300 --steps 80 120 200 --bigradual_n1 20 --bigradual_n2 20 \
  --teacher_path "$CHECKPOINT_DIR/$TEACHER_NAME" --kd_weight 2 "$@"

EVAL_ALTITUDE=()
[ "$DATASET" = sues ] && EVAL_ALTITUDE=(--altitude "$ALTITUDE")
for run in "$TEACHER_NAME" "$NAME"; do
  echo "== evaluating $run"
  "$PYTHON" test.py --name "$run" --checkpoint_dir "$CHECKPOINT_DIR" --test_dir "$TEST_DIR" --mode both \
    --device "$DEVICE" "${EVAL_ALTITUDE[@]}" "${EVAL_EXTRA[@]}"
done
