#!/usr/bin/env bash
# One-shot GPU check (issue 17): environment, CUDA tests, stock-vs-flareseg speed and memory,
# fp16/bf16 labels.  Run from the repository root of a checkout (or a copy of one at $SRC) on the
# GPU machine; logs go to $OUT (default ./gpu_out).  Each step is time-boxed and the next one runs
# even if it failed.  Wheels of nnunetv2 and its missing deps in $WHL (optional), SimpleITK as a
# tar.xz in $SITK (optional; its wheel alone is 53 MB).
#   OUT=/tmp/o bash bench/gpu_check.sh
set -x
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
PY=${PY:-python3}
SRC=${SRC:-$PWD}
DEVICE=${DEVICE:-cuda}
SPEED_ARGS=${SPEED_ARGS:---plan paper --patch 128,128,128 --z 100 --xy 512 --cold}
PREC_ARGS=${PREC_ARGS:---z 80,200 --xy 256 --fit-steps 150}
T_TESTS=${T_TESTS:-90}; T_SPEED=${T_SPEED:-200}; T_PREC=${T_PREC:-110}

# (a) wheels
if [ -n "$WHL" ]; then
  { mkdir -p /tmp/site
    timeout 60 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHL"/*.whl
    [ -n "$SITK" ] && timeout 60 tar -xJf "$SITK" -C /tmp/site
    ls /tmp/site; } 2>&1 | tee "$OUT/install.log"
  export PYTHONPATH=/tmp/site:$SRC
else
  export PYTHONPATH=$SRC:$PYTHONPATH
fi
cd "$SRC" || exit 3

# (b) machine
{ nvidia-smi; nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv
  timeout 60 $PY -c "
import torch, numpy, sys
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'cudnn', torch.backends.cudnn.version(), 'numpy', numpy.__version__, 'available', torch.cuda.is_available())
if torch.cuda.is_available(): print(torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))
import nnunetv2, SimpleITK, flareseg, importlib.metadata as m
print('nnunetv2', m.version('nnunetv2'), 'SimpleITK', SimpleITK.Version_VersionString(), 'flareseg at', flareseg.__file__)
from flareseg.evaluation.gpu_memory import probe_backend
b = probe_backend(0)
print('gpu memory backend', b.name if b else 'none', 'card', b.card if b else '-')
"; } 2>&1 | tee "$OUT/env.log"

# (c) tests: gpu-marked ones, the predictor's equivalence tests (CPU-pinned, but on this image's
# torch), and the stage-6 timing fix
timeout "$T_TESTS" $PY -m pytest -q -p no:cacheprovider --continue-on-collection-errors -rfEs \
  tests/test_uncertainty.py tests/test_stage6_seconds.py tests/test_predictor.py -m "gpu or not slow" \
  2>&1 | tee "$OUT/tests.log"
echo "tests rc=${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"

# (d) stock nnUNetPredictor vs FastPredictor, warm and cold, paper-size network
timeout "$T_SPEED" $PY -m bench.predictor_speed --device "$DEVICE" $SPEED_ARGS --out "$OUT/predictor_speed.md" \
  2>&1 | tee "$OUT/speed.log"
echo "speed rc=${PIPESTATUS[0]}" | tee -a "$OUT/speed.log"

# (e) fp32 / fp16 / bf16 labels vs stock on the device; allocator peak vs NVML used
timeout "$T_PREC" $PY -m bench.gpu_precision --device "$DEVICE" $PREC_ARGS 2>&1 | tee "$OUT/precision.log"
echo "precision rc=${PIPESTATUS[0]}" | tee -a "$OUT/precision.log"
nvidia-smi --query-gpu=memory.used,memory.total --format=csv 2>&1 | tee -a "$OUT/env.log"
exit 0
