"""Tests of xray_transfer.metrics: Section 2.4's figures on hand-checkable cases and on the paper's Table 3."""
import math

import numpy as np
import pytest

from xray_transfer import metrics, paper

# Label 0 is COVID-19, 1 normal, 2 pneumonia.


def test_binary_counts_treats_normal_called_pneumonia_as_true_negative():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 2, 2, 0, 1, 2, 2]
    # COVID called COVID: 2 (TP); COVID called pneumonia: 1 (FN);
    # normal called COVID: 1 (FP); normal called pneumonia, pneumonia called normal,
    # pneumonia called pneumonia x2: 4 (TN) even though two of those are 3-class errors.
    assert metrics.binary_counts(y_true, y_pred) == {"TP": 2, "FP": 1, "TN": 4, "FN": 1}


def test_binary_counts_sum_to_number_of_images():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    c = metrics.binary_counts(y_true, y_pred)
    assert sum(c.values()) == 50
    assert c["TP"] + c["FN"] == int((y_true == 0).sum())
    assert c["TP"] + c["FP"] == int((y_pred == 0).sum())


def test_rates_on_hand_checkable_counts():
    r = metrics.rates(TP=3, FP=1, TN=5, FN=1)
    assert r["accuracy_2class"] == pytest.approx(8 / 10)
    assert r["sensitivity"] == pytest.approx(3 / 4)
    assert r["specificity"] == pytest.approx(5 / 6)


def test_rates_are_nan_without_positives_or_negatives():
    r = metrics.rates(TP=0, FP=0, TN=4, FN=0)
    assert math.isnan(r["sensitivity"])
    assert r["specificity"] == 1.0
    assert all(math.isnan(v) for v in metrics.rates(0, 0, 0, 0).values())


def test_confusion_rows_are_true_class_columns_predicted():
    c = metrics.confusion([0, 1, 1, 2], [1, 1, 2, 2])
    assert c.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 1]]
    # a class absent from both still gets its row and column
    assert metrics.confusion([0, 0], [0, 0]).shape == (3, 3)


def test_summarize_separates_3class_and_2class_accuracy():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 2, 2, 0, 1, 2, 2]
    s = metrics.summarize(y_true, y_pred)
    assert s["n"] == 8
    assert s["accuracy_3class"] == pytest.approx(4 / 8)  # 0,0 and 2,2 right
    assert s["accuracy_2class"] == pytest.approx(6 / 8)  # TP 2 + TN 4
    assert s["sensitivity"] == pytest.approx(2 / 3)
    assert s["specificity"] == pytest.approx(4 / 5)
    for k in ("accuracy_3class", "accuracy_2class", "sensitivity", "specificity"):
        lo, hi = s["ci"][k]
        assert 0 <= lo <= s[k] <= hi <= 1


def _paper_table2_from_table3(backbone):
    return {k: 100 * v for k, v in metrics.rates(**paper.TABLE3[backbone]).items()}


def test_mobilenet_table3_counts_give_table2_row_up_to_rounding():
    got = _paper_table2_from_table3("mobilenet")
    assert got["accuracy_2class"] == pytest.approx(97.41, abs=0.02)   # paper prints 97.40
    assert got["sensitivity"] == pytest.approx(99.11, abs=0.02)       # paper prints 99.10
    assert got["specificity"] == pytest.approx(97.09, abs=0.02)
    for k in ("accuracy_2class", "sensitivity", "specificity"):
        assert got[k] == pytest.approx(paper.TABLE2["mobilenet"][k], abs=0.02)


def test_vgg19_table3_contradicts_table2_accuracy_which_equals_specificity():
    got = _paper_table2_from_table3("vgg19")
    assert got["accuracy_2class"] == pytest.approx(97.83, abs=0.02)   # (208 + 1189) / 1428
    assert got["accuracy_2class"] == pytest.approx(paper.ABSTRACT_ACCURACY, abs=0.02)
    assert abs(got["accuracy_2class"] - paper.TABLE2["vgg19"]["accuracy_2class"]) > 0.5
    # Table 2's 98.75 is the specificity 1189 / 1204
    assert got["specificity"] == pytest.approx(100 * 1189 / 1204)
    assert paper.TABLE2["vgg19"]["accuracy_2class"] == pytest.approx(got["specificity"], abs=0.01)


def test_summarize_on_predictions_reproducing_mobilenet_table3():
    c = paper.TABLE3["mobilenet"]
    y_true = [0] * (c["TP"] + c["FN"]) + [1] * (c["TN"] + c["FP"])
    y_pred = [0] * c["TP"] + [2] * c["FN"] + [0] * c["FP"] + [1] * c["TN"]
    s = metrics.summarize(y_true, y_pred)
    assert {k: s[k] for k in c} == c
    assert s["n"] == 1428


@pytest.mark.parametrize("k, n, expected", [(8, 10, (0.4902, 0.9433)), (1, 2, (0.0945, 0.9055))])
def test_wilson_interval_known_values(k, n, expected):
    lo, hi = metrics.wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(expected, abs=5e-5)


@pytest.mark.parametrize("n", [1, 5, 30])
def test_wilson_interval_edges_stay_in_unit_interval(n):
    lo0, hi0 = metrics.wilson_interval(0, n)
    assert lo0 == pytest.approx(0.0, abs=1e-12) and 0 < hi0 < 1
    lo1, hi1 = metrics.wilson_interval(n, n)
    assert 0 < lo1 < 1 and hi1 == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= lo0 and hi1 <= 1.0
    assert hi0 == pytest.approx(1 - lo1)  # symmetric


def test_wilson_interval_of_empty_sample_is_nan():
    assert all(math.isnan(v) for v in metrics.wilson_interval(0, 0))


def _fold(y_true, y_pred):
    probs = np.full((len(y_pred), 3), 0.1)
    probs[np.arange(len(y_pred)), y_pred] = 0.8
    return {"y_true": list(y_true), "probs": probs.tolist()}


def test_pooled_over_two_folds_pools_counts_and_keeps_per_fold_figures():
    f1 = _fold([0, 0, 1, 2], [0, 0, 1, 2])        # all right
    f2 = _fold([0, 1, 2, 2, 1], [1, 0, 2, 1, 1])  # COVID missed, normal called COVID
    s = metrics.pooled([f1, f2])
    assert s["n_folds"] == 2 and s["n"] == 9
    assert np.asarray(s["confusion"]).sum() == 9
    assert s["confusion"] == [[2, 1, 0], [1, 2, 0], [0, 1, 2]]
    assert s["per_fold"]["accuracy_3class"] == pytest.approx([1.0, 2 / 5])
    assert s["per_fold"]["sensitivity"] == pytest.approx([1.0, 0.0])
    assert s["accuracy_3class"] == pytest.approx(6 / 9)
    assert (s["TP"], s["FP"], s["TN"], s["FN"]) == (2, 1, 5, 1)
    assert s["fold_sd"]["accuracy_3class"] == pytest.approx(np.std([1.0, 0.4], ddof=1))
    assert s["fold_sd"]["sensitivity"] == pytest.approx(np.std([1.0, 0.0], ddof=1))


def test_pooled_single_fold_has_nan_spread():
    s = metrics.pooled([_fold([0, 1, 2], [0, 1, 2])])
    assert s["accuracy_3class"] == 1.0
    assert math.isnan(s["fold_sd"]["accuracy_3class"])
