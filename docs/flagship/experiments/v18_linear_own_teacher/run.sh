#!/bin/bash
# v18: v14's own recipe and teacher, student on resampling=linear; seeds 0 and 1.
set -euo pipefail
cd /work/main
export AGEGENDER_YUNET=/work/shared/models/yunet/yunet_s_640_640.onnx
B=.venv/bin
echo "start $(date -u)"
R=""; [ -f ../runs/clean_v2/last.pt ] && R="--resume"
[ -f ../runs/clean_v2/summary.yaml ] || $B/agegender train configs/flagship/v02.yaml --run-dir ../runs/clean_v2 $R -q -s precision=auto
echo "v02 done $(date -u)"
[ -f ../runs/teacher_v14/targets.npz ] || $B/python scripts/build/descriptor_teacher.py ../runs/clean_v2 --out ../runs/teacher_v14/targets.npz --work ../runs/teacher_acc
echo "teacher done $(date -u)"
for S in 0 1; do
  D=../runs/v18_linear_s$S
  R=""; [ -f $D/last.pt ] && R="--resume"
  [ -f $D/summary.yaml ] || $B/agegender train configs/flagship/v14.yaml --run-dir $D $R -q -s model_args.resampling=linear -s seed=$S
  echo "student s$S done $(date -u)"
  [ -f $D/v18_int8.onnx ] || $B/agegender export $D/best.pt $D/v18.onnx --int8 $D/v18_int8.onnx
  $B/agegender calibrate $D/v18_int8.onnx
  $B/python scripts/measure/compare_models.py $D/v18_int8.onnx src/agegender/weights/flagship_int8.onnx
  echo "compared s$S $(date -u)"
done
echo "end $(date -u)"
