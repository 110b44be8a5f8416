#!/bin/bash
# The steps of the GPU fold run on a lent H200 (one `device` call; that call ran an uncommitted
# copy of these steps, which also sent the fold-0 weights back as fp16 parts): 3-fold quality at
# 256 px, from scratch, all fold runs at once on the one GPU, then the CUDA inference timings.
#   DATA: a downsized copy (benchmarks/downsize_data.py: the call carries 64 MiB at most)
#   WHEELS: the packages the GPU image lacks, as cp312 wheels (smp, albumentations, ...)
#   FRAME (optional): a full-size frame to time; without it gpu_inference.py makes a synthetic one
#   [FRAME=frame.jpeg] bash benchmarks/gpu_quality.sh DATA WHEELS OUT [EPOCHS] [RECIPES...]
set -u
DATA=$1 WHEELS=$2 OUT=$3 EPOCHS=${4:-40}
shift $(( $# < 4 ? $# : 4 ))
RECIPES=${*:-neopolyp reference}
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p "$OUT/logs"
for recipe in $RECIPES; do
  for fold in 0 1 2; do  # small batches leave the GPU mostly idle: the six runs share it well
    timeout 400 python3 benchmarks/quality.py --data-dir "$DATA" --output-dir "$OUT" --folds 3 --only-folds $fold \
      --epochs "$EPOCHS" --image-size 256 --recipes "$recipe" > "$OUT/logs/${recipe}_fold$fold.log" 2>&1 &
  done
done
wait
grep -h "^{" "$OUT"/logs/*.log
model=$OUT/neopolyp/fold0/best
timeout 90 python3 benchmarks/gpu_inference.py --model "$model" ${FRAME:+--image "$FRAME"} --repeats 30 \
  | tee "$OUT/logs/gpu_inference.txt"
