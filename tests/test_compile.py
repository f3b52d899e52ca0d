"""Keras 3 on JAX (the GPU machine's backend), on the CPU: the trainer compiles once per model and
shape, not once per fold, nor once per run of the same model.

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
    from xray_transfer.train import get_trainer, make_config, make_folds, hide_lungs
    assert keras.backend.backend() == "jax"
    meter = _compile_meter()  # what the GPU plan logs per job
    compiles = lambda: meter()[0]
    counts = [7, 7, 8]  # 3 folds: test folds of 8, 7, 7 images; the 2nd fold brings a new last-batch shape
    labels = np.repeat([0, 1, 2], counts)
    images = np.random.default_rng(0).integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    cfg = make_config(backbone=sys.argv[1], n_splits=3, epochs=2, batch_size=4, image_size=(32, 32))
    store = {}  # as in the GPU plan: one trainer per model, reused by every run of it
    trainer = get_trainer(cfg, images, trainer_store=store)
    fold_of = make_folds(labels, 3, 0)
    out = {"setup": compiles(), "folds": [], "sizes": []}
    for k in range(3):
        before = compiles()
        trainer.fit_fold(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k), labels, fold_seed=k)
        out["folds"].append(compiles() - before)
        out["sizes"].append([int((fold_of != k).sum()), int((fold_of == k).sum())])
    # another run of the same model (the lungs-hidden audit run, say): other pixels, same trainer
    before = compiles()
    again = get_trainer({**cfg, "image_mask": "lungs_hidden"}, hide_lungs(images), trainer_store=store)
    out["same"] = again is trainer
    for k in range(3):
        again.fit_fold(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k), labels, fold_seed=k)
    out["second_run"] = compiles() - before
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
def test_jax_compiles_once_per_shape_not_per_fold_nor_per_run(backbone, fast):
    res = count_compilations(backbone)
    assert res["fast"] is fast
    assert res["sizes"] == [[14, 8], [15, 7], [15, 7]]
    first, second, third = res["folds"]
    assert first > 0  # the train and predict steps compile in the first fold ...
    # ... the second fold trains on 15 = 3x4 + 3 images, a new last-batch shape: its train step
    # compiles once more. Its 7 test images are predicted as a padded batch of 8, so the
    # prediction step compiles nothing new ...
    assert second == 1
    # ... and the third fold, with the second's shapes, compiles nothing.
    assert third == 0
    # Another run of the same model in the process reuses the trainer: nothing compiles.
    assert res["same"] and res["second_run"] == 0
