#!/bin/sh
# FLARE contract: every image in $INPUT_DIR -> $OUTPUT_DIR/<case>.nii.gz (case_0000.nii.gz -> case.nii.gz).
# POSIX sh (the challenge runs `sh predict.sh`); a thin wrapper around `flareseg predict`, whose exit
# status it returns (0 all cases written, 1 some failed and were reported, 2 refused before any work).
# Paths are overridable for tests outside Docker:
#   INPUT_DIR=in OUTPUT_DIR=out MODEL_DIR=model FLARESEG="python -m flareseg.cli" sh docker/predict.sh
#
# Privileges (docker/README.md, "Users and the output folder"): the image starts as root because the
# challenge mounts a root-owned outputs/. Started as root, the prediction itself (checkpoint loading,
# image parsing, the network) runs as the unprivileged $RUN_AS user:
#   - $OUTPUT_DIR writable for $RUN_AS: it writes there directly;
#   - otherwise (the FLARE case): it writes into a private staging folder and root then publishes each
#     finished file into $OUTPUT_DIR through flareseg's write guard (flareseg.inference.publish: checked
#     before the prediction against the inputs, the model and files predict did not write -- refused,
#     exit 2, unless --overwrite is among the arguments --; then copied to a hidden temp, verified,
#     recorded in $OUTPUT_DIR's ledger .flareseg-written.jsonl as predict's and renamed), so no
#     half-written file is ever visible there, a foreign file is never replaced, a rerun (staged or
#     direct) recognises its own files, and the mounted folder's owner and mode are left as they were;
#   - $RUN_AS missing or unable to read the inputs or the model: it runs as root (said on stderr).
# Started as any other user (docker run --user ...), it runs as that user, writing directly.
set -eu
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
# the exported, stock-loadable folder (flareseg export-model / stage-6); flareseg predict starts from
# the inference settings it carries (flareseg_inference.json: what stage-6 measured), then any
# --config/--set/flags passed to this script
MODEL_DIR="${MODEL_DIR:-/opt/model}"
FLARESEG="${FLARESEG:-flareseg}"
REPORT="${REPORT:-${TMPDIR:-/tmp}/flareseg_predict_report.json}"
DEVICE="${DEVICE:-}"   # empty: inference.device of a --config passed below, else the model's, else auto
RUN_AS="${RUN_AS-flare}"   # empty: never drop privileges
case "$FLARESEG" in   # the python that runs the publisher: FLARESEG's own when it is "PY -m flareseg.cli"
    *" -m flareseg.cli") PYTHON="${PYTHON:-${FLARESEG% -m flareseg.cli}}" ;;
    *) PYTHON="${PYTHON:-python3}" ;;
esac

drop=""
if [ "$(id -u)" = 0 ] && [ -n "$RUN_AS" ] && id -u "$RUN_AS" >/dev/null 2>&1 \
        && [ -e "$INPUT_DIR" ] && [ -e "$MODEL_DIR" ]; then   # missing: flareseg predict says so
    drop="--reuid=$(id -u "$RUN_AS") --regid=$(id -g "$RUN_AS") --clear-groups"
    # shellcheck disable=SC2086
    if ! unreadable=$(setpriv $drop find "$INPUT_DIR" "$MODEL_DIR" ! -readable -print -quit 2>&1) \
            || [ -n "$unreadable" ]; then
        echo "predict.sh: user $RUN_AS cannot read ${unreadable:-the inputs or the model}; predicting as root" >&2
        drop=""
    fi
fi

# as_user CMD...: run CMD as $RUN_AS when privileges are dropped, else as we are
as_user() {
    if [ -n "$drop" ]; then
        # shellcheck disable=SC2086
        HOME="$(getent passwd "$RUN_AS" | cut -d: -f6)" setpriv $drop "$@"
    else
        "$@"
    fi
}

# predict OUT [ARGS...]: only label maps go to OUT; the run report goes to $REPORT
predict() {
    out=$1
    shift
    # shellcheck disable=SC2086  # FLARESEG may be a command with arguments
    as_user $FLARESEG predict -i "$INPUT_DIR" -o "$out" -m "$MODEL_DIR" ${DEVICE:+--device "$DEVICE"} \
        --report "$REPORT" -q "$@"
}

# direct: not dropping, $OUTPUT_DIR writable for $RUN_AS, or the input folder itself (mounted twice),
# which flareseg predict refuses before any work (publishing would bypass that check)
if [ -z "$drop" ] || [ "$OUTPUT_DIR" -ef "$INPUT_DIR" ] \
        || setpriv $drop test -d "$OUTPUT_DIR" -a -w "$OUTPUT_DIR" -a -x "$OUTPUT_DIR"; then
    rc=0
    predict "$OUTPUT_DIR" "$@" || rc=$?
    exit "$rc"
fi

# staging: $RUN_AS predicts into a private folder, root publishes the finished files through the
# write guard (flareseg.inference.publish), which is asked first, before any work
overwrite=""
for a in "$@"; do
    [ "$a" != "--overwrite" ] || overwrite="--overwrite"
done
rc=0
# shellcheck disable=SC2086
$PYTHON -m flareseg.inference.publish check "$INPUT_DIR" "$OUTPUT_DIR" "$MODEL_DIR" $overwrite || rc=$?
[ "$rc" -eq 0 ] || exit "$rc"
stage=""
cleanup() {
    [ -z "$stage" ] || rm -rf "$stage"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
stage=$(mktemp -d "${TMPDIR:-/tmp}/flareseg-stage.XXXXXX")
chown "$(id -u "$RUN_AS"):$(id -g "$RUN_AS")" "$stage"
predict "$stage/out" "$@" || rc=$?
if [ "$rc" -le 1 ] && [ -d "$stage/out" ]; then   # 0 or 1: the written cases are complete files
    prc=0
    # shellcheck disable=SC2086
    $PYTHON -m flareseg.inference.publish publish "$stage/out" "$OUTPUT_DIR" "$INPUT_DIR" "$MODEL_DIR" \
        $overwrite || prc=$?
    [ "$prc" -eq 0 ] || rc=$prc
fi
exit "$rc"
