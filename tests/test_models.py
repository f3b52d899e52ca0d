"""Tests of xray_transfer.models: Table 1 as built (cutoffs, heads), the fast-path split, weights."""
import hashlib
import json
from pathlib import Path

import keras
import numpy as np
import pytest

from xray_transfer import models

KEYS = [b.key for b in models.TABLE1]
#: Table 1 as printed, typed independently of the registry so a wrong registry fails.
PAPER_TABLE1 = {
    "vgg19": dict(n_layers=22, cutoff=18, hidden=(1024,)),
    "mobilenet": dict(n_layers=86, cutoff=10, hidden=(1000, 750)),
    "inception_v3": dict(n_layers=311, cutoff=249, hidden=(1000,)),
    "xception": dict(n_layers=132, cutoff=120, hidden=(1000, 750)),
    "inception_resnet_v2": dict(n_layers=780, cutoff=730, hidden=()),
}
#: Smallest size every backbone accepts (Inception, Xception and IRv2 need >= 75 px).
SHAPE = (75, 100, 3)


@pytest.fixture(scope="module")
def built():
    """Each backbone built once at SHAPE with random weights, shared by the tests of this module."""
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = models.build_model(key, input_shape=SHAPE, weights="none", seed=0)
        return cache[key]

    return get


def test_registry_matches_table1():
    assert KEYS == list(PAPER_TABLE1)
    for key, row in PAPER_TABLE1.items():
        spec = models.get_backbone(key)
        assert (spec.n_layers, spec.cutoff, spec.hidden) == (row["n_layers"], row["cutoff"], row["hidden"])


@pytest.mark.parametrize("key", KEYS)
def test_base_has_table1_layer_count_and_head_follows_it(key, built):
    model, spec = built(key), models.get_backbone(key)
    head = [layer.name for layer in model.layers[spec.n_layers:]]
    assert all(name.startswith("head_") for name in head), head
    assert not any(layer.name.startswith("head_") for layer in model.layers[:spec.n_layers])
    assert len(model.layers) - len(head) == PAPER_TABLE1[key]["n_layers"]


@pytest.mark.parametrize("key", KEYS)
def test_layers_below_cutoff_frozen_and_the_rest_trainable(key, built):
    model, cutoff = built(key), PAPER_TABLE1[key]["cutoff"]
    assert models.n_frozen(model) == cutoff
    assert not any(layer.trainable for layer in model.layers[:cutoff])
    assert all(layer.trainable for layer in model.layers[cutoff:])
    # the classifier and the trainable base layers hold all trainable weights
    frozen_ids = {id(w) for layer in model.layers[:cutoff] for w in layer.weights}
    assert frozen_ids.isdisjoint(id(w) for w in model.trainable_weights)


@pytest.mark.parametrize("key", KEYS)
def test_head_has_table1_dense_sizes_dropout_only_with_two_hidden_and_softmax(key, built):
    model, spec = built(key), models.get_backbone(key)
    head = model.layers[spec.n_layers:]
    dense = [layer for layer in head if isinstance(layer, keras.layers.Dense)]
    hidden, out = dense[:-1], dense[-1]
    assert tuple(d.units for d in hidden) == PAPER_TABLE1[key]["hidden"]
    assert all(d.activation.__name__ == "relu" for d in hidden)
    dropouts = [layer for layer in head if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == (1 if len(PAPER_TABLE1[key]["hidden"]) == 2 else 0)
    if dropouts:  # between the two hidden layers
        names = [layer.name for layer in head]
        assert names.index("head_dense_1") < names.index("head_dropout") < names.index("head_dense_2")
        assert dropouts[0].rate == 0.5
    assert out.units == 3 and out.activation.__name__ == "softmax"
    assert tuple(model.output.shape) == (None, 3)


@pytest.mark.parametrize("key", KEYS)
def test_split_at_cutoff_composes_to_the_full_model(key, built):
    model, cutoff = built(key), PAPER_TABLE1[key]["cutoff"]
    frozen, tail = models.split_at_cutoff(model, cutoff)
    # Xception's residual connection crosses its cutoff: two tensors go from frozen part to tail
    assert len(frozen.outputs) == (2 if key == "xception" else 1)
    # the tail shares (not copies) the model's trainable weights, so training it trains the model
    model_ids = {id(w) for w in model.trainable_weights}
    assert {id(w) for w in tail.trainable_weights} == model_ids
    assert not frozen.trainable_weights
    x = np.random.default_rng(0).uniform(-1, 1, size=(2, *SHAPE)).astype("float32")
    full = keras.ops.convert_to_numpy(model(x, training=False))
    feats = frozen(x, training=False)
    parts = keras.ops.convert_to_numpy(tail(feats, training=False))
    np.testing.assert_allclose(parts, full, atol=1e-5)
    np.testing.assert_allclose(full.sum(axis=1), 1.0, atol=1e-5)


def test_split_at_cutoff_without_crossing_tensor_raises(built):
    model = built("vgg19")
    with pytest.raises(ValueError, match="no tensor crosses cutoff"):
        models.split_at_cutoff(model, 0)


def test_same_seed_builds_same_initial_weights():
    a = models.build_model("mobilenet", input_shape=(32, 43, 3), seed=3)
    b = models.build_model("mobilenet", input_shape=(32, 43, 3), seed=3)
    c = models.build_model("mobilenet", input_shape=(32, 43, 3), seed=4)
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vb))
    assert any(not np.array_equal(keras.ops.convert_to_numpy(va), keras.ops.convert_to_numpy(vc))
               for va, vc in zip(a.weights, c.weights))


# ---------------------------------------------------------------- weights


@pytest.fixture
def base_weights_file(tmp_path):
    """A .weights.h5 of a MobileNet base at 32x43, initialised with another seed than build_model's."""
    keras.utils.set_random_seed(123)
    base = keras.applications.MobileNet(include_top=False, weights=None, input_shape=(32, 43, 3))
    path = tmp_path / "x.weights.h5"
    base.save_weights(str(path))
    return path, base


def test_local_weights_file_initialises_the_base(base_weights_file):
    path, base = base_weights_file
    loaded = models.build_model("mobilenet", input_shape=(32, 43, 3), weights=str(path), seed=0)
    random = models.build_model("mobilenet", input_shape=(32, 43, 3), weights="none", seed=0)
    n = models.get_backbone("mobilenet").n_layers
    differs = False
    for i in range(n):
        want = base.layers[i].get_weights()
        got = loaded.layers[i].get_weights()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
        differs |= any(not np.array_equal(r, w) for r, w in zip(random.layers[i].get_weights(), want))
    assert differs, "the file's weights equal a random build's: the test could not tell loading from not"
    # the frozen part, in particular, is the file's
    cutoff = models.get_backbone("mobilenet").cutoff
    assert models.n_frozen(loaded) == cutoff
    assert any(loaded.layers[i].get_weights() for i in range(cutoff))


def test_weights_provenance_records_file_hash_and_card(base_weights_file):
    path, _ = base_weights_file
    plain = models.weights_provenance(str(path))
    assert plain["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert plain["file"] == "x.weights.h5" and plain["kind"] == "file"
    assert plain["missing_tensors"] is None
    card = {"missing_tensors": ["conv1/kernel"], "missing_parameters": 864, "origin": "test fixture"}
    (path.parent / "x.json").write_text(json.dumps(card))
    prov = models.weights_provenance(path)
    assert prov["missing_tensors"] == ["conv1/kernel"]
    assert prov["missing_parameters"] == 864 and prov["origin"] == "test fixture"
    assert prov["kind"] == "partial imagenet file" and prov["complete_imagenet"] is False
    assert prov["sha256"] == plain["sha256"]


def test_weights_provenance_names_the_file_without_a_machine_path(base_weights_file, monkeypatch):
    """A record says where its weights came from as ``$XRAY_WEIGHTS_DIR/<file>``, not as this
    machine's absolute path (a reader's clone has neither ``/work`` nor this tmp folder)."""
    from xray_transfer.provenance import MACHINE_PATH, portable_path

    path, _ = base_weights_file
    monkeypatch.setenv("XRAY_WEIGHTS_DIR", str(path.parent))
    assert models.weights_provenance(str(path))["requested"] == "$XRAY_WEIGHTS_DIR/x.weights.h5"
    monkeypatch.delenv("XRAY_WEIGHTS_DIR")
    assert models.weights_provenance(str(path))["requested"] == "x.weights.h5"  # elsewhere: the name only
    repo = Path(models.__file__).resolve().parents[2]
    assert portable_path(repo / "artifacts" / "runs" / "vgg19") == "artifacts/runs/vgg19"
    assert portable_path("../data/dataset") == "../data/dataset" and portable_path("none") == "none"
    assert MACHINE_PATH.search("weights: /work/shared/weights/x.h5")
    assert not MACHINE_PATH.search("https://github.com/work/x and $XRAY_DATA_DIR/cohen and ../data/dataset")


def test_weights_provenance_of_none_and_imagenet():
    none = models.weights_provenance("none")
    assert none["kind"] == "none" and none["sha256"] is None and none["complete_imagenet"] is False
    assert models.weights_provenance(None) == none
    imagenet = models.weights_provenance("imagenet")
    assert imagenet["complete_imagenet"] is True and imagenet["missing_tensors"] == []


def test_missing_weights_file_raises_naming_the_path(tmp_path):
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match="nope.weights.h5"):
        models.build_model("mobilenet", input_shape=(32, 43, 3), weights=str(missing))


@pytest.mark.parametrize("key, ctor", [("mobilenet", "MobileNet"), ("vgg19", "VGG19")])
def test_imagenet_offline_raises_weights_unavailable_naming_local_option(monkeypatch, key, ctor):
    real = getattr(keras.applications, ctor)

    def offline(*args, weights=None, **kwargs):
        if weights == "imagenet":
            raise OSError("URL fetch failure: no network")
        return real(*args, weights=weights, **kwargs)

    monkeypatch.setattr(keras.applications, ctor, offline)
    with pytest.raises(models.WeightsUnavailable, match=r"weights=<path") as err:
        models.build_model(key, input_shape=(32, 43, 3), weights="imagenet")
    msg = str(err.value)
    assert "OSError" in msg and "weights='none'" in msg
    assert models.OFFLINE_WEIGHTS[key].file in msg


SHARED_WEIGHTS = models.DEFAULT_WEIGHTS_DIR


@pytest.mark.parametrize("key", sorted(models.OFFLINE_WEIGHTS))
def test_registered_offline_weights_match_their_files_and_cards(key):
    reg = models.OFFLINE_WEIGHTS[key]
    path = SHARED_WEIGHTS / reg.file
    assert path.is_file(), f"{path} missing: ../shared/weights must sit beside the repository"
    assert models.resolve_weights(key, "offline", SHARED_WEIGHTS) == str(path)
    prov = models.weights_provenance(path)
    assert prov["sha256"] == reg.sha256, "the file changed: check its card and update OFFLINE_WEIGHTS"
    assert prov["label"] == reg.label == models.init_label(prov)
    card = json.loads(path.with_name(reg.file.replace(".weights.h5", ".json")).read_text())
    assert card["sha256"] == reg.sha256
    complete = not card["missing_tensors"]
    assert ("partial" not in reg.label) == complete
    assert prov["missing_tensors"] == card["missing_tensors"]


def test_resolve_weights_offline_without_file_says_where(tmp_path, monkeypatch):
    monkeypatch.delenv(models.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"XRAY_WEIGHTS_DIR.*xception_imagenet"):
        models.resolve_weights("xception", "offline", tmp_path)
    assert models.resolve_weights("inception_resnet_v2", "offline", tmp_path) == "none"
    assert models.resolve_weights("vgg19", "none") == "none"
    monkeypatch.setenv(models.WEIGHTS_ENV, str(SHARED_WEIGHTS))
    assert models.resolve_weights("vgg19", "offline").endswith(models.OFFLINE_WEIGHTS["vgg19"].file)


@pytest.mark.parametrize("key", ["mobilenet", "xception", "inception_v3"])
def test_offline_weights_batchnorm_means_match_real_xrays(key):
    """ImageNet-trained BatchNorm moving means follow the batch means of real images; random ones don't.

    Per channel, the mean of the input to each of the first BatchNormalization layers over a
    few real X-rays correlates with the stored moving mean (a random base stores zeros).
    """
    root = SHARED_WEIGHTS.parent / "cxr" / "kermany" / "NORMAL"
    files = sorted(root.iterdir())[:6]
    from xray_transfer.preprocess import letterbox, read_image
    imgs = np.stack([np.asarray(letterbox(read_image(f), (133, 100))) for f in files])
    model = models.build_model(key, input_shape=(100, 133, 3), weights=models.resolve_weights(key, "offline", SHARED_WEIGHTS))
    x = models.preprocess_input(key, imgs)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)][:6]
    probe = keras.Model(model.input, [bn.input for bn in bns])
    outs = probe.predict(x, verbose=0)
    corr = [np.corrcoef(o.mean(axis=(0, 1, 2)), keras.ops.convert_to_numpy(bn.moving_mean))[0, 1]
            for o, bn in zip(outs, bns)]
    assert np.median(corr) > 0.8, corr


def test_other_construction_errors_are_not_reported_as_missing_weights():
    # Keras refuses inputs below 32 px for MobileNet: that is not a weights problem
    with pytest.raises(ValueError) as err:
        models.build_model("mobilenet", input_shape=(16, 16, 3), weights="none")
    assert not isinstance(err.value, models.WeightsUnavailable)


# ---------------------------------------------------------------- bad arguments


def test_unknown_backbone_raises_naming_valid_keys():
    with pytest.raises(ValueError, match=r"backbone must be one of .*'inception_resnet_v2'.*'resnet50'"):
        models.get_backbone("resnet50")
    with pytest.raises(ValueError, match="'mobilenet'"):
        models.build_model("resnet50", input_shape=(32, 43, 3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(pooling="sum"), r"pooling must be .*'sum'"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be in \[0, 1\), got -0.1"),
])
def test_bad_pooling_or_dropout_raises_naming_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.build_model("mobilenet", input_shape=(32, 43, 3), **kwargs)


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_each_pooling_gives_a_working_model(pooling):
    model = models.build_model("vgg19", input_shape=(32, 43, 3), pooling=pooling)
    assert model.get_layer("head_pool").__class__.__name__ == {
        "avg": "GlobalAveragePooling2D", "max": "GlobalMaxPooling2D", "flatten": "Flatten"}[pooling]
    assert tuple(model.output.shape) == (None, 3)


def test_preprocess_input_uses_each_backbones_scaling():
    img = np.array([[[[0, 128, 255]]]], dtype=np.uint8)
    mob = models.preprocess_input("mobilenet", img)
    assert mob.dtype == np.float32
    np.testing.assert_allclose(mob[0, 0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)
    vgg = models.preprocess_input("vgg19", img)  # 'caffe': BGR, ImageNet means subtracted
    np.testing.assert_allclose(vgg[0, 0, 0], [255 - 103.939, 128 - 116.779, 0 - 123.68], atol=1e-4)
    assert img[0, 0, 0].tolist() == [0, 128, 255]  # input untouched


@pytest.mark.parametrize("key", ["vgg19", "mobilenet"])  # 'caffe' and [-1, 1] scaling
def test_model_with_preprocessing_takes_uint8_and_predicts_what_the_model_predicts_on_scaled_input(key, built):
    model = built(key)
    wrapped = models.with_preprocessing(model, key)
    assert wrapped.input.dtype == "uint8"
    assert [id(v) for v in wrapped.trainable_variables] == [id(v) for v in model.trainable_variables]
    images = np.random.default_rng(0).integers(0, 256, (3, *SHAPE), dtype=np.uint8)
    expected = model.predict(models.preprocess_input(key, images), verbose=0)
    np.testing.assert_allclose(wrapped.predict(images, verbose=0), expected, atol=1e-6)


@pytest.mark.parametrize("key", sorted(models.OFFLINE_WEIGHTS))
def test_offline_weights_first_layer_filters_are_smooth_like_trained_ones(key):
    """Trained first-layer filters vary smoothly across neighbouring taps (edges, colour blobs);
    freshly initialised ones are independent draws. The check needs no image and no label."""
    def neighbour_corr(model):
        conv = next(layer for layer in model.layers if layer.get_weights() and layer.get_weights()[0].ndim == 4)
        k = conv.get_weights()[0]  # (kh, kw, in, out)
        a, b = k[:, :-1].ravel(), k[:, 1:].ravel()  # horizontally adjacent taps
        return np.corrcoef(a, b)[0, 1]

    shape = (75, 100, 3)
    loaded = models.build_model(key, input_shape=shape, weights=models.resolve_weights(key, "offline", SHARED_WEIGHTS))
    random = models.build_model(key, input_shape=shape, weights="none")
    assert neighbour_corr(loaded) > 0.3
    assert abs(neighbour_corr(random)) < 0.15


@pytest.mark.parametrize("key", sorted(models.BACKBONES))
def test_frozen_batchnorm_flag_matches_the_built_network(key):
    """The registry's flag decides the fast path under batchnorm='keras2', so it must be true to Keras."""
    model = models.build_model(key, input_shape=(75, 100, 3), batchnorm="batch_statistics")
    cutoff = models.get_backbone(key).cutoff
    has = any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers[:cutoff])
    assert models.has_frozen_batchnorm(key) is has


def test_keras_default_seeds_come_from_our_generator_whatever_else_draws_from_pythons(monkeypatch):
    """A Dask worker's other threads draw from Python's global random; the initial weights must not move."""
    import random

    from keras.src.random import seed_generator

    from xray_transfer.models import _own_default_seeds

    _own_default_seeds(7)
    first = [seed_generator.make_default_seed() for _ in range(3)]
    _own_default_seeds(7)
    random.random(), random.random()  # another thread's draws
    assert [seed_generator.make_default_seed() for _ in range(3)] == first
    monkeypatch.delattr(seed_generator, "python_random")  # a Keras that keeps it elsewhere
    with pytest.raises(RuntimeError, match="no longer draws its default seeds.*requirements.txt"):
        _own_default_seeds(7)
