"""Tests of xray_transfer.benchmark: both paths timed on the same folds, one record schema on every device."""
import json

import numpy as np
import pytest

from xray_transfer import benchmark
from xray_transfer.data import CLASSES, Dataset


def tiny_dataset(n=18, h=40, w=53, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], n // 3)
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    manifest = [{"file": f"{CLASSES[y]}/img{i:03d}.png", "patient_id": f"p{i}", "label": CLASSES[y]}
                for i, y in enumerate(labels)]
    return Dataset(images, labels.astype(np.int64), manifest, "0" * 63 + "2")


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rec = benchmark.run_benchmark(tiny_dataset(), out, backbones=["vgg19"], epochs=2, n_splits=3,
                                  protocol_epochs=4, image_size=(40, 53))
    return rec, out


def test_benchmark_writes_a_complete_record_naming_device_and_backend(record):
    rec, out = record
    on_disk = json.loads((out / "benchmark.json").read_text())
    assert on_disk == json.loads(json.dumps(rec))
    benchmark.check_record(on_disk)  # raises if a field is missing
    assert on_disk["environment"]["backend"] in ("tensorflow", "jax", "torch")
    assert on_disk["environment"]["device"]
    assert not list(out.glob(".*tmp*"))


def test_benchmark_compares_plain_fit_with_our_fast_path(record):
    row = record[0]["backbones"]["vgg19"]
    assert row["plain"]["fast_path"] is False and row["fast"]["fast_path"] is True  # VGG19: deep cutoff
    assert row["plain"]["n_train"] == row["fast"]["n_train"] == 12  # same folds: 2 of 3 x 18 images
    for path in ("plain", "fast"):
        p = row[path]
        assert p["steady_images_per_second"] == pytest.approx(p["n_train"] / p["steady_epoch_seconds"])
        # whole protocol: set-up and first fold, then 2 more folds of 4 epochs, each at least a measured fold
        assert p["protocol_seconds"] > p["fold_seconds"] + 2 * p["later_fold_seconds"] - 1e-9
        assert p["later_fold_seconds"] > 0
    assert row["steady_speedup"] == pytest.approx(row["plain"]["steady_epoch_seconds"]
                                                  / row["fast"]["steady_epoch_seconds"])
    assert row["protocol_speedup"] == pytest.approx(row["plain"]["protocol_seconds"]
                                                    / row["fast"]["protocol_seconds"])


def test_check_record_names_what_is_missing(record):
    rec = json.loads(json.dumps(record[0]))
    del rec["backbones"]["vgg19"]["fast"]["protocol_seconds"]
    del rec["environment"]["device"]
    with pytest.raises(ValueError, match=r"environment\.device, vgg19\.fast\.protocol_seconds"):
        benchmark.check_record(rec)


def test_protocol_time_is_built_from_the_measured_folds():
    first = {"fit": [5.0, 1.0], "walls": [6.0, 1.5], "wall": 8.0, "n_train": 100}
    later = {"fit": [1.2, 1.0], "walls": [1.7, 1.5], "wall": 3.5, "n_train": 100}
    s = benchmark._summary(2.0, first, later, n_splits=10, protocol_epochs=10, feature_seconds=0.0, fast=False)
    assert s["steady_epoch_seconds"] == 1.0 and s["steady_images_per_second"] == 100
    assert s["later_fold_seconds"] == pytest.approx(3.5 + 8 * 1.5)
    assert s["protocol_seconds"] == pytest.approx(2.0 + 8.0 + 8 * 1.5 + 9 * (3.5 + 8 * 1.5))
    assert s["fold_seconds"] == 10.0


def test_benchmark_keeps_the_rows_of_an_earlier_call_with_the_same_settings(record, tmp_path):
    rec, out = record
    (tmp_path / "benchmark.json").write_text((out / "benchmark.json").read_text())
    settings = dict(epochs=2, n_splits=3, image_size=(40, 53))
    again = benchmark.run_benchmark(tiny_dataset(), tmp_path, backbones=["vgg19", "mobilenet"], protocol_epochs=4,
                                    **settings)
    assert again["backbones"]["vgg19"] == json.loads(json.dumps(rec["backbones"]["vgg19"]))  # not measured again
    assert set(again["backbones"]) == {"vgg19", "mobilenet"} and again["backbones"]["mobilenet"]["measured_utc"]
    benchmark.check_record(json.loads((tmp_path / "benchmark.json").read_text()))
    # other settings: every row is measured afresh, and the earlier rows are not kept
    other = benchmark.run_benchmark(tiny_dataset(), tmp_path, backbones=["vgg19"], protocol_epochs=5, **settings)
    assert other["backbones"]["vgg19"]["plain"] != rec["backbones"]["vgg19"]["plain"]
    assert set(other["backbones"]) == {"vgg19"}
