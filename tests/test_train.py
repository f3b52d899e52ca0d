"""Tests of xray_transfer.train: validated config, folds, resumable cross-validation, the fast path."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from xray_transfer import metrics, models, provenance, train
from xray_transfer.data import CLASSES, Dataset

# ---------------------------------------------------------------- make_config


def test_make_config_fills_in_the_papers_protocol():
    cfg = train.make_config(backbone="vgg19")
    assert (cfg["n_splits"], cfg["epochs"], cfg["batch_size"]) == (10, 10, 64)
    assert cfg["image_size"] == [200, 266]
    assert train.is_full_protocol(cfg, 1428)
    assert not train.is_full_protocol(cfg, 200)
    assert not train.is_full_protocol(train.make_config(epochs=1), 1428)


@pytest.mark.parametrize("params, match", [
    (dict(backbone="resnet50"), r"backbone must be one of .*'resnet50'"),
    (dict(n_splits=1), r"n_splits must be at least 2, got 1"),
    (dict(n_splits=2.5), r"n_splits must be a positive integer, got 2.5"),
    (dict(epochs=0), r"epochs must be a positive integer, got 0"),
    (dict(batch_size="64"), r"batch_size must be a positive integer, got '64'"),
    (dict(epochs=True), r"epochs must be a positive integer, got True"),
    (dict(learning_rate=-1e-4), r"learning_rate must be a finite number in \(0, 1\], got -0.0001"),
    (dict(learning_rate="1e-4"), r"learning_rate must be a finite number"),
    (dict(learning_rate=float("inf")), r"learning_rate must be a finite number in \(0, 1\], got inf"),
    (dict(learning_rate=float("nan")), r"learning_rate must be a finite number in \(0, 1\], got nan"),
    (dict(batchnorm="train"), r"batchnorm must be one of \('keras2', 'batch_statistics', 'inference'\), got 'train'"),
    (dict(image_size=(16, 266)), r"image_size must be \(height, width\), each at least 32"),
    (dict(image_size=(200, 266, 3)), r"image_size must be \(height, width\)"),
    (dict(dropout=1.0), r"dropout must be a number in \[0, 1\), got 1.0"),
    (dict(pooling="sum"), r"pooling must be 'avg', 'max' or 'flatten', got 'sum'"),
    (dict(seed="0"), r"seed must be an integer, got '0'"),
    (dict(fast="yes"), r"fast must be 'auto', True or False, got 'yes'"),
    (dict(image_mask="lungs"), r"image_mask must be one of \('none', 'lungs_hidden', 'lungs_hidden_in_frame'\), got 'lungs'"),
    (dict(epoch=3), r"unknown parameter\(s\) \['epoch'\]"),
])
def test_make_config_rejects_bad_values_naming_the_parameter(params, match):
    with pytest.raises(ValueError, match=match):
        train.make_config(**params)


# ---------------------------------------------------------------- make_folds


def check_partition(fold, n_splits):
    """Every image in exactly one test fold, all folds used: disjoint and covering."""
    fold = np.asarray(fold)
    assert fold.min() == 0 and fold.max() == n_splits - 1
    assert sorted(set(fold.tolist())) == list(range(n_splits))
    tested = np.concatenate([np.flatnonzero(fold == k) for k in range(n_splits)])
    assert sorted(tested.tolist()) == list(range(len(fold)))  # each index once


def check_stratified(fold, labels, n_splits):
    """Each fold holds each class in its overall share, up to one image."""
    fold, labels = np.asarray(fold), np.asarray(labels)
    for c in np.unique(labels):
        per_fold = np.bincount(fold[labels == c], minlength=n_splits)
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


LABELS = np.repeat([0, 1, 2], [22, 50, 70])  # the paper's 224/504/700, scaled down


@pytest.mark.parametrize("n_splits", [2, 5, 10])
def test_make_folds_partition_and_stratification(n_splits):
    fold = train.make_folds(LABELS, n_splits=n_splits, seed=0)
    check_partition(fold, n_splits)
    check_stratified(fold, LABELS, n_splits)


def test_make_folds_same_seed_same_folds_other_seed_other_folds():
    a = train.make_folds(LABELS, 10, seed=0)
    np.testing.assert_array_equal(a, train.make_folds(LABELS, 10, seed=0))
    assert not np.array_equal(a, train.make_folds(LABELS, 10, seed=1))


def test_make_folds_shuffles_rather_than_cutting_blocks():
    fold = train.make_folds(LABELS, 5, seed=0)
    assert not np.array_equal(fold[LABELS == 2], np.sort(fold[LABELS == 2]))


def test_folds_are_those_the_pinned_scikit_learn_draws():
    """Runs are resumed, adopted and compared by their folds. A scikit-learn that draws other folds
    (its StratifiedGroupKFold does, in 1.7.2 against 1.9.1) must fail here, not in a run."""
    labels = np.array([i % 3 for i in range(36)])
    groups = np.array([f"p{(i * 7) % 15:02d}-{i % 3}" for i in range(36)])
    assert train.make_folds(labels, 3, 0).tolist() == [
        1, 1, 1, 2, 0, 0, 1, 0, 2, 2, 1, 0, 0, 2, 1, 2, 0, 1, 0, 2, 2, 1, 1, 0, 2, 1, 0, 0, 0, 1, 0, 2, 2, 1, 2, 2]
    assert train.make_folds(labels, 3, 0, groups).tolist() == [
        1, 0, 1, 0, 2, 2, 0, 1, 1, 2, 2, 0, 2, 1, 0, 1, 0, 1, 0, 2, 2, 0, 1, 1, 2, 2, 0, 2, 1, 0, 1, 0, 1, 0, 2, 2]


def test_make_folds_refuses_a_class_with_fewer_images_than_folds():
    labels = np.array([0] + [1] * 5 + [2] * 5)  # one COVID-19 image
    with pytest.raises(ValueError, match=r"n_splits must be at most the number of images of each class "
                                         r"\(covid: 1\), got 2"):
        train.make_folds(labels, n_splits=2)


def test_make_folds_by_patient_keeps_each_patient_in_one_fold():
    rng = np.random.default_rng(0)
    groups = np.array([f"p{i // 3}" for i in range(len(LABELS))])  # 3 images per patient
    rng.shuffle(groups)
    labels = np.array([LABELS[int(g[1:]) * 3] for g in groups])  # one label per patient
    fold = train.make_folds(labels, n_splits=5, seed=0, groups=groups)
    check_partition(fold, 5)
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1, g
    # still roughly stratified: every fold has every class
    for k in range(5):
        assert set(labels[fold == k].tolist()) == {0, 1, 2}


# ---------------------------------------------------------------- fast path choice


@pytest.mark.parametrize("backbone, fast", [("mobilenet", False), ("vgg19", True), ("inception_v3", True),
                                            ("xception", True), ("inception_resnet_v2", True)])
def test_use_fast_path_auto_caches_only_deep_cutoffs(backbone, fast):
    used, reason = train.use_fast_path(train.make_config(backbone=backbone, batchnorm="batch_statistics"))
    assert used is fast
    assert "frozen" in reason


@pytest.mark.parametrize("backbone", ["mobilenet", "inception_v3", "xception", "inception_resnet_v2"])
def test_keras2_batchnorm_rules_out_the_fast_path_where_frozen_layers_normalise(backbone):
    used, reason = train.use_fast_path(train.make_config(backbone=backbone))  # keras2 is the default
    assert used is False and "batch's statistics" in reason
    assert train.use_fast_path(train.make_config(backbone="vgg19"))[0] is True  # VGG19 has no BatchNorm
    with pytest.raises(ValueError, match="fast=True needs frozen layers"):
        train.make_config(backbone=backbone, fast=True)


def test_use_fast_path_can_be_forced():
    assert train.use_fast_path(train.make_config(backbone="mobilenet", fast=True, batchnorm="inference"))[0] is True
    assert train.use_fast_path(train.make_config(backbone="vgg19", fast=False))[0] is False


def test_hide_lungs_keeps_only_the_border():
    img = np.full((1, 20, 40, 3), 7, dtype=np.uint8)
    out = train.hide_lungs(img, keep=0.25)
    assert (out[0, 5:15, 10:30] == 0).all()
    assert (out[0, :5] == 7).all() and (out[0, :, :10] == 7).all()
    assert (img == 7).all()  # input untouched


def test_lungs_hidden_in_frame_keeps_the_xrays_own_border_not_the_band():
    """A square X-ray letterboxed into 266x200: bands left and right stay, its own border stays."""
    from PIL import Image

    from xray_transfer.preprocess import letterbox, xray_frame
    xray = np.full((100, 100), 200, dtype=np.uint8)
    boxed = np.asarray(letterbox(Image.fromarray(xray)))[None]
    x0, y0, x1, y1 = xray_frame((100, 100))
    left, right = int(round(x0 * 266)), int(round(x1 * 266))
    manifest = [{"original_width": 100, "original_height": 100}]
    framed = train.apply_image_mask(boxed, "lungs_hidden_in_frame", manifest)[0]
    whole = train.apply_image_mask(boxed, "lungs_hidden", manifest)[0]
    kept_x = (framed[100] > 100).any(axis=-1)  # middle row: which columns still show X-ray
    assert kept_x[left + 2:left + 25].all() and kept_x[right - 25:right - 2].all()
    assert not kept_x[left + 40:right - 40].any()
    assert not (framed[:, :left - 3] > 20).any()  # the band stays black (but for resampling ringing)
    # the whole-image border at 15 % of 266 px lands inside the band here: little X-ray kept
    assert (whole[100] > 100).any(axis=-1).sum() < kept_x.sum()
    with pytest.raises(ValueError, match="needs original_width"):
        train.apply_image_mask(boxed, "lungs_hidden_in_frame", [{}])


# ---------------------------------------------------------------- cross-validation

#: tiny synthetic set: 24 images at 40x53, 8 per class, two images per patient
N, H, W = 24, 40, 53
RUN = dict(backbone="mobilenet", n_splits=2, epochs=1, batch_size=8, image_size=(H, W), seed=0)


def synthetic_dataset(n=N, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n // 3)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    images[labels == 0] //= 2  # a little signal
    manifest = [{"file": f"{CLASSES[y]}/img{i:03d}.png", "patient_id": f"p{i // 2}", "label": CLASSES[y]}
                for i, y in enumerate(labels)]
    return Dataset(images, labels.astype(np.int64), manifest, "0" * 63 + "1")


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dataset):
    """One uninterrupted 2-fold run, shared by the artifact tests."""
    out = tmp_path_factory.mktemp("cv") / "run"
    train.cross_validate(dataset, out, progress=False, **RUN)
    return out


def test_cross_validate_writes_run_record_with_provenance(run_dir, dataset):
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["params"] == train.make_config(**RUN)
    assert rec["identity"]["manifest_sha256"] == dataset.manifest_sha256
    assert rec["identity"]["params"]["backbone"] == "mobilenet"
    assert rec["dataset"] == {"manifest_sha256": dataset.manifest_sha256, "n_images": N, "counts": [8, 8, 8]}
    assert rec["weights"]["kind"] == "none"
    assert rec["full_protocol"] is False
    env = rec["environment"]
    assert env["backend"] and env["device"] and env["time_utc"]
    assert {"python", "keras", "numpy"} <= set(env["versions"])
    assert env["git"]["commit"] and "dirty" in env["git"]
    assert rec["folds_done"] == [0, 1]
    assert rec["feature_cache"]["used"] is False  # mobilenet trains almost every layer
    assert set(rec["notes"]) >= {"learning_rate", "dropout", "pooling"}


def test_cross_validate_folds_csv_records_every_images_fold(run_dir, dataset):
    lines = (run_dir / "folds.csv").read_text().splitlines()
    assert lines[0] == "index,file,label,patient_id,fold"
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == N
    assert [r[1] for r in rows] == [m["file"] for m in dataset.manifest]
    assert [r[3] for r in rows] == [m["patient_id"] for m in dataset.manifest]
    fold = np.array([int(r[4]) for r in rows])
    np.testing.assert_array_equal(fold, train.make_folds(dataset.labels, 2, seed=0))
    check_partition(fold, 2)
    check_stratified(fold, dataset.labels, 2)


def test_cross_validate_fold_artifacts_are_consistent(run_dir, dataset):
    folds = train.load_folds(run_dir)
    assert [f["fold"] for f in folds] == [0, 1]
    tested = []
    for f in folds:
        probs, y_true = np.asarray(f["probs"]), np.asarray(f["y_true"])
        assert probs.shape == (f["n_test"], 3) and f["n_train"] + f["n_test"] == N
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (probs >= 0).all()
        np.testing.assert_array_equal(y_true, dataset.labels[f["test_index"]])
        assert f["test_file"] == [dataset.manifest[i]["file"] for i in f["test_index"]]
        assert f["confusion"] == metrics.confusion(y_true, probs.argmax(1)).tolist()
        assert np.sum(f["confusion"]) == f["n_test"]
        assert len(f["history"]["loss"]) == RUN["epochs"]
        assert f["timing"]["fit_seconds"] > 0 and f["timing"]["fast_path"] is False
        assert f["backend"] and f["device"]
        assert f["git"] == provenance.git_commit()  # the code that made this fold, which a resume may change
        tested += f["test_index"]
    assert sorted(tested) == list(range(N))  # every image tested exactly once


def test_cross_validate_leaves_no_temporary_files(run_dir):
    names = os.listdir(run_dir)
    assert not [n for n in names if ".tmp" in n], names
    assert sorted(names) == ["fold-00.json", "fold-01.json", "folds.csv", "run.json"]


def test_cross_validate_refuses_other_parameters_in_the_same_folder(run_dir, dataset):
    before = (run_dir / "run.json").read_bytes()
    with pytest.raises(ValueError, match="holds a run with other parameters"):
        train.cross_validate(dataset, run_dir, progress=False, **{**RUN, "learning_rate": 1e-3})
    other = synthetic_dataset(seed=1)
    other.manifest_sha256 = "f" * 64
    with pytest.raises(ValueError, match="manifest_sha256"):
        train.cross_validate(other, run_dir, progress=False, **RUN)
    assert (run_dir / "run.json").read_bytes() == before


def test_cross_validate_with_a_bad_parameter_writes_nothing(tmp_path, dataset):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="dropout"):
        train.cross_validate(dataset, out, progress=False, **{**RUN, "dropout": 1.5})
    assert not out.exists() or not os.listdir(out)


def test_cross_validate_of_a_finished_run_trains_nothing(run_dir, dataset, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not build a trainer")

    monkeypatch.setattr(train, "Trainer", no_training)
    rec = train.cross_validate(dataset, run_dir, progress=False, **RUN)
    assert rec["folds_done"] == [0, 1]


def test_cross_validate_resumes_only_missing_folds_and_matches_uninterrupted_run(
        tmp_path, dataset, run_dir, monkeypatch):
    out = tmp_path / "run"
    rec = train.cross_validate(dataset, out, progress=False, folds_to_run=[0], **RUN)
    assert rec["folds_done"] == [0]
    assert not (out / "fold-01.json").exists()
    first = (out / "fold-00.json").read_bytes()
    mtime = (out / "fold-00.json").stat().st_mtime_ns

    calls = []
    fit_fold = train.Trainer.fit_fold

    def counting(self, train_idx, test_idx, *args, **kwargs):
        calls.append(sorted(test_idx.tolist()))
        return fit_fold(self, train_idx, test_idx, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "fit_fold", counting)
    rec = train.cross_validate(dataset, out, progress=False, **RUN)
    fold_of = train.make_folds(dataset.labels, 2, seed=0)
    assert calls == [np.flatnonzero(fold_of == 1).tolist()]  # fold 1 only
    assert rec["folds_done"] == [0, 1]
    assert (out / "fold-00.json").read_bytes() == first
    assert (out / "fold-00.json").stat().st_mtime_ns == mtime
    assert (out / "fold-01.json").exists()
    # Each fold starts from the same initial state, so an interrupted and resumed run
    # predicts what an uninterrupted one does (same seed, same folds, same weights).
    for resumed, whole in zip(train.load_folds(out), train.load_folds(run_dir)):
        assert resumed["test_index"] == whole["test_index"]
        np.testing.assert_allclose(resumed["probs"], whole["probs"], atol=1e-5)


def test_two_processes_starting_one_run_folder_at_once_never_mix_runs(dataset, tmp_path, monkeypatch):
    """Issue 28, item 6: another process (seed 1) creates run.json between our look and our write.
    We refuse, naming it, and its record stays; before, ours replaced it and folds of both runs mixed."""
    from xray_transfer import provenance

    out, real = tmp_path / "run", provenance.environment

    def other_process_first():
        monkeypatch.setattr(provenance, "environment", real)
        train.cross_validate(dataset, out, progress=False, folds_to_run=[], **{**RUN, "seed": 1})
        return real()

    monkeypatch.setattr(provenance, "environment", other_process_first)
    with pytest.raises(train.RunMismatch, match=r"holds a run with other parameters.*'seed': 1.*started on"):
        train.cross_validate(dataset, out, progress=False, **RUN)
    assert json.loads((out / "run.json").read_text())["params"]["seed"] == 1
    assert not list(out.glob("fold-*.json"))


# ---------------------------------------------------------------- fast path == plain path


@pytest.mark.parametrize("backbone", ["vgg19", "xception"])
def test_fast_path_predicts_what_plain_training_predicts(backbone):
    """Cached frozen outputs and full forward passes train the same network to the same predictions."""
    ds = synthetic_dataset(n=12, h=75, w=100)
    fold_of = train.make_folds(ds.labels, 2, seed=0)
    train_idx, test_idx = np.flatnonzero(fold_of != 0), np.flatnonzero(fold_of == 0)
    probs = {}
    for fast in (True, False):
        cfg = train.make_config(backbone=backbone, n_splits=2, epochs=1, batch_size=8,
                                image_size=(75, 100), fast=fast, seed=0, batchnorm="batch_statistics")
        trainer = train.Trainer(cfg, ds.images)
        assert trainer.fast is fast
        res = trainer.fit_fold(train_idx, test_idx, ds.labels, fold_seed=7)
        probs[fast] = res["probs"]
        trainer.reset()  # back to the initial weights: training must have moved the predictions
        untrained = trainer.net.predict(trainer._take(test_idx), verbose=0)
        assert np.abs(untrained - res["probs"]).max() > 1e-4
        if fast and backbone == "xception":
            assert len(trainer.inputs) == 2  # two tensors cross Xception's cutoff
    np.testing.assert_allclose(probs[True], probs[False], atol=1e-5)
    assert probs[True].shape == (len(test_idx), 3)


def test_trainer_feeds_uint8_and_predicts_a_padded_last_batch_as_each_image_alone():
    ds = synthetic_dataset(n=12, h=75, w=100)
    cfg = train.make_config(backbone="mobilenet", n_splits=2, epochs=1, batch_size=4, image_size=(75, 100))
    trainer = train.Trainer(cfg, ds.images)
    assert not trainer.fast and trainer.inputs[0].dtype == np.uint8  # the network scales the images itself
    idx = np.array([3, 0, 7, 5, 11])  # a full batch of 4, then one image padded to 4
    probs = trainer.predict(idx)
    alone = np.concatenate([trainer.net.predict(ds.images[i:i + 1], verbose=0) for i in idx])
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs, alone, atol=1e-6)


def test_a_reused_trainer_trains_another_run_as_a_fresh_trainer_does():
    """The GPU plan reuses one trainer per model for every run of it: reuse must change no result."""
    ds = synthetic_dataset(n=12, h=75, w=100)
    fold_of = train.make_folds(ds.labels, 2, seed=0)
    train_idx, test_idx = np.flatnonzero(fold_of != 0), np.flatnonzero(fold_of == 0)
    cfg = train.make_config(backbone="mobilenet", n_splits=2, epochs=1, batch_size=4, image_size=(75, 100))
    store = {}
    trainer = train.get_trainer(cfg, ds.images, trainer_store=store)
    trainer.fit_fold(train_idx, test_idx, ds.labels, fold_seed=1)  # a first run moves the weights
    hidden_cfg, hidden = {**cfg, "image_mask": "lungs_hidden"}, train.hide_lungs(ds.images)
    reused = train.get_trainer(hidden_cfg, hidden, trainer_store=store)  # another run of the same model
    assert reused is trainer and reused.cfg["image_mask"] == "lungs_hidden"
    probs = reused.fit_fold(train_idx, test_idx, ds.labels, fold_seed=2)["probs"]
    fresh = train.Trainer(hidden_cfg, hidden).fit_fold(train_idx, test_idx, ds.labels, fold_seed=2)["probs"]
    np.testing.assert_allclose(probs, fresh, atol=1e-5)
    # another BatchNorm mode is another model: its own trainer
    assert train.get_trainer({**cfg, "batchnorm": "inference"}, ds.images, trainer_store=store) is not trainer
    assert len(store) == 2


# ---------------------------------------------------------------- resume checks each fold file


def copy_run(run_dir, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    return out


def test_resume_refuses_an_empty_or_damaged_fold_file(run_dir, dataset, tmp_path):
    out = copy_run(run_dir, tmp_path)
    (out / "fold-01.json").write_text("")
    with pytest.raises(train.RunMismatch, match=r"fold-01.json: not a valid fold record.*delete it"):
        train.cross_validate(dataset, out, progress=False, **RUN)


def test_resume_refuses_fold_files_of_another_run(run_dir, dataset, tmp_path):
    out = copy_run(run_dir, tmp_path)
    fold = json.loads((out / "fold-00.json").read_text())
    fold["run_identity_sha256"] = "0" * 64
    (out / "fold-00.json").write_text(json.dumps(fold))
    with pytest.raises(train.RunMismatch, match="fold-00.json: made by a run with other parameters"):
        train.cross_validate(dataset, out, progress=False, **RUN)


def test_resume_refuses_fold_with_other_test_images(run_dir, dataset, tmp_path):
    out = copy_run(run_dir, tmp_path)
    fold = json.loads((out / "fold-00.json").read_text())
    fold["test_file"] = fold["test_file"][::-1]
    (out / "fold-00.json").write_text(json.dumps(fold))
    with pytest.raises(train.RunMismatch, match="its test images differ"):
        train.cross_validate(dataset, out, progress=False, **RUN)


def test_a_run_whose_folds_another_scikit_learn_drew_is_known_and_not_resumed(run_dir, dataset, tmp_path):
    out = copy_run(run_dir, tmp_path)
    assert train.folds_drawn_again(out)
    rows = (out / "folds.csv").read_text().splitlines()
    swapped = [r[:-1] + {"0": "1", "1": "0"}[r[-1]] for r in rows[1:]]  # folds 0 and 1 trade places
    (out / "folds.csv").write_text("\n".join([rows[0], *swapped]) + "\n")
    assert not train.folds_drawn_again(out)
    with pytest.raises(train.RunMismatch, match=r"folds were drawn by scikit-learn .* draws others; resume it with"):
        train.cross_validate(dataset, out, progress=False, **RUN)


def test_folds_without_run_record_are_refused_not_reused(run_dir, dataset, tmp_path):
    out = copy_run(run_dir, tmp_path)
    (out / "run.json").unlink()
    with pytest.raises(train.RunMismatch, match=r"fold files .* but no run.json.*start afresh"):
        train.cross_validate(dataset, out, progress=False, **{**RUN, "learning_rate": 1e-3})
    assert not (out / "run.json").exists()


# ---------------------------------------------------------------- non-finite values


def test_diverging_training_stops_with_an_error_not_a_class(dataset, tmp_path, monkeypatch):
    fit = train.Trainer.fit_fold

    def poisoned(self, *args, **kwargs):
        for v in self.net.trainable_variables:
            v.assign(np.full(v.shape, np.nan, dtype="float32"))
        self._init_model = [v.numpy() for v in self.model.variables]
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(train.Trainer, "fit_fold", poisoned)
    out = tmp_path / "run"
    with pytest.raises(train.TrainingDiverged, match="training loss became nan in epoch 1; lower learning_rate"):
        train.cross_validate(dataset, out, progress=False, **RUN)
    assert not list(out.glob("fold-*.json"))


# ---------------------------------------------------------------- BatchNorm mode


def bn_layers(model, start=0, stop=None):
    import keras
    return [layer for layer in model.layers[start:stop] if isinstance(layer, keras.layers.BatchNormalization)]


def test_batchnorm_inference_mode_keeps_imagenet_statistics_while_fine_tuning(dataset):
    cfg = train.make_config(**{**RUN, "batchnorm": "inference"})
    trainer = train.Trainer(cfg, dataset.images)
    bns = bn_layers(trainer.model)
    assert bns and not any(bn.trainable for bn in bns)
    before = [bn.moving_mean.numpy().copy() for bn in bns]
    idx = np.arange(len(dataset))
    trainer.fit_fold(idx[:16], idx[16:], dataset.labels, fold_seed=0)
    assert all(np.array_equal(b, bn.moving_mean.numpy()) for b, bn in zip(before, bns))


@pytest.mark.parametrize("mode", ["keras2", "batch_statistics"])
def test_batchnorm_above_the_cutoff_trains_and_updates_in_both_keras_modes(dataset, mode):
    trainer = train.Trainer(train.make_config(**{**RUN, "batchnorm": mode}), dataset.images)
    cutoff = models.get_backbone("mobilenet").cutoff
    above, below = bn_layers(trainer.model, cutoff), bn_layers(trainer.model, 0, cutoff)
    before = [bn.moving_mean.numpy().copy() for bn in above + below]
    idx = np.arange(len(dataset))
    trainer.fit_fold(idx[:16], idx[16:], dataset.labels, fold_seed=0)
    after = [bn.moving_mean.numpy() for bn in above + below]
    assert all(bn.trainable for bn in above) and below and not any(bn.trainable for bn in below)
    assert any(not np.array_equal(b, a) for b, a in zip(before[:len(above)], after[:len(above)]))
    # frozen layers keep their moving averages in both modes
    assert all(np.array_equal(b, a) for b, a in zip(before[len(above):], after[len(above):]))


def test_keras2_mode_frozen_batchnorm_uses_batch_statistics_only_while_training():
    """Keras 2.3 / TF 2.1: a frozen BatchNormalization layer normalises with the batch in training."""
    import keras
    x = np.random.default_rng(0).normal(3.0, 2.0, size=(16, 40, 53, 3)).astype("float32")
    outs = {}
    for mode in ("keras2", "batch_statistics"):
        model = models.build_model("mobilenet", input_shape=(40, 53, 3), batchnorm=mode, seed=0)
        bn = bn_layers(model, 0, models.get_backbone("mobilenet").cutoff)[0]
        probe = keras.Model(model.input, bn.output)
        outs[mode] = (keras.ops.convert_to_numpy(probe(x, training=True)),
                      keras.ops.convert_to_numpy(probe(x, training=False)))
        assert bn.__class__ is keras.layers.BatchNormalization  # saved models load as plain Keras
    train_k2, infer_k2 = outs["keras2"]
    train_k3, infer_k3 = outs["batch_statistics"]
    np.testing.assert_allclose(infer_k2, infer_k3, atol=1e-5)  # inference: the same moving averages
    np.testing.assert_allclose(train_k3, infer_k3, atol=1e-5)  # Keras 3: frozen = inference mode
    # keras2: per channel, zero mean and unit variance over the batch (gamma 1, beta 0 at random init)
    np.testing.assert_allclose(train_k2.mean(axis=(0, 1, 2)), 0, atol=1e-3)
    np.testing.assert_allclose(train_k2.std(axis=(0, 1, 2)), 1, atol=1e-2)
    assert np.abs(train_k2 - infer_k2).max() > 0.1


# ---------------------------------------------------------------- the later parameters: scaling, resize,
# augment, split_seed. Each changes what the network sees; at its default nothing changes.


def xray_in_bands(h=200, w=266):
    """A square synthetic X-ray (a bright disc on grey) letterboxed into h x w, with its manifest row."""
    from PIL import Image

    from xray_transfer.preprocess import letterbox
    yy, xx = np.mgrid[:100, :100]
    xray = np.where((yy - 50) ** 2 + (xx - 50) ** 2 < 900, 230, 90).astype(np.uint8)
    boxed = np.asarray(letterbox(Image.fromarray(xray), (w, h)))[None]
    return boxed, [{"original_width": 100, "original_height": 100}]


def test_later_parameters_default_to_todays_behaviour():
    cfg = train.make_config()
    assert {k: cfg[k] for k in train.LATER_PARAMS} == dict(split_seed=None, scaling="preprocess_input",
                                                           resize="letterbox", augment="none", precision="float32")


@pytest.mark.parametrize("params, match", [
    (dict(scaling="imagenet"), r"scaling must be one of \('preprocess_input', 'unit'\), got 'imagenet'"),
    (dict(resize="crop"), r"resize must be one of \('letterbox', 'stretch'\), got 'crop'"),
    (dict(augment="heavy"), r"augment must be one of \('none', 'light'\), got 'heavy'"),
    (dict(precision="float16"), r"precision must be one of \('float32', 'mixed_bfloat16'\), got 'float16'"),
    (dict(split_seed="1"), r"split_seed must be an integer or None"),
    (dict(backbone="vgg19", augment="light", fast=True), r"fast=True caches .* augment='light'"),
])
def test_make_config_rejects_bad_later_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        train.make_config(**params)


def test_default_identity_is_todays_and_each_later_parameter_changes_it():
    """A run's identity is what it had before these parameters existed (the committed runs stay
    valid: tests/test_artifacts.py recomputes theirs); a non-default value is a new run."""
    cfg = train.make_config(backbone="vgg19")
    todays = ("backbone", "n_splits", "epochs", "batch_size", "learning_rate", "dropout", "pooling", "seed",
              "image_size", "fast", "group_by_patient", "image_mask", "batchnorm")  # the keys before them
    assert train.identity_params(cfg) == {k: cfg[k] for k in todays}
    weights = {"kind": "none", "sha256": None}
    _, base = train.run_identity(cfg, weights, "m" * 64, ["a.png", "b.png"])
    for change in (dict(split_seed=3), dict(scaling="unit"), dict(resize="stretch"), dict(augment="light"),
                   dict(precision="mixed_bfloat16")):
        other = train.make_config(backbone="vgg19", **change)
        assert train.run_identity(other, weights, "m" * 64, ["a.png", "b.png"])[1] != base, change
    # the folds of seed itself, spelled out, are the default's
    assert train.run_identity(train.make_config(backbone="vgg19", split_seed=0), weights, "m" * 64,
                              ["a.png", "b.png"])[1] == base


def test_split_seed_holds_the_folds_while_seed_changes(tmp_path, dataset):
    """folds_to_run=[] writes run.json and folds.csv and trains nothing."""
    def folds(name, **params):
        train.cross_validate(dataset, tmp_path / name, progress=False, folds_to_run=[], **{**RUN, **params})
        return (tmp_path / name / "folds.csv").read_text()

    default = folds("seed0")
    assert folds("seed1", seed=1) != default
    assert folds("seed1-split0", seed=1, split_seed=0) == default
    assert train.folds_drawn_again(tmp_path / "seed1-split0")  # resumable: its folds are drawn again


def test_scaling_unit_feeds_zero_to_one_and_the_default_keeps_keras_preprocess_input():
    import keras

    img = np.array([[[0, 128, 255]]], dtype=np.uint8)[None]
    np.testing.assert_array_equal(models.preprocess_input("vgg19", img, "unit"), img / np.float32(255))
    for key in ("vgg19", "mobilenet"):
        mod = getattr(keras.applications, models.get_backbone(key).module)
        todays = mod.preprocess_input(img.astype(np.float32).copy())
        np.testing.assert_array_equal(models.preprocess_input(key, img), todays)  # default: today's arrays
        assert not np.allclose(models.preprocess_input(key, img, "unit"), todays)


def test_the_network_sees_unit_scaled_pixels_with_scaling_unit():
    model = models.build_model("vgg19", input_shape=(32, 32, 3), pooling="avg")
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    unit = models.with_preprocessing(model, "vgg19", scaling="unit").predict(images, verbose=0)
    np.testing.assert_allclose(unit, model.predict(images / np.float32(255), verbose=0), rtol=1e-5, atol=1e-6)
    default = models.with_preprocessing(model, "vgg19").predict(images, verbose=0)
    np.testing.assert_allclose(default, model.predict(models.preprocess_input("vgg19", images), verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(unit, default)


def test_resize_stretch_fills_the_frame_and_letterbox_keeps_todays_arrays():
    boxed, manifest = xray_in_bands()
    cfg = train.make_config(image_size=(200, 266))
    np.testing.assert_array_equal(train.prepare_images(boxed, manifest, cfg), boxed)  # default: untouched
    small = train.make_config(image_size=(100, 133))
    np.testing.assert_array_equal(train.prepare_images(boxed, manifest, small), train.resize_images(boxed, (100, 133)))
    stretched = train.prepare_images(boxed, manifest, train.make_config(image_size=(200, 266), resize="stretch"))
    assert stretched.shape == boxed.shape
    assert (boxed[0, :, :20] == 0).all() and (stretched[0, :, :20] > 60).all()  # the band is gone: X-ray there
    disc = lambda a: (a[0, 100] > 160).sum()  # noqa: E731 -- the disc's width on the middle row
    assert disc(stretched) > 1.2 * disc(boxed)  # stretched sideways by 266/200


def test_lungs_hidden_in_frame_of_a_stretched_image_hides_the_whole_images_centre():
    boxed, manifest = xray_in_bands()
    cfg = train.make_config(resize="stretch", image_mask="lungs_hidden_in_frame")
    out = train.prepare_images(boxed, manifest, cfg)[0]
    assert (out[40:160, 50:216] == 0).all() and (out[:, :30] > 60).all()


def test_augment_light_changes_the_training_images_only_and_never_flips():
    import keras

    layers = models.augmentation("light", seed=0)
    assert models.augmentation("none") is None
    assert not any("Flip" in type(layer).__name__ for layer in layers.layers)
    boxed, _ = xray_in_bands(64, 85)
    x = boxed.astype("float32")
    seen = keras.ops.convert_to_numpy(layers(x, training=True))
    assert seen.shape == x.shape and not np.allclose(seen, x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layers(x, training=False)), x)
    # a left-right flip would move the bright disc's mass across the middle; light augmentation barely moves it
    centre = lambda a: (a[..., 0] * np.arange(a.shape[2])).sum() / a[..., 0].sum()  # noqa: E731
    assert abs(centre(seen) - centre(x)) < 0.1 * x.shape[2]
    # in the network: the training step sees augmented pixels, prediction the images themselves
    model = models.build_model("vgg19", input_shape=(64, 85, 3))
    net = models.with_preprocessing(model, "vgg19", augment="light")
    plain = models.with_preprocessing(model, "vgg19")
    np.testing.assert_allclose(net.predict(boxed, verbose=0), plain.predict(boxed, verbose=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(keras.ops.convert_to_numpy(net(boxed, training=True)),
                           keras.ops.convert_to_numpy(plain(boxed, training=True)))


def test_augmentation_turns_the_fast_path_off_and_scaling_enters_its_cache_key():
    used, reason = train.use_fast_path(train.make_config(backbone="vgg19", augment="light"))
    assert used is False and "augment" in reason
    assert train.use_fast_path(train.make_config(backbone="vgg19"))[0] is True
    images = np.zeros((2, 40, 53, 3), np.uint8)
    cfg = train.make_config(backbone="vgg19", image_size=(40, 53))
    assert train.frozen_key(cfg, images) != train.frozen_key({**cfg, "scaling": "unit"}, images)


def test_every_fold_of_an_augmented_run_starts_from_the_same_augmentation_seeds(dataset):
    """A resumed run must train fold k as an uninterrupted one does: reset() restores the random
    layers' generator state along with the weights."""
    cfg = train.make_config(backbone="vgg19", n_splits=2, epochs=1, batch_size=8, image_size=(H, W),
                            augment="light")
    trainer = train.Trainer(cfg, train.prepare_images(dataset.images, dataset.manifest, cfg))
    assert trainer.fast is False and len(trainer._extra) == 3  # rotation, shift, zoom
    start = [v.numpy().copy() for v in trainer._extra]
    idx = np.arange(len(dataset))
    first = trainer.fit_fold(idx[::2], idx[1::2], dataset.labels, fold_seed=0)["probs"]
    assert any(not np.array_equal(v.numpy(), a) for v, a in zip(trainer._extra, start))  # it drew numbers
    again = trainer.fit_fold(idx[::2], idx[1::2], dataset.labels, fold_seed=0)["probs"]
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- precision (an option; float32 the default)


def test_mixed_bfloat16_computes_in_bfloat16_keeps_float32_variables_and_output():
    import keras

    x = models.preprocess_input("vgg19", synthetic_dataset(n=6, h=32, w=48).images)
    nets = {p: models.build_model("vgg19", input_shape=(32, 48, 3), seed=0, precision=p)
            for p in ("float32", "mixed_bfloat16")}
    assert keras.config.dtype_policy().name == "float32"  # each model built under its own policy, then restored
    convs = {p: [layer for layer in m.layers if isinstance(layer, keras.layers.Conv2D)] for p, m in nets.items()}
    assert {layer.compute_dtype for layer in convs["mixed_bfloat16"]} == {"bfloat16"}
    assert {layer.compute_dtype for layer in convs["float32"]} == {"float32"}
    assert {v.dtype for v in nets["mixed_bfloat16"].variables} == {"float32"}
    out = {p: m.predict(x, verbose=0) for p, m in nets.items()}
    assert out["mixed_bfloat16"].dtype == np.float32  # the softmax computes in float32
    np.testing.assert_allclose(out["mixed_bfloat16"].sum(1), 1, atol=1e-6)
    diff = np.abs(out["mixed_bfloat16"] - out["float32"]).max()  # same weights, other arithmetic
    assert 0 < diff < 0.05


def test_a_failed_build_leaves_the_global_policy_as_it_was(tmp_path):
    import keras

    bad = tmp_path / "bad.weights.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(models.WeightsUnavailable):
        models.build_model("vgg19", input_shape=(32, 48, 3), weights=str(bad), precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize("backbone", ["vgg19", "mobilenet"])  # the fast path; whole network with keras2 BatchNorm
def test_a_mixed_bfloat16_trainer_trains_and_predicts_float32_probabilities(backbone):
    import keras

    ds = synthetic_dataset(n=12, h=32, w=48)
    cfg = train.make_config(backbone=backbone, n_splits=2, epochs=1, batch_size=4, image_size=(32, 48),
                            precision="mixed_bfloat16")
    trainer = train.Trainer(cfg, ds.images)
    assert keras.config.dtype_policy().name == "float32"
    assert trainer.fast is (backbone == "vgg19")
    if trainer.fast:  # the cached frozen outputs: float32 arrays
        assert {a.dtype for a in trainer.inputs} == {np.dtype("float32")}
    assert trainer.net.optimizer.__class__.__name__ == "Adam"  # no loss scaling for bfloat16
    fold_of = train.make_folds(ds.labels, 2, seed=0)
    res = trainer.fit_fold(np.flatnonzero(fold_of != 0), np.flatnonzero(fold_of == 0), ds.labels, fold_seed=1)
    assert np.isfinite(res["history"]["loss"]).all()
    np.testing.assert_allclose(res["probs"].sum(1), 1, atol=1e-5)
    assert train.frozen_key(cfg, ds.images) != train.frozen_key({**cfg, "precision": "float32"}, ds.images)


def test_records_name_the_commit_a_process_loaded_not_a_later_one(tmp_path):
    """A long run outlives commits: its records must name the code it imported, not HEAD at write time."""
    import shutil
    import subprocess
    import sys

    pkg = tmp_path / "lib" / "xray_transfer"
    pkg.parent.mkdir()
    shutil.copytree(Path(provenance.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "lib"], check=True)
    subprocess.run(git + ["commit", "-qm", "first"], check=True)
    script = (
        "import subprocess, sys\n"
        f"sys.path.insert(0, {str(tmp_path / 'lib')!r})\n"
        "from xray_transfer import provenance as p\n"
        "before = p.git_commit()['commit']\n"
        "(p.REPO / 'lib' / 'xray_transfer' / '__init__.py').write_text('# changed\\n')\n"
        f"subprocess.run({git!r} + ['commit', '-qam', 'later'], check=True)\n"
        "print(before, p.git_commit()['commit'], p.git_commit(p.REPO)['commit'])\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    first = subprocess.run(git[:3] + ["rev-parse", "HEAD~1"], capture_output=True, text=True, check=True).stdout.strip()
    assert out[0] == out[1] == first  # what the process loaded, kept
    assert out[2] != first  # the repository itself has moved on
