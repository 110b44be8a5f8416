#!/bin/bash
# The steps of a GPU fold run on an H200 machine (one command there): 3-fold quality, all fold runs at once
# on the one GPU, at each input size of SIZES, then the CUDA inference timings of the first run's fold-0
# model. Results come back as $OUT/gpu_folds.json (every fold's scores) and $OUT/logs.tar.gz.
#   DATA: a downsized copy (benchmarks/downsize_data.py: the machine takes 64 MiB of files at most)
#   WHEELS: the packages the GPU image lacks, as cp312 wheels (smp, albumentations, the Lite wheels, ...)
#   SIZES (optional): input sizes, default 256; QUALITY_ARGS (optional): more quality.py flags (--no-tta)
#   FRAME (optional): a full-size frame to time; without it gpu_inference.py makes a synthetic one
#   [SIZES="256 352"] [FRAME=frame.jpeg] bash benchmarks/gpu_quality.sh DATA WHEELS OUT [EPOCHS] [RECIPES...]
set -u
DATA=$1 WHEELS=$2 OUT=$3 EPOCHS=${4:-40}
shift $(( $# < 4 ? $# : 4 ))
RECIPES=${*:-neopolyp reference}
SIZES=${SIZES:-256}
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TQDM_DISABLE=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import neopolyp_hf.training.recipes, torch; print('cuda', torch.cuda.is_available())" || exit 1
mkdir -p "$OUT/logs"
for size in $SIZES; do
  for recipe in $RECIPES; do
    for fold in 0 1 2; do  # small batches leave the GPU mostly idle: the runs share it well
      log="$OUT/logs/${size}px_$(echo "$recipe" | tr ':,=' '___')_fold$fold.log"
      timeout 480 python3 benchmarks/quality.py --data-dir "$DATA" --output-dir "$OUT/${size}px" --folds 3 \
        --only-folds $fold --epochs "$EPOCHS" --image-size "$size" ${QUALITY_ARGS:-} --recipes "$recipe" > "$log" 2>&1 &
    done
  done
done
wait
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for path in sorted(out.glob("*px/*/fold*/scores.json")):
    row = json.loads(path.read_text())
    for key in [k for k in row if k.endswith("_lesion_records")]:
        del row[key]  # every lesion call of the fold: large, and not needed for the table
    rows.append(row)
(out / "gpu_folds.json").write_text(json.dumps(rows, indent=1))
print(f"{len(rows)} fold runs scored")
PY
model=$(ls -d "$OUT"/*px/*/fold0/best | head -1)
timeout 60 python3 benchmarks/gpu_inference.py --model "$model" ${FRAME:+--image "$FRAME"} --repeats 30 \
  > "$OUT/logs/gpu_inference.txt" 2>&1
tar -czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
