#!/usr/bin/env bash
# GPU check: the paths a GPU user takes, in a few minutes on one GPU, ending in one summary table.
#   1. synthetic University-1652-layout data;
#   2. a ConvNeXt-atto teacher, then a distilled BiCrossNet-T student, both with --amp, the student
#      through all three bi-gradual phases;
#   3. test.py on the student in fp32 and --amp on the GPU and in fp32 on the CPU: the spread
#      between devices and precisions;
#   4. the training and feature-throughput benchmarks on the GPU.
# Without CUDA everything runs on the CPU and the script says what it skipped (CI runs it that way,
# with QUICK=1, so it stays alive).
#
# Environment [defaults]: GPU_CHECK_DIR [gpu_check_runs]  SIZE (training/eval input) [128]
#   EPOCHS [3]  QUICK=1 (tiny data and sizes, for CI)  PYTHON [.venv/bin/python]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
OUT=${GPU_CHECK_DIR:-gpu_check_runs}
EPOCHS=${EPOCHS:-3}
if [ "${QUICK:-0}" = 1 ]; then
  SIZE=${SIZE:-32}; GEN=(--train_places 6 --test_places 4 --distractor_places 1 --drones 2 --size 48)
  BATCH=3; DRAWS=1; BENCH=(--size 64 --batchsize 2 --steps 1); FEAT=(--size 64 --batch 2 --repeats 1)
else
  # 4 draws per class: 20 steps an epoch, so the float16 loss scale settles (up to ~16 skipped
  # steps from its start at 2^16) early in the first epoch.
  SIZE=${SIZE:-128}; GEN=(); BATCH=8; DRAWS=4; BENCH=(--size 256 --batchsize 8 --steps 5); FEAT=(--size 256 --batch 64)
fi
RUNS=$OUT/checkpoints
DATA=$OUT/data
HAS_CUDA=$("$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')
if [ "$HAS_CUDA" = 1 ]; then
  DEVICES=(cuda cuda cpu); AMPS=("" --amp "")
else
  echo "== no CUDA device: running on the CPU; skipped: AMP training (--amp is a no-op on CPU), GPU evaluation, GPU benchmarks"
  DEVICES=(cpu); AMPS=("")
fi

rm -rf "$OUT"
"$PYTHON" -m datasets.synthetic --layout university --out "$DATA" "${GEN[@]}"
TRAIN=(--checkpoint_dir "$RUNS" --data_dir "$DATA/train" --h "$SIZE" --w "$SIZE" --epochs "$EPOCHS"
       --batchsize "$BATCH" --sample_num "$DRAWS" --num_workers 2 --lr 0.001 --amp)
echo "== teacher (mccg_convnext_atto, --amp)"
"$PYTHON" train.py --name teacher --model mccg_convnext_atto --optimizer adam --bigradual_n1 0 --bigradual_n2 0 "${TRAIN[@]}"
echo "== student (bicrossnet_bnext_tiny, --amp, phases 1-2-3, distilled)"
"$PYTHON" train.py --name student --bigradual_n1 1 --bigradual_n2 2 --teacher_path "$RUNS/teacher" "${TRAIN[@]}"

for i in "${!DEVICES[@]}"; do
  echo "== test.py on ${DEVICES[$i]} ${AMPS[$i]:-(fp32)}"
  # shellcheck disable=SC2086
  "$PYTHON" test.py --name student --checkpoint_dir "$RUNS" --test_dir "$DATA/test" --mode both --num_workers 2 \
    --device "${DEVICES[$i]}" ${AMPS[$i]}
done

if [ "$HAS_CUDA" = 1 ]; then
  echo "== training throughput on the GPU (fp32, then AMP)"
  "$PYTHON" -m benchmarks.training_throughput --device cuda "${BENCH[@]}" | tee "$OUT/training_fp32.md"
  "$PYTHON" -m benchmarks.training_throughput --device cuda --amp "${BENCH[@]}" | tee "$OUT/training_amp.md"
  echo "== feature throughput on the GPU"
  "$PYTHON" -m benchmarks.feature_throughput --device cuda "${FEAT[@]}" | tee "$OUT/features.md"
fi

echo
echo "== summary: the same student checkpoint evaluated per device and precision"
"$PYTHON" scripts/precision_table.py "$RUNS/student"
