#!/usr/bin/env bash
# The lent GPU machine's last call (docs/gpu.md): extract the pack's parts that came with this call, install the
# wheels the machine's image lacks, write the packed split for the extracted folder, and train CONFIG there with
# the data in the device's memory, for at most LIMIT seconds; the run's small files are copied to $OUT, which comes
# back. Run again on the same warm machine, it resumes the run.
#   bash scripts/build/device_teacher.sh configs/flagship/teacher_gpu.yaml [-s KEY=VALUE ...]
# Paths are relative to the repository's root. Environment: PACK (default .pack), DATA (where the parts are
# extracted), RUN (the run folder), LIMIT (seconds of training, default 480, inside the device tool's 600 s a call),
# PYTHON (default python3), OUT (default RUN/out).
set -euo pipefail
cd "$(dirname "$0")/../.."  # the repository's root: CONFIG, PACK and the package's src/ are read from there
config=${1:?usage: device_teacher.sh CONFIG [-s KEY=VALUE ...]}
shift
pack=${PACK:-.pack}
data=${DATA:-/tmp/agegender/UTKFace}
run=${RUN:-/tmp/agegender/run}
limit=${LIMIT:-480}
python=${PYTHON:-python3}
out=${OUT:-$run/out}
mkdir -p "$data" "$out"
for part in "$pack"/part-*.zip; do
  if [ -e "$part" ]; then "$python" -m zipfile -e "$part" "$data"; fi
done
if compgen -G "$pack/wheels/*.whl" > /dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/agegender/site \
    "$pack"/wheels/*.whl
  export PYTHONPATH=/tmp/agegender/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
export AGEGENDER_CACHE=${AGEGENDER_CACHE:-/tmp/agegender/cache}
"$python" scripts/build/device_pack.py finish "$pack" "$data"
resume=()
if [ -f "$run/last.pt" ]; then resume=(--resume); fi
status=0
timeout "$limit" "$python" -m agegender.cli train "$config" --run-dir "$run" -q -s "data.root=$data" "${resume[@]}" \
  "$@" || status=$?
for name in best.pt history.csv summary.yaml config.yaml curves.png; do
  if [ -f "$run/$name" ]; then cp "$run/$name" "$out/"; fi
done
if [ "$status" = 124 ]; then
  echo "device_teacher.sh: training stopped after $limit s; the same call on the same warm machine resumes it" >&2
fi
exit "$status"
