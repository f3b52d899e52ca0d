#!/usr/bin/env bash
# Every experiment of the book on the CPU, in priority order, resumable, across sessions:
# the paper runs, then the audit runs (BatchNorm comparison first), then the final models.
# The paper runs use batchnorm=keras2 (the default, the paper's most likely behaviour): only
# VGG19, which has no BatchNormalization, can use the cached fast path, so on 2 CPU cores the
# others take hours each; a GPU session runs scripts/gpu_run.sh instead.
# The jobs and their flags come from lib/xray_transfer/gpu_plan.py (`python -m
# xray_transfer.gpu_plan queue` prints them): the GPU plan's list, less the benchmark.
# Each cross-validation runs through `xray-transfer train` (finished folds are kept), then
# its training chapter is executed with papermill (it finds every fold done and renders).
# The audit chapter reads the runs and the final models, so it is executed again with every
# fold and model committed (artifacts/audit/audit.ipynb; tests/test_artifacts.py checks it).
#
#   scripts/cpu_queue.sh [JOB ...]      # default: all jobs; a job is e.g. paper/vgg19
#   REPORT=1 scripts/cpu_queue.sh JOB   # train nothing: render the page from the folds done so far
#
# REPO (default: this checkout) is where artifacts go; with COMMIT=1 every finished fold,
# page and model record is committed there as it appears (paths given, so other staged
# work is left alone). Run it from a clean clone so the runs record a clean commit:
#   git clone . /tmp/runner && REPO=$PWD COMMIT=1 /tmp/runner/scripts/cpu_queue.sh
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
REPO=${REPO:-$HERE}
BIN=${BIN:-$REPO/.venv/bin}
DATASET=${DATASET:-$REPO/data/dataset}
export PYTHONPATH="$HERE/lib${PYTHONPATH:+:$PYTHONPATH}" XRAY_WEIGHTS_DIR=${XRAY_WEIGHTS_DIR:-$(cd "$HERE/.." && pwd)/shared/weights}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1

nbpath() {  # a path as the chapters' kernel (working folder notebooks/) sees it: relative, no machine path
  realpath -m --relative-to="$HERE/notebooks" "$1"
}

commit() {  # commit these paths in REPO, retrying while another git command holds the index
  [ "${COMMIT:-0}" = 1 ] || return 0
  local msg=$1; shift
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    git -C "$REPO" add -- "$@" 2>/dev/null && { git -C "$REPO" diff --cached --quiet -- "$@" \
      || git -C "$REPO" commit -q -m "$msg" -- "$@"; } && return 0
    sleep 3
  done
  echo "could not commit $*" >&2
}

cv() {  # cv NAME OUTDIR "TRAIN FLAGS" "CHAPTER PARAMETERS": cross-validate, committing each fold, then render
  local name=$1 out=$2 flags=$3 params=$4
  local rel=${out#$REPO/}
  local n_before t0=$SECONDS
  mkdir -p "$out"
  if [ "${REPORT:-0}" = 1 ]; then
    render "$out" $params -p run_folds False && commit "$name (CPU): page rendered from the finished folds" "$rel"; return
  fi
  if [ "$(ls "$out"/fold-*.json 2>/dev/null | wc -l)" = 10 ] && [ -z "$(find "$out" -name 'fold-*.json' -newer "$out/training.ipynb" 2>/dev/null)" ] \
     && [ -f "$out/training.ipynb" ]; then echo "$name: done"; return 0; fi
  local n_start; n_start=$(ls "$out"/fold-*.json 2>/dev/null | wc -l)
  ( while sleep 30; do
      n=$(ls "$out"/fold-*.json 2>/dev/null | wc -l)
      if [ "$n" != "${n_before:-}" ]; then audit_page && commit "$name (CPU): $n of 10 folds" "$rel" "${AUDIT_PAGE[@]}"; n_before=$n; fi
    done ) &
  local watcher=$!
  "$BIN/xray-transfer" train --dataset "$DATASET" --out "$out" $flags
  local rc=$?
  kill $watcher 2>/dev/null; wait $watcher 2>/dev/null
  if [ $rc -ne 0 ]; then commit "$name (CPU): folds so far" "$rel"; return $rc; fi
  render "$out" $params || return 1
  local also=()
  if [ "$rel" = "artifacts/runs/$name" ]; then  # a paper run: Tables 1-3, README block and figure follow it
    (cd "$REPO" && "$BIN/python" -m xray_transfer.results --write >/dev/null \
      && "$BIN/python" -m xray_transfer.results --glance book/images/at_a_glance.png >/dev/null) || return 1
    also=(results README.md book/images/at_a_glance.png)
  fi
  audit_page || return 1
  local how="CPU, $((SECONDS - t0)) s this session"
  [ "$n_start" = 10 ] && how="folds made before (their records name the device), page rendered here"
  commit "$name complete ($how): folds, training chapter, tables" "$rel" "${also[@]}" "${AUDIT_PAGE[@]}"
}

AUDIT_PAGE=(artifacts/audit/audit.ipynb artifacts/audit/audit-inputs.json)
audit_page() {  # execute the audit chapter on REPO's runs and models into REPO/artifacts/audit
  local nb="$HERE/_build/papermill/audit-$$-$RANDOM.ipynb" tmp="$REPO/artifacts/audit/.audit.tmp.ipynb"
  mkdir -p "$HERE/_build/papermill" "$REPO/artifacts/audit"
  "$BIN/jupytext" --to ipynb -o "$nb" "$HERE/notebooks/audit.md" >/dev/null &&
  "$BIN/xray-transfer" execute --cwd "$HERE/notebooks" "$nb" "$tmp" -p output_dir "$(nbpath "$REPO/artifacts/audit")" \
    -p dataset_dir "$(nbpath "$DATASET")" -p runs_dir "$(nbpath "$REPO/artifacts/runs")" \
    -p audit_dir "$(nbpath "$REPO/artifacts/audit")" -p models_dir "$(nbpath "$REPO/data/models")" >/dev/null 2>&1 &&
  mv "$tmp" "$REPO/artifacts/audit/audit.ipynb" || { echo "audit chapter failed: see $tmp" >&2; return 1; }
  AUDIT_PAGE=(artifacts/audit/audit.ipynb artifacts/audit/audit-inputs.json)
  AUDIT_PAGE+=($(cd "$REPO" && ls artifacts/audit/adult-non-covid-*.csv 2>/dev/null))
  return 0  # (ls fails where no model has made its adult-X-ray calls yet)
}

render() {  # render OUTDIR [-p NAME VALUE ...]: execute the training chapter into OUTDIR
  local out=$1; shift
  local nb="$HERE/_build/papermill/training-$$-$RANDOM.ipynb"
  mkdir -p "$HERE/_build/papermill"
  "$BIN/jupytext" --to ipynb -o "$nb" "$HERE/notebooks/training.md" >/dev/null &&
  "$BIN/xray-transfer" execute --cwd "$HERE/notebooks" "$nb" "$out/.training.tmp.ipynb" \
    -p output_dir "$(nbpath "$out")" -p dataset_dir "$(nbpath "$DATASET")" "$@" >/dev/null 2>&1 &&
  mv "$out/.training.tmp.ipynb" "$out/training.ipynb"
}

mapfile -t PLAN < <("$BIN/python" -m xray_transfer.gpu_plan queue "$@")
[ ${#PLAN[@]} -gt 0 ] || exit 2  # an unknown job: gpu_plan named it
for line in "${PLAN[@]}"; do
  IFS=$'\t' read -r job kind out flags params <<< "$line"
  name=${job#*/}
  echo "== $(date -u +%H:%M:%S) $job"
  case $kind in
  cv) cv "$name" "$REPO/artifacts/$out" "$flags" "$params" ;;
  final)
    if "$BIN/python" -c "import json,sys,hashlib; r=json.load(open(sys.argv[1])); \
sys.exit(r['dataset']['manifest_sha256'] != hashlib.sha256(open(sys.argv[2],'rb').read()).hexdigest())" \
       "$REPO/artifacts/$out" "$DATASET/manifest.csv" 2>/dev/null; then echo "$name: done"; continue; fi
    mkdir -p "$REPO/data/models" "$REPO/artifacts/models"
    "$BIN/xray-transfer" final --dataset "$DATASET" $flags --out "$REPO/data/models/$name.keras" \
      && cp "$REPO/data/models/$name.json" "$REPO/artifacts/$out" && audit_page \
      && commit "final model $name (CPU): record, audit chapter" "artifacts/$out" "${AUDIT_PAGE[@]}" ;;
  esac || echo "!! $job failed (rc $?)" >&2
done
