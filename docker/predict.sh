#!/bin/sh
# FLARE contract: every image in $INPUT_DIR -> $OUTPUT_DIR/<case>.nii.gz (case_0000.nii.gz -> case.nii.gz).
# POSIX sh (the challenge runs `sh predict.sh`). Paths are overridable for tests outside Docker:
#   INPUT_DIR=in OUTPUT_DIR=out MODEL_DIR=model FLARESEG="python -m flareseg.cli" sh docker/predict.sh
set -eu
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
MODEL_DIR="${MODEL_DIR:-/opt/model}"
FLARESEG="${FLARESEG:-flareseg}"
REPORT="${REPORT:-${TMPDIR:-/tmp}/flareseg_predict_report.json}"
DEVICE="${DEVICE:-}"   # empty: inference.device of a --config passed below, else auto

if [ ! -d "$INPUT_DIR" ]; then
    echo "predict.sh: input folder $INPUT_DIR does not exist" >&2
    exit 2
fi
mkdir -p "$OUTPUT_DIR"
# only label maps go to the output folder; the run report goes to $REPORT
# shellcheck disable=SC2086  # FLARESEG may be a command with arguments
exec $FLARESEG predict -i "$INPUT_DIR" -o "$OUTPUT_DIR" -m "$MODEL_DIR" ${DEVICE:+--device "$DEVICE"} \
    --report "$REPORT" -q "$@"
