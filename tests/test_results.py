"""Tables 1-3 from run artifacts: synthetic run folders, the committed runs, the CSV check."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xray_transfer import paper
from xray_transfer import report
from xray_transfer import results as R
from xray_transfer.models import OFFLINE_WEIGHTS, TABLE1

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "artifacts" / "runs"
BACKBONES = [b.key for b in TABLE1]


def one_hot_probs(y_pred, n_classes=3):
    """Probabilities whose argmax is ``y_pred`` (0.8 on the predicted class)."""
    p = np.full((len(y_pred), n_classes), 0.1)
    p[np.arange(len(y_pred)), y_pred] = 0.8
    return p.round(6).tolist()


def registered(backbone):
    """The run-record ``weights`` block of the offline file registered for ``backbone``."""
    reg = OFFLINE_WEIGHTS.get(backbone)
    if reg is None:
        return {"requested": "none", "kind": "none", "file": None, "sha256": None, "complete_imagenet": False,
                "missing_tensors": None}
    return {"requested": reg.file, "kind": "partial imagenet file", "file": reg.file, "sha256": reg.sha256,
            "complete_imagenet": False, "missing_tensors": ["x/kernel"]}


def make_run(root, backbone, folds, full_protocol=True, weights=None, n_splits=None, commit="abc1234",
             manifest="f" * 64, device="gpu: Test GPU"):
    """Write a run folder in the artifact format: run.json and one fold-XX.json per (y_true, y_pred)."""
    out = Path(root) / backbone
    out.mkdir(parents=True)
    n_splits = n_splits or len(folds)
    params = {"backbone": backbone, "weights": "none", "n_splits": n_splits, "epochs": 2, "batch_size": 4,
              "learning_rate": 0.001, "dropout": 0.25, "pooling": "max", "seed": 0, "image_size": [64, 80],
              "fast": "auto", "group_by_patient": False, "image_mask": "none"}
    weights = weights or registered(backbone)
    ys = [np.asarray(y) for y, _ in folds]
    counts = np.bincount(np.concatenate(ys), minlength=3).tolist() if folds else [0, 0, 0]
    record = {"params": params, "identity": {}, "notes": {"learning_rate": "test choice"},
              "full_protocol": full_protocol,
              "dataset": {"manifest_sha256": manifest, "n_images": int(sum(counts)), "counts": counts},
              "weights": weights,
              "environment": {"backend": "jax", "device": device, "versions": {},
                              "git": {"commit": commit, "dirty": None, "source": "test"}, "host": "t",
                              "time_utc": "2026-01-01T00:00:00+00:00"},
              "folds_done": list(range(len(folds))),
              "feature_cache": {"used": True, "reason": "test", "seconds": 1.0, "setup_seconds": 2.0}}
    (out / "run.json").write_text(json.dumps(record))
    for k, (y_true, y_pred) in enumerate(folds):
        fold = {"fold": k, "n_train": 10, "n_test": len(y_true), "test_index": list(range(len(y_true))),
                "test_file": [f"x{i}.png" for i in range(len(y_true))], "y_true": list(y_true),
                "probs": one_hot_probs(y_pred), "confusion": [[0] * 3] * 3,
                "history": {"loss": [1.0, 0.5], "accuracy": [0.6, 0.9], "test_loss": [1.0, 0.9],
                            "test_accuracy": [0.5, 0.6], "seconds": [2.0, 1.0]},
                "timing": {"wall_seconds": 4.0, "fit_seconds": 3.0, "predict_seconds": 0.5,
                           "train_images_per_second": 20 / 3.0, "fast_path": True},
                "backend": "jax", "device": device}
        (out / f"fold-{k:02d}.json").write_text(json.dumps(fold))
    return out


# Two folds whose pooled counts are easy to do on paper:
# fold 0: covid->covid, covid->normal, normal->covid, pneumonia->pneumonia
# fold 1: covid->covid, normal->pneumonia, pneumonia->pneumonia, normal->normal
FOLDS = [([0, 0, 1, 2], [0, 1, 0, 2]), ([0, 1, 2, 1], [0, 2, 2, 1])]
# Pooled: TP 2, FN 1, FP 1, TN 4 (normal->pneumonia is a TN); 3-class correct: 5 of 8.


@pytest.fixture
def synthetic_runs(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "mobilenet", FOLDS)
    make_run(root, "vgg19", FOLDS[:1], full_protocol=False)
    return root


def test_load_runs_keys_in_table1_order(synthetic_runs):
    runs = R.load_runs(synthetic_runs)
    assert list(runs) == ["vgg19", "mobilenet"]
    assert len(runs["mobilenet"]["folds"]) == 2


def test_load_runs_missing_root_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        R.load_runs(tmp_path / "nowhere")


def test_table2_synthetic_hand_checked(synthetic_runs):
    t2 = R.table2(R.load_runs(synthetic_runs)).set_index("backbone")
    m = t2.loc["mobilenet"]
    assert m["accuracy_2class_ours"] == pytest.approx(100 * 6 / 8)
    assert m["accuracy_3class_ours"] == pytest.approx(100 * 5 / 8)
    assert m["sensitivity_ours"] == pytest.approx(100 * 2 / 3)
    assert m["specificity_ours"] == pytest.approx(100 * 4 / 5)
    assert m["sensitivity_ci_low"] < m["sensitivity_ours"] < m["sensitivity_ci_high"]
    assert m["accuracy_2class_paper"] == paper.TABLE2["mobilenet"]["accuracy_2class"]
    assert m["accuracy_2class_diff_pp"] == pytest.approx(75.0 - 97.40)
    # per-fold SD of the 3-class accuracy: folds at 3/4 and 2/4
    assert m["accuracy_3class_fold_sd"] == pytest.approx(100 * np.std([0.75, 0.5], ddof=1))
    assert m["status"] == "full protocol"
    assert m["initialisation"] == "ImageNet, partial: conv_pw_13 trained from scratch"
    assert m["commit"] == "abc1234" and m["manifest_sha256"] == "f" * 64


def test_table3_ours_for_all_paper_for_two(synthetic_runs):
    t3 = R.table3(R.load_runs(synthetic_runs)).set_index("backbone")
    assert [t3.loc["mobilenet", f"{k}_ours"] for k in ("TP", "FP", "TN", "FN")] == [2, 1, 4, 1]
    assert t3.loc["mobilenet", "TP_paper"] == paper.TABLE3["mobilenet"]["TP"]
    assert t3.loc["vgg19", "n_paper"] == sum(paper.TABLE3["vgg19"].values())
    assert pd.isna(t3.loc["xception", "TP_paper"])


def test_missing_backbones_are_not_run_rows_without_numbers(synthetic_runs):
    runs = R.load_runs(synthetic_runs)
    for table in (R.table1(runs), R.table2(runs), R.table3(runs)):
        assert list(table["backbone"]) == BACKBONES
        missing = table[table["backbone"].isin(["inception_v3", "xception", "inception_resnet_v2"])]
        assert (missing["status"] == R.NOT_RUN).all()
        ours = [c for c in table.columns if c.endswith(("_ours", "_ci_low", "_ci_high", "_fold_sd", "_diff_pp"))]
        assert missing[ours].apply(lambda col: col.isna() | (col == "")).all().all()
    t2 = R.table2(runs).set_index("backbone")
    assert t2.loc["xception", "specificity_paper"] == paper.TABLE2["xception"]["specificity"]
    assert t2.loc["xception", "paper_asterisk"] == "*"


def test_unfinished_run_is_listed_but_gives_no_numbers(synthetic_runs):
    make_run(synthetic_runs, "xception", FOLDS, n_splits=10)  # 2 of 10 folds
    runs = R.load_runs(synthetic_runs)
    t2, t3 = R.table2(runs).set_index("backbone"), R.table3(runs).set_index("backbone")
    assert t2.loc["xception", "status"] == R.NOT_COMPLETE and R.status(runs["xception"]) == "incomplete (2 of 10 folds)"
    assert math.isnan(t2.loc["xception", "sensitivity_ours"]) and pd.isna(t3.loc["xception", "TP_ours"])
    assert "xception" not in R.confusions(runs)
    shown = R.table2_display(R.table2(runs), runs)
    assert "Xception: ImageNet, partial: block14 trained from scratch (2 of 10 folds)" in set(
        shown["Network: initialisation"])
    assert "2 of 10 folds" in R.headline(R.table2(runs), runs)


def test_csv_files_change_only_when_a_run_completes(synthetic_runs, tmp_path):
    make_run(synthetic_runs, "xception", FOLDS[:1], n_splits=3)
    before = R.render(R.load_runs(synthetic_runs))
    readme_before = R.readme_block(R.load_runs(synthetic_runs))
    fold = json.loads((synthetic_runs / "xception" / "fold-00.json").read_text())
    (synthetic_runs / "xception" / "fold-01.json").write_text(json.dumps({**fold, "fold": 1}))
    record = json.loads((synthetic_runs / "xception" / "run.json").read_text())
    record["environment"]["git"]["commit"] = "def5678"  # the runner re-renders from a newer commit
    (synthetic_runs / "xception" / "run.json").write_text(json.dumps(record))
    assert R.render(R.load_runs(synthetic_runs)) == before  # 2 of 3 folds: nothing moves
    assert R.readme_block(R.load_runs(synthetic_runs)) == readme_before
    (synthetic_runs / "xception" / "fold-02.json").write_text(json.dumps({**fold, "fold": 2}))
    after = R.render(R.load_runs(synthetic_runs))  # complete: Table 2 and 3 now hold it
    assert after["table2.csv"] != before["table2.csv"] and "def5678" in after["table2.csv"]


def test_tables_refuse_runs_of_different_datasets(synthetic_runs):
    make_run(synthetic_runs, "xception", FOLDS, manifest="e" * 64)
    runs = R.load_runs(synthetic_runs)
    for table in (R.table1, R.table2, R.table3):
        with pytest.raises(R.MixedRunsError, match="different datasets") as err:
            table(runs)
        assert "xception" in str(err.value) and "mobilenet" in str(err.value) and "eeeeeeeeeeee" in str(err.value)
    assert R.main(["--check", "--runs", str(synthetic_runs), "--out", str(synthetic_runs)]) == 1


def test_tables_refuse_runs_of_different_starting_weights(synthetic_runs):
    make_run(synthetic_runs, "xception", FOLDS, weights={"kind": "none"})  # random, though a file is registered
    with pytest.raises(R.MixedRunsError, match="different starting weights") as err:
        R.table2(R.load_runs(synthetic_runs))
    assert "other: random" in str(err.value) and "xception" in str(err.value)


def test_comparison_only_for_backbones_complete_in_both(synthetic_runs, tmp_path):
    earlier = tmp_path / "earlier"
    make_run(earlier, "mobilenet", [([0, 0, 1, 2], [1, 1, 1, 2])] * 2, weights={"kind": "none"}, manifest="a" * 64)
    make_run(earlier, "vgg19", FOLDS, weights={"kind": "none"}, manifest="a" * 64, n_splits=10)  # unfinished
    cmp = R.comparison(R.load_runs(earlier), R.load_runs(synthetic_runs)).set_index("backbone")
    assert list(cmp.index) == ["mobilenet"]
    m = cmp.loc["mobilenet"]
    assert m["initialisation_earlier"] == "random"
    assert m["initialisation_now"] == "ImageNet, partial: conv_pw_13 trained from scratch"
    assert m["sensitivity_earlier"] == 0 and m["sensitivity_now"] == pytest.approx(100 * 2 / 3)
    assert m["sensitivity_change_pp"] == pytest.approx(100 * 2 / 3)
    inits, moved = R.comparison_display(cmp.reset_index())
    assert moved.iloc[0]["Sensitivity (%)"] == "0.0 \u2192 66.7 (+66.7)"
    assert inits.iloc[0]["Earlier initialisation"] == "random"


def test_roc_auc_and_interval_hand_checked(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "mobilenet", [([0, 0, 1, 2], [0, 1, 0, 2])])
    run = R.load_runs(root)["mobilenet"]
    # COVID-19 probability: 0.8, 0.1 for the two positives; 0.8, 0.1 for the negatives
    # -> of the 4 (positive, negative) pairs, 1 won, 2 tied, 1 lost: AUC 0.5.
    r = R.roc(run)
    assert r["auc"] == pytest.approx(0.5)
    assert r["sensitivity"] == 0.5 and r["specificity"] == 0.5
    lo, hi = r["auc_ci"]
    assert 0 <= lo < 0.5 < hi <= 1
    assert R.auc_interval(0.9, 50, 100) == pytest.approx((0.8398, 0.9602), abs=1e-4)


def test_weights_table_lists_every_backbone_with_its_evidence():
    wt = R.weights_table().set_index("backbone")
    assert list(wt.index) == BACKBONES
    for key, reg in OFFLINE_WEIGHTS.items():
        assert wt.loc[key, "sha256"] == reg.sha256 and wt.loc[key, "label"] == reg.label
        assert wt.loc[key, "differs"] == reg.differs and wt.loc[key, "evidence"] == reg.evidence
    assert wt.loc["inception_resnet_v2", "label"] == "random" and wt.loc["inception_resnet_v2", "file"] == ""


def test_md_table_is_a_numbered_table_without_missing_values():
    df = pd.DataFrame({"Network": ["A", "B"], "Ours (%)": [R.pct(97.77), R.pct(math.nan)], "Note": [None, "x"]})
    text = R.md_table(df, "A caption.", "tbl-x", notes=["- means missing."])
    assert text.startswith(":::{list-table} A caption.\n:name: tbl-x\n:header-rows: 1")
    assert "  - 97.8" in text and "nan" not in text.lower() and "None" not in text
    assert text.count("* - ") == 3 and "\u2013" in text and "- means missing." in text
    assert R.md_table(pd.DataFrame({"a": [""]}), "c", "tbl-y").count("\u00a0") == 1  # blank, not missing


def test_run_folder_without_folds_is_not_run(synthetic_runs):
    make_run(synthetic_runs, "inception_v3", [], n_splits=10)
    runs = R.load_runs(synthetic_runs)
    assert R.status(runs["inception_v3"]) == "not run (0 of 10 folds)"
    t2 = R.table2(runs).set_index("backbone")
    assert math.isnan(t2.loc["inception_v3", "sensitivity_ours"])


def test_reduced_and_incomplete_runs_are_flagged(synthetic_runs):
    runs = R.load_runs(synthetic_runs)
    assert R.status(runs["vgg19"]) == "reduced settings"
    make_run(synthetic_runs, "xception", FOLDS[:1], n_splits=10)
    assert R.status(R.load_runs(synthetic_runs)["xception"]) == "incomplete (1 of 10 folds)"
    assert not R.is_complete(R.load_runs(synthetic_runs)["xception"])


def test_table1_records_the_params_used(synthetic_runs):
    t1 = R.table1(R.load_runs(synthetic_runs)).set_index("backbone")
    m = t1.loc["mobilenet"]
    assert m["cutoff_paper"] == 10 and m["cutoff_ours"] == 10
    assert m["learning_rate_ours"] == "0.001" and m["dropout_ours"] == "0.25"
    assert m["epochs_ours"] == 2 and m["batch_size_ours"] == 4 and m["input_size_ours"] == "64x80"
    assert m["pooling_ours"] == "global max" and m["optimizer_ours"] == "Adam"
    assert m["weights_ours"] == "ImageNet, partial: conv_pw_13 trained from scratch"
    assert t1.loc["vgg19", "weights_ours"] == "ImageNet (8-bit, complete)"
    assert t1.loc["vgg19", "dropout_ours"] == "none"  # one hidden layer: no dropout layer
    assert t1.loc["inception_resnet_v2", "classifier_paper"] == "none"


def test_display_tables_mark_not_run(synthetic_runs):
    runs = R.load_runs(synthetic_runs)
    d2 = R.table2_display(R.table2(runs), runs)
    xception = d2.iloc[12:16]  # four metric rows per network, in Table 1 order
    assert xception.iloc[0]["Network: initialisation"] == "Xception: not run"
    assert (xception["Ours (%)"] == R.DASH).all() and xception.iloc[3]["Paper (%)"] == "99.99\\*" + report.IMPOSSIBLE
    mobilenet = d2.iloc[4:8].set_index("Metric")
    assert mobilenet.loc["sensitivity", "Ours (%)"] == "66.7"
    assert mobilenet.loc["2-class accuracy", "Difference (pp)"] == "\u221222.4"
    d1 = R.table1_display(R.table1(runs))
    row = d1[(d1["Source"] == "ours")].iloc[0]
    assert row["VGG19"] == "ImageNet (8-bit, complete)" and row["Xception"] == R.DASH
    d3 = R.table3_display(R.table3(runs))
    assert d3.iloc[2]["TP"] == "2" and d3.iloc[7]["TP"] == R.DASH  # mobilenet ours; inception v3 paper
    for df in (d2, d3, R.glance_display(R.table2(runs))):
        assert not df.isna().any().any() and not df.astype(str).apply(lambda c: c.str.contains("nan|None")).any().any()


def test_write_is_deterministic_and_check_detects_stale(synthetic_runs, tmp_path, capsys):
    out = tmp_path / "results"
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{R.README_START}\nold\n{R.README_END}\n\nrest\n")
    R.write(synthetic_runs, out, readme)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    R.write(synthetic_runs, out, readme)
    assert first == {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(first) == list(R.TABLE_FILES)
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("rest\n") and "MobileNet v1 | ImageNet, partial" in text
    assert R.check(synthetic_runs, out, readme) == []
    args = ["--check", "--runs", str(synthetic_runs), "--out", str(out), "--readme", str(readme)]
    assert R.main(args) == 0

    fold = synthetic_runs / "mobilenet" / "fold-00.json"
    f = json.loads(fold.read_text())
    f["probs"][1] = one_hot_probs([0])[0]  # the missed COVID-19 image is now found
    fold.write_text(json.dumps(f))
    problems = R.check(synthetic_runs, out)
    assert any("table2.csv differs" in p for p in problems)
    assert any("table3.csv differs" in p for p in problems)
    assert any("README.md's headline block differs" in p for p in problems)
    assert R.main(args) == 1
    assert "make results" in capsys.readouterr().err


def test_glance_figure_is_stamped_with_the_table_it_shows(synthetic_runs, tmp_path):
    png = R.write_glance(synthetic_runs, tmp_path / "glance.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in R.check(synthetic_runs, tmp_path / "none", readme=None, glance=png) if "drawn from other runs" in p]
    make_run(synthetic_runs, "xception", FOLDS)  # a new complete run: the figure is stale
    assert [p for p in R.check(synthetic_runs, tmp_path / "none", readme=None, glance=png) if "drawn from other runs" in p]


def test_check_reports_missing_csv(synthetic_runs, tmp_path):
    assert any("missing" in p for p in R.check(synthetic_runs, tmp_path / "empty"))


def test_flipping_one_committed_prediction_changes_table2_and_csv(tmp_path):
    """Nothing is hard-coded: one changed prediction in a committed fold moves the tables.

    Uses the current MobileNet run once it is complete, the earlier generation until then
    (its records given the registered weights, so that the tables accept them together)."""
    runs_copy = tmp_path / "runs"
    current = R.is_complete(R.load_runs(RUNS).get("mobilenet"))
    shutil.copytree(RUNS if current else RUNS.parent / "earlier-1426" / "runs", runs_copy,
                    ignore=shutil.ignore_patterns("*.ipynb"))
    if not current:
        for path in runs_copy.glob("*/run.json"):
            record = json.loads(path.read_text())
            record["weights"] = registered(record["params"]["backbone"])
            path.write_text(json.dumps(record))
    before = R.load_runs(runs_copy)
    t2_before, csv_before = R.table2(before), R.render(before)

    fold = runs_copy / "mobilenet" / "fold-00.json"
    f = json.loads(fold.read_text())
    i = f["y_true"].index(0)  # a COVID-19 image
    pred = int(np.argmax(f["probs"][i]))
    new = 1 if pred == 0 else 0  # hit -> miss, or miss -> hit
    f["probs"][i] = one_hot_probs([new])[0]
    fold.write_text(json.dumps(f))

    after = R.load_runs(runs_copy)
    t2_after, csv_after = R.table2(after), R.render(after)
    a, b = t2_before.set_index("backbone"), t2_after.set_index("backbone")
    assert abs(a.loc["mobilenet", "sensitivity_ours"] - b.loc["mobilenet", "sensitivity_ours"]) == pytest.approx(
        100 / 224)
    assert a.drop("mobilenet").equals(b.drop("mobilenet"))
    assert csv_before["table2.csv"] != csv_after["table2.csv"]
    assert csv_before["table3.csv"] != csv_after["table3.csv"]
    assert csv_before["table1.csv"] == csv_after["table1.csv"]


def test_committed_results_match_committed_artifacts():
    """results/*.csv, README's headline block and book/images/at_a_glance.png are what `make results`
    writes from artifacts/runs (the book build checks this too)."""
    assert R.check(RUNS, REPO / "results", readme=REPO / "README.md", glance=REPO / "book/images/at_a_glance.png") == []


def test_cost(synthetic_runs):
    cost = R.cost(R.load_runs(synthetic_runs)).set_index("backbone")
    assert cost.loc["mobilenet", "fold_wall_seconds"] == pytest.approx(8.0)
    assert cost.loc["mobilenet", "train_images_per_second"] == pytest.approx(2 * 10 * 2 / 6.0)
    assert cost.loc["mobilenet", "folds"] == 2
    assert cost.loc["mobilenet", "device"] == "gpu: Test GPU"


def test_benchmark_table_puts_the_cpu_and_gpu_records_in_one_table(tmp_path):
    cpu, gpu = tmp_path / "benchmark.json", tmp_path / "gpu" / "benchmark.json"
    assert R.benchmark_table([cpu, gpu]) is None

    def record(device, speedup):
        row = {"plain": {"steady_images_per_second": 100.0, "protocol_seconds": 600.0},
               "fast": {"steady_images_per_second": 100.0 * speedup, "protocol_seconds": 600.0 / speedup,
                        "fast_path": speedup > 1},
               "steady_speedup": speedup, "protocol_speedup": speedup}
        return json.dumps({"environment": {"device": device}, "n_images": 400, "backbones": {"vgg19": row}})

    cpu.write_text(record("cpu: Intel(R) Xeon(R) Processor x2", 6.0))
    df, records = R.benchmark_table([cpu, gpu])  # the GPU's is pending: the CPU's alone
    assert list(df["device"]) == ["CPU, 2 cores"] and len(records) == 1
    gpu.parent.mkdir()
    gpu.write_text(record("gpu: NVIDIA H100 80GB HBM3", 12.0))
    df, records = R.benchmark_table([cpu, gpu])
    assert list(df["device"]) == ["CPU, 2 cores", "NVIDIA H100 80GB HBM3"]
    assert list(df["protocol_speedup"]) == [6.0, 12.0] and list(df["fast_protocol_seconds"]) == [100.0, 50.0]
    assert df["fast_path"].all() and list(df["network"]) == ["VGG19", "VGG19"]
    # a record stopped after VGG19 names the four networks it never measured
    assert R.benchmark_absent(records[1]) == ["MobileNet v1", "Inception v3", "Xception", "Inception ResNet v2"]


def test_learning_summary_one_class_predictor(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "xception", [([0, 1, 2, 2], [2, 2, 2, 2])])
    learn = R.learning_summary(R.load_runs(root)).set_index("backbone")
    assert learn.loc["xception", "top_predicted_share"] == 1.0
    assert learn.loc["xception", "true_share_of_top_class"] == 0.5
    assert learn.loc["xception", "train_accuracy_final"] == 0.9
    assert learn.loc["xception", "half_epoch"] == 1  # of 2 epochs
    assert learn.loc["xception", "heldout_accuracy_half"] == 0.5 and learn.loc["xception", "heldout_accuracy_final"] == 0.6




# --------------------------------------------------------------------------- the paper against itself
def test_paper_bounds_match_the_hand_computed_values():
    """224 COVID-19 images of 1428: a missed COVID-19 image is a 3-class error too."""
    assert round(R.accuracy3_cap(12.94), 1) == 86.3  # 1 - (224/1428)(1 - 0.1294)
    assert round(R.accuracy3_cap(0.08), 1) == round(R.accuracy3_cap(0.01), 1) == 84.3
    assert R.accuracy3_cap(100) == pytest.approx(100) and R.accuracy3_cap(0) == pytest.approx(100 * 1204 / 1428)
    assert round(R.implied_accuracy2(0.08, 99.99), 2) == 84.32  # Xception's own row
    # VGG19's Table 2 figures imply the abstract's 2-class accuracy (its Table 2 prints its specificity)
    assert round(R.implied_accuracy2(92.85, 98.75), 2) == pytest.approx(paper.ABSTRACT_ACCURACY, abs=0.01)
    assert R.rate_possible(12.94, 224) and R.rate_possible(92.85, 224)  # 29/224, 208/224, cut to 2 decimals
    assert not R.rate_possible(0.08, 224) and not R.rate_possible(0.01, 224) and R.rate_possible(0.0, 224)


def test_paper_checks_flag_exactly_the_cells_the_table_rules_out():
    checks = R.paper_checks().set_index(["backbone", "metric"])
    bad = set(checks.index[~checks["possible"]])
    for b in ("inception_v3", "xception", "inception_resnet_v2"):
        assert (b, "accuracy_3class") in bad  # 92.85 % above each cap
    assert {("xception", "sensitivity"), ("inception_resnet_v2", "sensitivity")} <= bad
    assert ("vgg19", "accuracy_2class") in bad and ("xception", "accuracy_2class") in bad
    assert not any(b == "mobilenet" for b, _ in bad)  # the consistent row
    assert ("inception_v3", "sensitivity") not in bad and ("vgg19", "accuracy_3class") not in bad
    assert checks.loc[("inception_v3", "accuracy_3class"), "why"] == "above the 86.3 % that its sensitivity of 12.94 % allows"
    # a consistent synthetic table passes every check
    fine = {"x": {"accuracy_2class": 100 * (100 + 1000) / 1428, "accuracy_3class": 80.0,
                  "sensitivity": 100 * 100 / 224, "specificity": 100 * 1000 / 1204}}
    fine["x"] = {k: float(f"{v:.2f}") for k, v in fine["x"].items()}
    assert R.paper_checks(fine)["possible"].all()


def test_largest_gaps_rank_only_values_the_paper_allows():
    t2 = R.table2(R.load_runs(RUNS))
    allowed = R.largest_gaps(t2, n=20, allowed_only=True)
    every = R.largest_gaps(t2, n=20)
    impossible = {(R.get_backbone(r.backbone).name, R.METRIC_NAMES[r.metric])
                  for r in R.paper_checks().itertuples() if not r.possible}
    assert not {(net, m) for net, m, *_ in allowed} & impossible
    assert {(net, m) for net, m, *_ in every} & impossible  # without the filter, impossible values would rank


def test_verdict_is_computed_from_the_artifacts():
    runs = R.load_runs(RUNS)
    said = report.verdict(runs, REPO / "artifacts", style="md")
    text = " ".join(said)
    t2 = R.table2(runs).set_index("backbone")
    assert "caps 3-class accuracy at 86.3 %" in text and "caps it at 84.3 %" in text
    assert "imply a 2-class accuracy of 84.32 %, not 85.57 %" in text
    for b in ("inception_v3", "xception", "inception_resnet_v2"):
        assert R.pct(t2.loc[b, 'sensitivity_ours']) in said[1]
    calls = json.loads((REPO / "artifacts" / "audit" / "audit-inputs.json").read_text())["models"]
    if calls.get("vgg19"):
        assert "not evidence of COVID-19 detection" in text


def test_verdict_says_the_collapse_is_untested_until_its_runs_exist(tmp_path):
    """The cross-backend and BatchNorm runs of the collapsed backbones decide the sentence."""
    from xray_transfer import compare

    art = tmp_path / "artifacts"
    shutil.copytree(REPO / "artifacts" / "runs", art / "runs")
    missing = compare.collapse_untested(art)
    assert len(missing) == 3 and "cross-backend check of Xception" in missing[-1]
    text = " ".join(report.verdict(R.load_runs(art / "runs"), art, style="md"))
    assert "the cause of the collapse is untested" in text
    # the runs land: both collapsed backbones in inference mode (Xception's finds COVID-19 half the time,
    # Inception ResNet v2's never, on another device), Xception's folds 0-1 on TensorFlow
    never = [(y, [1 if c == 0 else c for c in y]) for y, _ in FOLDS]
    for b, sub, folds, device in (("xception", "batchnorm-inference", FOLDS, "gpu: NVIDIA H200"),
                                  ("inception_resnet_v2", "batchnorm-inference", never, "cpu: Test CPU x2"),
                                  ("xception", "backend-tensorflow", FOLDS, "gpu: NVIDIA H200")):
        dest = art / "robustness" / b
        make_run(dest, b, folds, manifest=R.manifest(json.loads((RUNS / b / "run.json").read_text())), device=device)
        (dest / b).rename(dest / sub)
    assert compare.collapse_untested(art) == []
    text = " ".join(report.verdict(R.load_runs(art / "runs"), art, style="md"))
    assert "untested" not in text
    assert ("In the other modes, Xception's failure disappears (66.7 % in inference) and Inception ResNet v2's "
            "persists (0.0 % in inference, on another device) ([BatchNorm modes") in text


def test_run_provenance_reads_each_folds_backend_device_and_commit(tmp_path):
    run_dir = make_run(tmp_path, "mobilenet", FOLDS, commit="aaaaaaa")
    fold = json.loads((run_dir / "fold-01.json").read_text())
    fold.update(backend="tensorflow", device="cpu: Test CPU x2", git={"commit": "bbbbbbb", "dirty": False})
    (run_dir / "fold-01.json").write_text(json.dumps(fold))
    prov = R.run_provenance(R.load_run(run_dir))
    assert prov == {"backend": ["jax", "tensorflow"], "device": ["cpu: Test CPU x2", "gpu: Test GPU"],
                    "commit": ["aaaaaaa", "bbbbbbb"]}
