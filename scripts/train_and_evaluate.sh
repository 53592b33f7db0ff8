#!/usr/bin/env bash
# The whole BiCrossNet recipe for one dataset: train the ConvNeXt teacher (or take a trained one),
# train the binary student with bi-gradual unfreezing, Lion/Adam and distillation, then evaluate
# both in both directions. A finished run is reused and an interrupted one resumed; nothing is
# overwritten. Called by train_and_evaluate_*.sh, which set DATASET (university|sues) and, for
# SUES-200, ALTITUDE.
#
# Starting weights (the paper's path; docs/reproduce.md):
#   BNEXT_WEIGHTS       the BNext authors' ImageNet checkpoint for the student's size (bnext_tiny.pth.tar …)
#   TEACHER_CHECKPOINT  an already trained teacher: a run directory of this project, or an MCCG /
#                       released BiCrossNet teacher file (e.g. university_tiny.pth); skips teacher training
#   TEACHER_WEIGHTS     ConvNeXt ImageNet weights to train a teacher from (timm or original .pth)
#   FROM_SCRATCH=1      train from random weights instead (the synthetic demo does; far from the paper)
# Environment [defaults]:
#   DATA_DIR        training folder      [data/University-1652/train | data/SUES-200/train]
#   TEST_DIR        test folder          [data/University-1652/test  | data/SUES-200/test]
#   CHECKPOINT_DIR  runs go here         [checkpoints]
#   NAME            student run name     [bicrossnet_<dataset>]
#   TEACHER_NAME    teacher run name     [teacher_<dataset>]
#   STUDENT_MODEL   [bicrossnet_bnext_tiny]     TEACHER_MODEL  [mccg_convnext_tiny]
#   DEVICE          auto|cpu|cuda        [auto]  (AMP is used on CUDA)
#   VIEWS           2|3                  [2]  3 adds street images (University-1652 only): teacher and
#                   student train with --views 3, and evaluation covers every direction (--mode all)
#   EXTRA_GOOGLE=1  with VIEWS=3: street images drawn from train/google/ too (--extra_Google)
#   LAUNCHER        how train.py is started, e.g. "torchrun --nproc_per_node=4" [the Python below]
#   TEACHER_FLAGS   extra train.py flags for the teacher, e.g. "--epochs 5"
#   EVAL_FLAGS      extra test.py flags, e.g. "--batchsize 128"
# Arguments: extra train.py flags for the student (they override the recipe below).
# Paths given in the environment are relative to the directory the script is run from; the
# defaults are relative to the repository.
set -euo pipefail
CALLER_DIR=$PWD
for var in DATA_DIR TEST_DIR CHECKPOINT_DIR BNEXT_WEIGHTS TEACHER_CHECKPOINT TEACHER_WEIGHTS; do
  value=${!var:-}
  case "$value" in
    ""|/*) ;;
    *) printf -v "$var" '%s' "$CALLER_DIR/$value" ;;
  esac
done
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}

DATASET=${DATASET:?set DATASET to university or sues}
case "$DATASET" in
  university) ROOT=data/University-1652; DATASET_FLAGS=(--dataset university); TAG=university ;;
  sues) ROOT=data/SUES-200; ALTITUDE=${ALTITUDE:?set ALTITUDE for SUES-200}
        DATASET_FLAGS=(--dataset sues --altitude "$ALTITUDE"); TAG=sues_$ALTITUDE ;;
  *) echo "error: DATASET must be university or sues, got '$DATASET'" >&2; exit 2 ;;
esac
VIEWS=${VIEWS:-2}
case "$VIEWS" in
  2) VIEW_FLAGS=(--views 2); EVAL_MODE=both ;;
  3) [ "$DATASET" = university ] || { echo "error: VIEWS=3 needs street images; SUES-200 has none" >&2; exit 2; }
     VIEW_FLAGS=(--views 3); EVAL_MODE=all; TAG=${TAG}_3views ;;
  *) echo "error: VIEWS must be 2 or 3, got '$VIEWS'" >&2; exit 2 ;;
esac
if [ "${EXTRA_GOOGLE:-0}" = 1 ]; then
  [ "$VIEWS" = 3 ] || { echo "error: EXTRA_GOOGLE=1 adds google images to the street view: set VIEWS=3" >&2; exit 2; }
  VIEW_FLAGS+=(--extra_Google); TAG=${TAG}_google
fi
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
read -r -a LAUNCH <<< "${LAUNCHER:-$PYTHON}"

fail() { echo "error: $*" >&2; exit 2; }
for dir in "$DATA_DIR" "$TEST_DIR"; do
  [ -d "$dir" ] || fail "dataset folder '$dir' does not exist; set DATA_DIR and TEST_DIR (see README: Data)"
done

# Weights are never silently random: check them all before anything trains.
TEACHER_RUN=$CHECKPOINT_DIR/$TEACHER_NAME
TEACHER_DONE=$( [ -f "$TEACHER_RUN/last.pth" ] && echo 1 || echo 0 )
STUDENT_WEIGHTS=() TEACHER_INIT=()
if [ "${FROM_SCRATCH:-0}" != 1 ]; then
  size=${STUDENT_MODEL#bicrossnet_bnext_}
  [ -n "${BNEXT_WEIGHTS:-}" ] || fail "BNEXT_WEIGHTS is not set: point it at bnext_${size}.pth.tar, the BNext" \
    "authors' ImageNet checkpoint (github.com/hpi-xnor/BNext, docs/training.md: Pretrained weights), or set FROM_SCRATCH=1"
  [ -f "$BNEXT_WEIGHTS" ] || fail "BNEXT_WEIGHTS=$BNEXT_WEIGHTS does not exist (expected bnext_${size}.pth.tar)"
  STUDENT_WEIGHTS=(--backbone_weights "$BNEXT_WEIGHTS")
  if [ -z "${TEACHER_CHECKPOINT:-}" ] && [ "$TEACHER_DONE" = 0 ]; then
    [ -n "${TEACHER_WEIGHTS:-}" ] || fail "neither TEACHER_CHECKPOINT (a trained teacher: run directory or the" \
      "authors' released teacher file) nor TEACHER_WEIGHTS (convnext_tiny_22k_1k_224.pth from" \
      "github.com/facebookresearch/ConvNeXt, or a timm ConvNeXt checkpoint) is set; or set FROM_SCRATCH=1"
    [ -f "$TEACHER_WEIGHTS" ] || fail "TEACHER_WEIGHTS=$TEACHER_WEIGHTS does not exist"
    TEACHER_INIT=(--backbone_weights "$TEACHER_WEIGHTS")
  fi
fi
if [ -n "${TEACHER_CHECKPOINT:-}" ]; then
  [ -e "$TEACHER_CHECKPOINT" ] || fail "TEACHER_CHECKPOINT=$TEACHER_CHECKPOINT does not exist"
  TEACHER_RUN=$TEACHER_CHECKPOINT
fi

COMMON=(--checkpoint_dir "$CHECKPOINT_DIR" --data_dir "$DATA_DIR" --device "$DEVICE" --amp "${DATASET_FLAGS[@]}"
        "${VIEW_FLAGS[@]}")

# An existing run is continued (and left alone once finished), never overwritten.
resume_flag() { [ -f "$CHECKPOINT_DIR/$1/last.pth" ] && echo --resume || true; }

if [ -z "${TEACHER_CHECKPOINT:-}" ]; then
  echo "== teacher $TEACHER_MODEL -> $TEACHER_RUN"
  "${LAUNCH[@]}" train.py --name "$TEACHER_NAME" --model "$TEACHER_MODEL" "${COMMON[@]}" \
    $(resume_flag "$TEACHER_NAME") --optimizer sgd --lr 0.01 --epochs 200 --steps 80 120 --bigradual_n1 0 \
    --bigradual_n2 0 "${TEACHER_INIT[@]}" "${TEACHER_EXTRA[@]}"
else
  echo "== teacher: $TEACHER_RUN (given by TEACHER_CHECKPOINT)"
fi

echo "== student $STUDENT_MODEL -> $CHECKPOINT_DIR/$NAME"
"${LAUNCH[@]}" train.py --name "$NAME" --model "$STUDENT_MODEL" "${COMMON[@]}" $(resume_flag "$NAME") \
  --optimizer adamlion --lr 0.006 --epochs 300 --steps 80 120 200 --bigradual_n1 20 --bigradual_n2 20 \
  --teacher_path "$TEACHER_RUN" --kd_weight 2 "${STUDENT_WEIGHTS[@]}" "$@"

EVAL_ALTITUDE=()
[ "$DATASET" = sues ] && EVAL_ALTITUDE=(--altitude "$ALTITUDE")
EVAL_RUNS=("$NAME")
[ -z "${TEACHER_CHECKPOINT:-}" ] && EVAL_RUNS=("$TEACHER_NAME" "$NAME")
for run in "${EVAL_RUNS[@]}"; do
  echo "== evaluating $run"
  "$PYTHON" test.py --name "$run" --checkpoint_dir "$CHECKPOINT_DIR" --test_dir "$TEST_DIR" --mode "$EVAL_MODE" \
    --device "$DEVICE" "${EVAL_ALTITUDE[@]}" "${EVAL_EXTRA[@]}"
done
