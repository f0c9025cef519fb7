#!/usr/bin/env bash
# One script for the first GPU (issues 17, 26): every step time-boxed, the whole run within
# $TOTAL seconds (default 540 = 9 minutes), one summary table at the end ($OUT/summary.md).
#   (a) environment: python/torch/CUDA/cuDNN, cards, NVML backend
#   (b) one-device training on configs/tiny.yaml: stages 1-5 (stage 1 fine, stage 5 coarse with
#       CutMix), $EPOCHS epochs each, torch.compile/AMP/cudnn/workers as configured; then stage 6
#   (c) `flareseg efficiency` on the trained coarse model (FLARE cadence, a process per case)
#   (d) fp32/fp16/bf16 labels vs stock (bench.gpu_precision)                        [CUDA]
#   (e) paper-size stock vs flareseg, warm and cold, NVML peak (bench.predictor_speed) [CUDA]
#   (f) torchrun stage-5 with CutMix, 2 ranks (NCCL)                                  [>= 2 GPUs]
# Run from the repository root (or a copy at $SRC); logs and results in $OUT (default ./gpu_out).
# DEVICE=cpu runs (a)-(c) on the CPU and prints "skipped: no CUDA" for (d)-(f): the dry run that
# shows the script works before a GPU is at hand.  Optional: wheels in $WHL, SimpleITK tar.xz in $SITK.
#   OUT=/tmp/o bash bench/gpu_check.sh            DEVICE=cpu OUT=/tmp/o bash bench/gpu_check.sh
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}; [ -x .venv/bin/python ] && [ "$PY" = python3 ] && PY=$PWD/.venv/bin/python
SRC=${SRC:-$PWD}
DEVICE=${DEVICE:-cuda}
TOTAL=${TOTAL:-540}
EPOCHS=${EPOCHS:-2}
WORK=${WORK:-$OUT/work}
SPEED_ARGS=${SPEED_ARGS:---plan paper --patch 128,128,128 --z 100 --xy 512 --cold}
PREC_ARGS=${PREC_ARGS:---z 80 --xy 256 --fit-steps 150}
T_ENV=${T_ENV:-30}; T_TRAIN=${T_TRAIN:-240}; T_EFF=${T_EFF:-60}; T_PREC=${T_PREC:-90}; T_SPEED=${T_SPEED:-150}
T_DDP=${T_DDP:-120}
START=$(date +%s)
SUMMARY="$OUT/summary.tsv"; : > "$SUMMARY"

if [ -n "$WHL" ]; then
  { mkdir -p /tmp/site
    timeout 60 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
    [ -n "$SITK" ] && timeout 60 tar -xJf "$SITK" -C /tmp/site; } > "$OUT/install.log" 2>&1
  export PYTHONPATH=/tmp/site:$SRC
else
  export PYTHONPATH=$SRC${PYTHONPATH:+:$PYTHONPATH}
fi
cd "$SRC" || exit 3

# step NAME BUDGET_S NEEDS(-|cuda|2gpu) LOG COMMAND...: run time-boxed, record one summary row
step() {
  local name=$1 budget=$2 needs=$3 log=$4; shift 4
  local left=$(( TOTAL - ($(date +%s) - START) ))
  if [ "$needs" = cuda ] && [ "$CUDA" != 1 ]; then
    printf '%s\tskipped: no CUDA\t-\t\n' "$name" >> "$SUMMARY"; echo "== $name: skipped: no CUDA"; return 0
  fi
  if [ "$needs" = 2gpu ] && [ "${NGPU:-0}" -lt 2 ]; then
    local why="skipped: fewer than 2 GPUs"; [ "$CUDA" != 1 ] && why="skipped: no CUDA"
    printf '%s\t%s\t-\t\n' "$name" "$why" >> "$SUMMARY"; echo "== $name: $why"; return 0
  fi
  if [ "$left" -lt 10 ]; then
    printf '%s\tskipped: %s s budget spent\t-\t\n' "$name" "$TOTAL" >> "$SUMMARY"; return 0
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  echo "== $name (at most ${budget} s) -> $log"
  local t0; t0=$(date +%s%N)
  timeout -k 5 "$budget" "$@" > "$log" 2>&1
  local rc=$? secs; secs=$(awk -v a="$t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}')
  local status="ok"
  [ $rc -ne 0 ] && status="failed (exit $rc)"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="timed out after ${budget} s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$(tail -n 1 "$log" | tr '\t' ' ' | cut -c1-150)" >> "$SUMMARY"
  [ $rc -ne 0 ] && tail -n 5 "$log"
  return 0
}

# (a) environment
CUDA=0; NGPU=0
if [ "$DEVICE" != cpu ]; then
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0)
  [ "${NGPU:-0}" -ge 1 ] && CUDA=1
fi
step "(a) environment" "$T_ENV" - "$OUT/env.log" $PY -c "
import sys, torch, numpy
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'cuda available', torch.cuda.is_available())
for i in range(torch.cuda.device_count()):
    print('cuda:%d' % i, torch.cuda.get_device_properties(i))
import nnunetv2, SimpleITK, flareseg, importlib.metadata as m
from flareseg.evaluation.gpu_memory import probe_backend
b = probe_backend(0) if torch.cuda.is_available() else None
print('nnunetv2', m.version('nnunetv2'), 'SimpleITK', SimpleITK.Version_VersionString(),
      'gpu memory backend', b.name if b else 'none', b.card if b else '')
print('device $DEVICE, %d CUDA device(s)' % torch.cuda.device_count())"

# (b) training on the tiny config, then stage 6 (one process, one device)
DEV=$DEVICE; [ "$CUDA" = 1 ] && DEV=cuda
SETS=(--set "train_fine.device=$DEV" --set "train_coarse.device=$DEV" --set "inference.device=$DEV"
      --set "train_fine.epochs=$EPOCHS" --set "train_coarse.epochs=$EPOCHS")
step "(b) train stages 1-5 + stage 6, tiny, $EPOCHS epochs each ($DEV)" "$T_TRAIN" - "$OUT/train.log" \
  $PY -m flareseg.pipeline all --config configs/tiny.yaml --work "$WORK" "${SETS[@]}"
MODEL=$(ls -d "$WORK"/stage-5-coarse/nnUNet_results/*/FlareSegTrainer__nnUNetPlans__coarse 2>/dev/null | head -n 1)
[ -n "$MODEL" ] && $PY - "$WORK" > "$OUT/train_times.log" 2>&1 <<'EOF'
import json, sys, pathlib
for m in sorted(pathlib.Path(sys.argv[1]).glob("stage-*/manifest.json")):
    d = json.loads(m.read_text()); t = d.get("timings") or d.get("seconds") or {}
    print(m.parent.name, json.dumps(t)[:300])
EOF

# (c) FLARE-style efficiency of the trained coarse model: a fresh process per case
VAL=$WORK/stage-1-fine/phantoms/imagesVal
if [ -n "$MODEL" ] && [ -d "$VAL" ]; then
  step "(c) flareseg efficiency, coarse model ($DEV)" "$T_EFF" - "$OUT/efficiency.log" \
    $PY -m flareseg.cli efficiency --inputs "$VAL" --out "$OUT/efficiency" --sampling official --timeout 60 -- \
      $PY -m flareseg.cli predict -i "{input}" -o "{output}" -m "$MODEL" --device "$DEV" -q
else
  printf '(c) flareseg efficiency\tskipped: no trained model from (b)\t-\t\n' >> "$SUMMARY"
fi

# (d) fp32 / fp16 / bf16 labels vs stock on the device
step "(d) fp16/bf16 labels vs stock" "$T_PREC" cuda "$OUT/precision.log" \
  $PY -m bench.gpu_precision --device cuda $PREC_ARGS

# (e) stock nnUNetPredictor vs FastPredictor, paper-size network, warm and cold, NVML peak
step "(e) paper-size stock vs flareseg" "$T_SPEED" cuda "$OUT/speed.log" \
  $PY -m bench.predictor_speed --device cuda $SPEED_ARGS --out "$OUT/predictor_speed.md"

# (f) stage-5 with CutMix under torchrun, 2 ranks on 2 GPUs
step "(f) torchrun stage-5 + CutMix, 2 ranks" "$T_DDP" 2gpu "$OUT/ddp.log" \
  $PY -m torch.distributed.run --standalone --nproc-per-node 2 -m flareseg.pipeline 5 --config configs/tiny.yaml \
    --work "$WORK" "${SETS[@]}" --set train_coarse.gpus=2 --force

# summary
{ echo "| step | status | seconds | last line of its log |"; echo "|---|---|---|---|"
  awk -F'\t' '{printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4}' "$SUMMARY"
  echo; echo "total $(( $(date +%s) - START )) s of $TOTAL s; device $DEVICE; logs in $OUT"
  [ -s "$OUT/train_times.log" ] && { echo; echo "stage seconds of (b):"; echo '```'; cat "$OUT/train_times.log"; echo '```'; }
  } | tee "$OUT/summary.md"
exit 0
