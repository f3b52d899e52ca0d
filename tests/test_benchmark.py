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


# ---------------------------------------------------------------- the together path: every fold at once (JAX)

TOGETHER_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from test_benchmark import tiny_dataset
from xray_transfer import benchmark
rec = benchmark.run_benchmark(tiny_dataset(), sys.argv[1], backbones=["vgg19"], epochs=2, n_splits=3,
                              protocol_epochs=4, image_size=(40, 53), together=True)
print(json.dumps(rec["backbones"]["vgg19"]))
"""


def test_the_together_path_times_every_fold_at_once_in_the_same_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3"}
    res = subprocess.run([sys.executable, "-c", TOGETHER_SCRIPT, str(tmp_path), str(Path(__file__).parent)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    row = json.loads(res.stdout.strip().splitlines()[-1])
    benchmark.check_record(json.loads((tmp_path / "benchmark.json").read_text()))  # together's fields included
    both = row["together"]
    assert both["n_folds"] == 3 and both["n_train"] == 3 * 12  # every fold's training images in one epoch
    assert both["fast_path"] is True and both["epochs"] == 2
    assert both["steady_images_per_second"] == pytest.approx(36 / both["steady_epoch_seconds"])
    # the protocol: set-up, the 2 measured epochs, 2 more epochs at a later one's cost
    assert both["protocol_seconds"] > both["setup_seconds"] + both["first_epoch_seconds"] + 2 * both["steady_epoch_seconds"]
    assert row["together_speedup"] == pytest.approx(row["fast"]["protocol_seconds"] / both["protocol_seconds"])
    assert "throughput" in both


def test_the_together_path_on_tensorflow_is_refused_before_any_work(tmp_path):
    import keras

    if keras.backend.backend() == "jax":
        pytest.skip("Keras runs on JAX here")
    with pytest.raises(RuntimeError, match="KERAS_BACKEND=jax"):
        benchmark.run_benchmark(tiny_dataset(), tmp_path, backbones=["vgg19"], together=True)
    assert not list(tmp_path.iterdir())


def test_running_out_of_memory_with_every_fold_at_once_is_recorded_and_keeps_the_row(tmp_path, monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")  # the path itself is replaced below

    def out_of_memory(*_, **__):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.2GiB.\nmore")

    monkeypatch.setattr(benchmark, "time_together", out_of_memory)
    rec = benchmark.run_benchmark(tiny_dataset(), tmp_path, backbones=["vgg19"], epochs=2, n_splits=3,
                                  protocol_epochs=4, image_size=(40, 53), together=True)
    row = rec["backbones"]["vgg19"]
    assert row["together"] == {"not_measured": "out of device memory with 3 folds at once: RESOURCE_EXHAUSTED: Out "
                                               "of memory while trying to allocate 81.2GiB."}
    assert "together_speedup" not in row and row["fast"]["protocol_seconds"] > 0  # the other paths kept
    benchmark.check_record(json.loads((tmp_path / "benchmark.json").read_text()))

    def broken(*_, **__):
        raise ValueError("a bug, not the device's memory")

    monkeypatch.setattr(benchmark, "time_together", broken)
    with pytest.raises(ValueError, match="a bug"):  # anything else is raised, not recorded
        benchmark.run_benchmark(tiny_dataset(), tmp_path / "other", backbones=["vgg19"], epochs=2, n_splits=3,
                                protocol_epochs=4, image_size=(40, 53), together=True)


# ---------------------------------------------------------------- TFLOP/s and the chip's limit (synthetic records)

H200 = {"backend": "jax", "device": "gpu: NVIDIA H200", "versions": {}}
FLOPS = {"rows": {
    "vgg19/keras2": {"backbone": "vgg19", "batchnorm": "keras2", "fast_path": True, "batch_size": 64,
                     "image_size": [200, 266], "train_step": 0.4e12, "predict_step": 0.1e12, "frozen_step": 0.2e12},
    "vgg19/keras2/whole": {"backbone": "vgg19", "batchnorm": "keras2", "fast_path": False, "batch_size": 64,
                           "image_size": [200, 266], "train_step": 2.8e12, "predict_step": 1.0e12, "frozen_step": 0.0}}}
OURS = {"fast_path": True, "n_train": 1285, "protocol_seconds": 100.0, "steady_epoch_seconds": 2.0}


def bench_record(**changes):
    rec = {"environment": H200, "n_images": 1428, "n_splits": 10, "protocol_epochs": 10, "epochs": 2,
           "image_size": [200, 266], "batch_size": 64, "batchnorm": "keras2", "precision": "float32"}
    return {**rec, **changes}


def test_throughput_divides_the_protocols_flop_count_by_its_seconds_and_the_tf32_peak():
    t = benchmark.throughput(bench_record(), "vgg19", "fast", OURS, FLOPS)
    # by hand: per fold 10 epochs of 1285.2 / 64 training batches and 3 padded batches of the 142.8
    # held-out images; the frozen part once over 23 batches
    fold = 10 * 1285.2 / 64 * 0.4e12 + 10 * 3 * 0.1e12
    assert t["protocol_flops"] == pytest.approx(10 * fold + 23 * 0.2e12)
    assert t["protocol_tflops_per_second"] == pytest.approx(t["protocol_flops"] / 100 / 1e12)
    assert t["steady_tflops_per_second"] == pytest.approx(1285 / 64 * 0.4e12 / 2.0 / 1e12)
    assert t["arithmetic"] == "tf32" and t["peak_tflops"] == 494.5  # float32 on an H200 under XLA's default
    assert t["share_of_peak"] == pytest.approx(t["protocol_tflops_per_second"] / 494.5)
    plain = benchmark.throughput(bench_record(), "vgg19", "plain", {**OURS, "fast_path": False}, FLOPS)
    # the whole network's count, the held-out fold predicted once more per fold (after fit)
    assert plain["protocol_flops"] == pytest.approx(10 * (10 * 1285.2 / 64 * 2.8e12 + 11 * 3 * 1.0e12))


def test_bfloat16_is_measured_against_the_bf16_peak():
    t = benchmark.throughput(bench_record(precision="mixed_bfloat16"), "vgg19", "fast", OURS, FLOPS)
    assert t["arithmetic"] == "bfloat16" and t["peak_tflops"] == 989.0


@pytest.mark.parametrize("device", ["gpu: NVIDIA A100-SXM4-80GB", "cpu: Intel(R) Xeon(R) Processor x2"])
def test_an_unknown_chip_gets_tflops_but_no_share_and_says_so(device):
    t = benchmark.throughput(bench_record(environment={**H200, "device": device}), "vgg19", "fast", OURS, FLOPS)
    assert t["protocol_tflops_per_second"] > 0
    assert t["peak_tflops"] is None and t["share_of_peak"] is None and t["steady_share_of_peak"] is None
    assert any("no data-sheet peak" in n or "no dense peak" in n for n in t["notes"])


def test_a_count_of_other_settings_is_refused_and_a_missing_setting_is_named():
    t = benchmark.throughput(bench_record(image_size=[75, 100]), "vgg19", "fast", OURS, FLOPS)
    assert t["protocol_flops"] is None and t["protocol_tflops_per_second"] is None and t["share_of_peak"] is None
    assert any("200x266 images in batches of 64, the timing for 75x100" in n for n in t["notes"])
    assert benchmark.throughput(bench_record(batch_size=32), "vgg19", "fast", OURS, FLOPS)["protocol_flops"] is None
    assert benchmark.throughput(bench_record(), "mobilenet", "fast", OURS, FLOPS)["protocol_flops"] is None
    old = {k: v for k, v in bench_record().items() if k not in ("batch_size", "batchnorm", "precision")}
    t = benchmark.throughput(old, "vgg19", "fast", OURS, FLOPS)  # older records: the defaults then, said
    assert t["protocol_flops"] is not None
    assert any(n.startswith("batch size not recorded: 64") for n in t["notes"])


def test_the_benchmark_records_each_paths_throughput_or_why_not(record):
    row = record[0]["backbones"]["vgg19"]
    for path in ("plain", "fast"):
        t = row[path]["throughput"]
        assert t["protocol_flops"] is None or t["protocol_tflops_per_second"] > 0
    assert record[0]["precision"] == "float32" and record[0]["batch_size"] == 64


def test_the_cost_chapters_throughput_table_and_figure_draw_the_gpus_peak_and_name_what_is_missing(tmp_path):
    import json

    import matplotlib
    matplotlib.use("Agg")
    from xray_transfer import plots, results

    flops = tmp_path / "flops.json"
    flops.write_text(json.dumps(FLOPS))
    row = {"plain": {**OURS, "fast_path": False, "protocol_seconds": 400.0}, "fast": OURS}
    gpu = {**bench_record(), "backbones": {"vgg19": row}}
    cpu = {**bench_record(environment={"backend": "tensorflow", "device": "cpu: Intel(R) Xeon(R) Processor x2"}),
           "backbones": {"vgg19": row, "mobilenet": row}}
    assert results.benchmark_throughput([cpu, gpu], tmp_path / "absent.json") is None
    df = results.benchmark_throughput([cpu, gpu], flops)
    assert list(df["path"][:2]) == ["plain model.fit", "ours"]
    on_gpu = df[(df["device"] == "NVIDIA H200") & (df["path"] == "ours")].iloc[0]
    expected = benchmark.throughput(gpu, "vgg19", "fast", OURS, FLOPS)
    assert on_gpu["protocol_tflops"] == pytest.approx(expected["protocol_tflops_per_second"])
    assert on_gpu["share"] == pytest.approx(expected["protocol_tflops_per_second"] / 494.5)
    assert df[df["device"].str.startswith("CPU")]["share"].isna().all()  # no data-sheet peak for a CPU
    fig = plots.plot_throughput(df)
    cpu_ax, gpu_ax = fig.axes
    assert [ln.get_xdata()[0] for ln in gpu_ax.lines if ln.get_color() == "crimson"] == [494.5]
    assert not [ln for ln in cpu_ax.lines if ln.get_color() == "crimson"]
    texts = [t.get_text() for t in gpu_ax.texts]
    assert "not measured" in texts  # MobileNet has no GPU row
    assert any(t.endswith(f"({on_gpu['share']:.0%})") for t in texts)
    # a record with the together path: a third bar where it was measured, "out of memory" where not
    both = {**OURS, "n_train": 10 * 1285, "n_folds": 10, "protocol_seconds": 50.0, "steady_epoch_seconds": 10.0}
    gpu["backbones"] = {"vgg19": {**row, "together": both, "together_speedup": 2.0},
                        "mobilenet": {**row, "together": {"not_measured": "out of device memory with 10 folds"}}}
    df = results.benchmark_throughput([gpu], flops)
    assert list(df["path"]) == ["plain model.fit", "ours", "ours, folds together", "plain model.fit", "ours"]
    on = df[df["path"] == "ours, folds together"].iloc[0]
    assert on["steady_tflops"] == pytest.approx(10 * 1285 / 64 * 0.4e12 / 10.0 / 1e12)  # all ten folds' steps
    assert on["protocol_tflops"] == pytest.approx(2 * on_gpu["protocol_tflops"])  # the same protocol in half the time
    fig = plots.plot_throughput(df)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "ours, folds together: whole protocol" in labels
