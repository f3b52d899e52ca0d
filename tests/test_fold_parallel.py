"""The folds of a run trained together (``xray_transfer.fold_parallel``: one vmapped JAX program)
give the run that training them one by one gives: the same predictions, history and identity.
Keras on JAX, so the runs happen in a subprocess (the suite's Keras runs on TensorFlow)."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from xray_transfer import train

pytest.importorskip("jax")

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from xray_transfer.data import CLASSES, Dataset
    from xray_transfer.train import cross_validate
    # 27 images, 4 folds: held-out folds of 7, 7, 7 and 6 images, so one fold's last batch is
    # another size than the others' (20 or 21 training images in batches of 8)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 9)
    images = rng.integers(0, 256, size=(27, 40, 53, 3), dtype=np.uint8)
    images[labels == 0] //= 2
    manifest = [{"file": f"{CLASSES[y]}/img{i:03d}.png", "patient_id": f"p{i}", "label": CLASSES[y]}
                for i, y in enumerate(labels)]
    ds = Dataset(images, labels.astype(np.int64), manifest, "0" * 63 + "2")
    root, backbone, lr = sys.argv[1], sys.argv[2], float(sys.argv[3])
    run = dict(backbone=backbone, n_splits=4, epochs=2, batch_size=8, image_size=(40, 53), seed=3,
               weights="none", learning_rate=lr)
    cross_validate(ds, f"{root}/apart", progress=False, **run)
    cross_validate(ds, f"{root}/together", progress=False, folds_together=True, **run)
""")


# Adam's first steps move every weight by about the learning rate whatever its gradient's size, so
# the rounding in a near-zero gradient (the vmapped convolutions add in another order) can flip a
# step's sign: MobileNet's run from random weights agrees to about the learning rate (1e-3 at 1e-3,
# exactly at 1e-7, measured on this CPU). It trains at 1e-6 here, so that a real difference (a
# BatchNorm statistic not updated, another batch order) shows; VGG19's head trains at 1e-3.
@pytest.mark.parametrize("backbone, learning_rate", [
    ("vgg19", 1e-3),      # the fast path: the frozen part's outputs cached, the head trained
    ("mobilenet", 1e-6),  # the whole network, frozen BatchNorm layers on the batch's statistics, trainable ones updated
])
def test_folds_trained_together_give_the_run_trained_one_by_one(tmp_path, backbone, learning_rate):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), backbone, str(learning_rate)], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    apart, together = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("apart", "together"))
    assert together["identity_sha256"] == apart["identity_sha256"]  # the same run, made faster
    assert together["folds_done"] == apart["folds_done"] == [0, 1, 2, 3]
    a, t = train.load_folds(tmp_path / "apart"), train.load_folds(tmp_path / "together")
    assert sorted({f["n_train"] % 8 for f in t}) == [4, 5]  # last batches of two sizes were stepped
    for fa, ft in zip(a, t):
        assert ft["test_file"] == fa["test_file"]
        assert fa["made_by"]["trained"] == "one fold at a time"
        assert ft["made_by"]["trained"] == "together: 4 folds as one compiled JAX program (jax.vmap)"
        np.testing.assert_allclose(ft["probs"], fa["probs"], atol=2e-5)
        for key in ("loss", "accuracy", "test_loss", "test_accuracy"):
            np.testing.assert_allclose(ft["history"][key], fa["history"][key], rtol=1e-4, atol=1e-5, err_msg=key)
        assert ft["confusion"] == fa["confusion"]


def test_folds_together_need_keras_on_jax(tmp_path):
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("the suite runs Keras on JAX here")
    ds = __import__("test_train").synthetic_dataset()
    with pytest.raises(RuntimeError, match="needs Keras on JAX.*KERAS_BACKEND=jax"):
        train.cross_validate(ds, tmp_path / "run", progress=False, folds_together=True, backbone="vgg19",
                             n_splits=2, epochs=1, batch_size=8, image_size=(40, 53), weights="none")
    assert not (tmp_path / "run").exists()  # refused before the run folder is made
