"""Keras 3 on JAX (the GPU machine's backend), on the CPU: the trainer compiles once per model and
shape, not once per fold.

Compilations are counted as the GPU plan logs them (``gpu_plan._compile_meter``), with
``jax.monitoring``: JAX records the event ``/jax/core/compile/backend_compile_duration`` for
every program it hands to XLA to compile.
The check runs in a subprocess because the suite's Keras runs on TensorFlow.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json, sys
    import keras
    import numpy as np
    from xray_transfer.gpu_plan import _compile_meter
    from xray_transfer.train import Trainer, make_config, make_folds
    assert keras.backend.backend() == "jax"
    meter = _compile_meter()  # what the GPU plan logs per job
    compiles = lambda: meter()[0]
    counts = [7, 7, 8]  # 3 folds: test folds of 8, 7, 7 images; the 2nd fold brings new last-batch shapes
    labels = np.repeat([0, 1, 2], counts)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    cfg = make_config(backbone=sys.argv[1], n_splits=3, epochs=2, batch_size=4, image_size=(32, 32))
    trainer = Trainer(cfg, images)
    fold_of = make_folds(labels, 3, 0)
    out = {"setup": compiles(), "folds": [], "sizes": []}
    for k in range(3):
        before = compiles()
        trainer.fit_fold(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k), labels, fold_seed=k)
        out["folds"].append(compiles() - before)
        out["sizes"].append([int((fold_of != k).sum()), int((fold_of == k).sum())])
    out["fast"] = trainer.fast
    print("RESULT " + json.dumps(out))
""")


def count_compilations(backbone):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)  # count real compilations, not cache hits
    proc = subprocess.run([sys.executable, "-c", SCRIPT, backbone], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.parametrize("backbone, fast", [
    ("vgg19", True),  # VGG19's deep cutoff: the tail trains on cached frozen outputs
    ("mobilenet", False),  # keras2 BatchNorm: the whole network runs on every batch
])
def test_jax_compiles_once_per_shape_not_per_fold(backbone, fast):
    res = count_compilations(backbone)
    assert res["fast"] is fast
    assert res["sizes"] == [[14, 8], [15, 7], [15, 7]]
    first, second, third = res["folds"]
    assert first > 0  # the train, test and predict steps compile in the first fold ...
    # ... the second fold has other last-batch shapes (15 = 3x4 + 3 train, 7 = 4 + 3 test), so
    # those steps compile again: the counter sees compilations where there are new shapes ...
    assert 0 < second <= first
    # ... and the third fold, with the second's shapes, compiles nothing.
    assert third == 0
