#!/usr/bin/env bash
# The full reproduction on a GPU machine without TensorFlow: Keras 3 on JAX.
# Expects (carried, git-ignored): .whl/ (keras, namex, optree wheels), .gpu/dataset.npz
# (from `make pack`), .gpu/*.weights.h5 (offline weights that fit), .gpu/commit.
# Writes run folders under .gpu/out/ and, every few seconds, a tarball of them to
# $OUT/runs.tgz, so whatever finished comes back even if the time limit strikes.
# SMOKE=1 runs tiny settings to check the script itself.
set -u
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if [ -d .whl ] && ! python3 -c "import keras" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/lib${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export XRAY_GIT_COMMIT=$(cat .gpu/commit 2>/dev/null || echo unknown)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
python3 -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
EXTRA=""; [ "${SMOKE:-0}" = 1 ] && EXTRA="--limit 60 --n-splits 2 --epochs 1 --image-size 75 100"
R=.gpu/out; mkdir -p $R
(while sleep 10; do tar czf "$OUT/runs.tmp.tgz" -C .gpu out 2>/dev/null && mv "$OUT/runs.tmp.tgz" "$OUT/runs.tgz"; done) &
TARLOOP=$!
train() { local t0=$SECONDS; python3 -m xray_transfer.cli train --dataset .gpu/dataset.npz $EXTRA "$@" 2>&1 | grep -v -E "^(I0000|W0000|WARNING: All log)"; echo "== $* : $((SECONDS - t0)) s"; }
export XRAY_WEIGHTS_DIR=$PWD/.gpu  # the registered offline weights files (models.OFFLINE_WEIGHTS), carried
# Priority order: the paper's runs first, then the audit experiments, then the benchmark.
# STAGES picks which (a second session with little device time left ran "audit" alone).
for stage in ${STAGES:-paper audit bench}; do case $stage in
paper)
  train --backbone mobilenet --out $R/runs/mobilenet
  train --backbone vgg19 --out $R/runs/vgg19
  train --backbone xception --out $R/runs/xception
  train --backbone inception_resnet_v2 --out $R/runs/inception_resnet_v2 ;;
audit)
  train --backbone mobilenet --group-by-patient --out $R/audit/grouped-mobilenet
  train --backbone vgg19 --image-mask lungs_hidden --out $R/audit/lungs-hidden-vgg19
  train --backbone vgg19 --group-by-patient --out $R/audit/grouped-vgg19
  train --backbone mobilenet --image-mask lungs_hidden --out $R/audit/lungs-hidden-mobilenet ;;
bench)
  BL=""; [ "${SMOKE:-0}" = 1 ] && BL="--limit 60 --backbones vgg19"
  python3 -m xray_transfer.cli benchmark --dataset .gpu/dataset.npz --out $R/benchmark --epochs 3 $BL 2>&1 | grep -v -E "^(I0000|W0000)" ;;
esac; done
kill $TARLOOP 2>/dev/null
tar czf "$OUT/runs.tgz" -C .gpu out && echo "packed $(du -h "$OUT/runs.tgz" | cut -f1)"
