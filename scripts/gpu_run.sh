#!/usr/bin/env bash
# Every experiment the committed artifacts/ lack, on a GPU machine without TensorFlow (Keras 3 on
# JAX), with the one runner: `xray-transfer experiments run` (lib/xray_transfer/experiments.py holds
# the grid). It starts a Dask LocalCluster of several workers per GPU, each with its share of the
# GPU's memory; every fold is one task, in priority order; a worker keeps the dataset, the frozen
# outputs and the compiled models for the next task that shares them, and JAX's persistent
# compilation cache (.gpu/jax-cache, kept on the warm machine) spares a later call what an earlier
# one compiled. The benchmark runs last, in a call of its own with one worker and without the cache,
# so that plain fit holds the device alone and compiles as anyone's would.
#
# What travels (git-ignored, named in `carry`; `make gpu-stage` prepares it here):
#   .whl/                     keras, namex, optree, dask, distributed and their pure-Python
#                             dependencies (the machine has jax, h5py, rich...)
#   .gpu/dataset.npz          the dataset pack (`make pack`, 33 MiB)
#   .gpu/commit               the commit the tree is at (runs record it)
#   .gpu/<weights>.weights.h5 and .gpu/<weights>.json: an offline ImageNet weights file
#                             (models.OFFLINE_WEIGHTS) and its card, which the run records quote
# A call carries at most 64 MiB (8 paths); the four weights files (126 MiB) do not fit one call.
# Files carried once stay on the warm machine (and so do .gpu/out and .gpu/jax-cache), so a lease
# is several calls of this script, each carrying one more weights file:
#   1: .whl .gpu/dataset.npz .gpu/commit + MobileNet's file and card
#   2: VGG19's file and card;  3: Inception v3's;  4: Xception's;  5, 6, ...: nothing
# With no experiment named, a call makes what the committed artifacts/ lack and this machine can make
# (`xray-transfer experiments list --todo`) but the final models, whose .keras files cannot come
# back: name final/<backbone> to make one. An experiment whose weights file is not there is left out
# with a note; every run resumes from its folds. A new lease (a bare machine) starts again from call 1,
# and goes on where the last stopped if call 1 also carries .gpu/out (here: `tar xzf gpu-out.tgz -C .gpu`).
# book/how_to_reproduce.md ("Every experiment in one GPU lease") gives the exact calls.
#
# Output: .gpu/out/{runs,audit,models,benchmark}, laid out as artifacts/, grid-log.jsonl (a line per
# task: seconds, worker, device, backend, compilations) and gpu-log.txt (this script's log, every call
# of the lease: each ends with its total command time). Every 10 s, and at the end, $OUT/gpu-out.tgz
# holds them all (the .keras models stay behind: too large to come back), so what finished comes back
# even if the time limit strikes; $OUT/gpu-log.txt is this script's log; $OUT/jax-cache.tgz is JAX's
# compilation cache, where it packs into 16 MiB, for a later lease to carry (.gpu/jax-cache). Here:
#   make gpu-adopt TGZ=<files_at>/gpu-out.tgz    (it also unpacks the jax-cache.tgz beside it into .gpu/)
#
#   REMAKE=1 scripts/gpu_run.sh       every experiment of the book made again (issue 27's one-lease
#                                     check): the paper runs (VGG19's, MobileNet's and Inception v3's
#                                     as robustness/<backbone>/backend-jax, their twins made on JAX),
#                                     the audit runs, the final models and the GPU benchmark; `make
#                                     gpu-adopt` then compares each run with the committed one of the
#                                     same identity, fold by fold (gpu_plan.agreement)
#   TOGETHER="vgg19 xception" scripts/gpu_run.sh
#                                     also Table 2's run of each backbone named, its ten folds trained
#                                     together as one vmapped JAX program (`train --folds-together`),
#                                     timed, into .gpu/out/together/<backbone>: `make gpu-adopt` compares
#                                     it fold by fold with the committed run (agreement.json), adopts
#                                     nothing of it
#   FOLDS_TOGETHER=1 scripts/gpu_run.sh
#                                     the grid's task is a run, its missing folds trained together
#                                     (`experiments run --folds-together`), not a fold
#   SMOKE=1 scripts/gpu_run.sh        tiny settings, to check the script (runs on a CPU too)
#   scripts/gpu_run.sh NAME ...       only these experiments (`xray-transfer experiments list` names them)
#   WORKERS=4 scripts/gpu_run.sh      workers in all (default: 4 per GPU, 1 on a CPU)
#   BUDGET_S=180 scripts/gpu_run.sh   stop each `experiments run` after 180 s (the fold in progress
#                                     is lost, every finished one kept), so that a call ends, packs its
#                                     output and sends the compilation cache back well within its limit
# DATASET (default .gpu/dataset.npz), GPU_DIR (default .gpu) and PYTHON (default python3) can be set.
set -u -o pipefail
cd "$(dirname "$0")/.."  # the repository root: lib/ is imported from there
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
GPU_DIR=${GPU_DIR:-.gpu}; PYTHON=${PYTHON:-python3}
mkdir -p "$GPU_DIR"; GPU_DIR=$(cd "$GPU_DIR" && pwd)
if [ -d .whl ] && ! "$PYTHON" -c "import keras" 2>/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export XRAY_GIT_COMMIT=${XRAY_GIT_COMMIT:-$(cat "$GPU_DIR/commit" 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)}
export XRAY_WEIGHTS_DIR=${XRAY_WEIGHTS_DIR:-$GPU_DIR}  # the registered weights files, carried
# JAX's persistent compilation cache (documented jax config options, read from the environment).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$GPU_DIR/jax-cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-0.5}
export TF_CPP_MIN_LOG_LEVEL=2
R=$GPU_DIR/out; mkdir -p "$R"
XT=("$PYTHON" -m xray_transfer.cli)
NAMES=("$@")
[ ${#NAMES[@]} -eq 0 ] && [ "${REMAKE:-0}" = 1 ] && NAMES=(paper/xception paper/inception_resnet_v2 'audit/*'
  'robustness/*/backend-jax' 'final/*' benchmark/gpu)
[ ${#NAMES[@]} -eq 0 ] && mapfile -t NAMES < <("${XT[@]}" experiments list --todo | grep -v '^final/')
TRAIN=(); BENCH=()
for n in "${NAMES[@]}"; do case $n in benchmark/*) BENCH+=("$n") ;; *) TRAIN+=("$n") ;; esac; done
SMOKE_ARG=""; [ "${SMOKE:-0}" = 1 ] && SMOKE_ARG="--smoke"
pack() { tar czf "$OUT/.gpu-out.tgz" --exclude=keras -C "$GPU_DIR" out 2>/dev/null && mv "$OUT/.gpu-out.tgz" "$OUT/gpu-out.tgz"; }
(while sleep 10; do pack; done) &
PACKER=$!
t0=$SECONDS
{
  date -u +"start %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PYTHON" -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
  ls "$GPU_DIR"
  grid() {  # grid [nocache] ARGS...: one `experiments run`; nocache leaves JAX's compilation cache out
    local nocache=""; [ "$1" = nocache ] && { nocache=1; shift; }
    ${BUDGET_S:+timeout -s TERM "$BUDGET_S"} \
    ${nocache:+env -u JAX_COMPILATION_CACHE_DIR -u JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS} \
      "${XT[@]}" experiments run --dataset "${DATASET:-$GPU_DIR/dataset.npz}" --out "$R" --models "$GPU_DIR/keras" \
      $SMOKE_ARG --no-progress "$@" 2>&1 \
      | { grep --line-buffered -v -E "^(I0000|W0000|WARNING: All log)|cuda_timer" || true; }  # rc: Python's
  }
  rc=0
  [ ${#TRAIN[@]} -gt 0 ] && { grid ${WORKERS:+--workers $WORKERS} $([ "${FOLDS_TOGETHER:-0}" = 1 ] && echo --folds-together) \
    "${TRAIN[@]}" || rc=$?; }
  [ "$rc" = 124 ] && [ -n "${BUDGET_S:-}" ] && { echo "stopped after BUDGET_S=$BUDGET_S s: every finished fold is kept"; rc=0; }
  for b in ${TOGETHER:-}; do  # Table 2's settings, the folds together (SMOKE: as the grid's smoke settings)
    t1=$SECONDS
    ${BUDGET_S:+timeout -s TERM "$BUDGET_S"} "${XT[@]}" train --backbone "$b" --folds-together \
      --dataset "${DATASET:-$GPU_DIR/dataset.npz}" --out "$R/together/$b" \
      $([ "${SMOKE:-0}" = 1 ] && echo "--n-splits 2 --epochs 1 --limit 60 --image-size 75 100") \
      2>&1 | { grep --line-buffered -v -E "^(I0000|W0000|WARNING: All log)|cuda_timer" || true; }
    r=${PIPESTATUS[0]}; echo "together $b: $((SECONDS - t1)) s (rc $r)"; [ "$r" = 0 ] || [ "$r" = 124 ] || rc=$r
  done
  [ ${#BENCH[@]} -gt 0 ] && { grid nocache --workers 1 "${BENCH[@]}" || rc=$?; }
  echo "total command time: $((SECONDS - t0)) s (rc $rc)"
  # JAX's compilation cache, for the next lease's bare machine, where it fits the way back (16 MiB a file)
  if [ -d "$GPU_DIR/jax-cache" ]; then
    tar czf "$OUT/jax-cache.tgz" -C "$GPU_DIR" jax-cache
    size=$(stat -c %s "$OUT/jax-cache.tgz")
    echo "compilation cache: $(ls "$GPU_DIR/jax-cache" | wc -l) entries, $((size / 1024)) KiB packed" \
      "$([ "$size" -le $((16 * 1024 * 1024)) ] && echo "in jax-cache.tgz" || { rm "$OUT/jax-cache.tgz"; echo "(too large to come back)"; })"
  fi
  exit $rc
} 2>&1 | tee -a "$OUT/gpu-log.txt" "$R/gpu-log.txt"
rc=${PIPESTATUS[0]}
kill $PACKER 2>/dev/null; wait $PACKER 2>/dev/null
pack && echo "packed $(du -h "$OUT/gpu-out.tgz" | cut -f1)"
exit $rc
