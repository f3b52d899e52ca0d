"""The audit's per-fold figure draws what the runs hold."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from xray_transfer import metrics  # noqa: E402
from xray_transfer.plots import plot_fold_scores  # noqa: E402


def _fold(y_true, y_pred):
    probs = np.eye(3)[y_pred]
    return {"y_true": np.asarray(y_true), "probs": probs}


def test_plot_fold_scores_draws_each_fold_and_the_pooled_score():
    folds = [_fold([0, 1, 2, 2], [0, 1, 2, 2]), _fold([0, 1, 2, 2], [0, 1, 1, 1])]
    summary = metrics.pooled(folds)
    ax = plot_fold_scores({"a": summary, "missing": None}, reference=40, reference_label="majority")
    dots = ax.collections[0].get_offsets()
    assert sorted(dots[:, 1].tolist()) == [50.0, 100.0]  # per-fold 3-class accuracy, in %
    pooled_bar = ax.collections[1].get_segments()[0]
    assert np.allclose(pooled_bar[:, 1], 75.0)
    assert [t.get_text() for t in ax.texts] == ["not run"]
    assert ax.get_lines()[0].get_ydata()[0] == 40


def _t2_rows():
    """A two-row Table 2 frame: one complete run, one without numbers."""
    import pandas as pd

    from xray_transfer import results as R

    nan = float("nan")
    rows = []
    for key, net, init, ours in (("vgg19", "VGG19", "ImageNet (8-bit, complete)", 80.0),
                                 ("mobilenet", "MobileNet v1", "", nan)):
        row = {"backbone": key, "network": net, "initialisation": init}
        for k in R.METRICS:
            row.update({f"{k}_ours": ours, f"{k}_ci_low": ours - 5, f"{k}_ci_high": ours + 5, f"{k}_paper": 90.0})
        rows.append(row)
    return pd.DataFrame(rows)


def test_forest_plot_shows_ours_with_interval_paper_and_unfinished_rows():
    from xray_transfer.plots import init_kind, plot_forest

    run = {"record": {"params": {"n_splits": 10}}, "folds": [{}] * 3}
    fig = plot_forest(_t2_rows(), {"mobilenet": run})
    assert len(fig.axes) == 4
    ax = fig.axes[0]
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert sorted(line.get_xdata()[0] for line in crosses) == [90.0, 90.0]  # the paper, on both rows
    bars = [c for c in ax.collections if c.get_segments()]
    (seg,) = bars[0].get_segments()
    assert seg[:, 0].tolist() == [75.0, 85.0]  # ours: 80 with its interval
    assert [t.get_text() for t in ax.texts] == ["3 of 10 folds"]
    assert init_kind("random") == "random"
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["ours, ImageNet start", "paper"]
    assert all(t.get_fontsize() >= 9 for t in ax.get_xticklabels() + ax.get_yticklabels() + ax.texts)


def test_confusion_grid_and_roc_panels():
    from xray_transfer.plots import plot_confusion_grid, plot_roc

    fig = plot_confusion_grid({"a": [[5, 1, 0], [0, 7, 2], [1, 0, 9]]}, {"a": "A", "b": "B"}, {"b": "2 of 10 folds"})
    drawn = [ax for ax in fig.axes if ax.axison]
    assert len(drawn) == 1 and "9" in [t.get_text() for t in drawn[0].texts]
    assert "B\n2 of 10 folds" in [t.get_text() for ax in fig.axes for t in ax.texts]
    assert fig.get_size_inches()[0] <= 7.5
    curve = {"fpr": np.array([0, 0.1, 1]), "tpr": np.array([0, 0.9, 1]), "auc": 0.9, "auc_ci": (0.85, 0.95),
             "sensitivity": 0.9, "specificity": 0.9}
    fig = plot_roc({"a": curve}, {"a": "A"}, {"a": (92.85, 98.75)})
    ax = fig.axes[0]
    assert ax.get_title() == "A\nAUC 0.900 (0.850\u20130.950)"
    paper = [line for line in ax.get_lines() if line.get_marker() == "x"][0]
    assert paper.get_xdata()[0] == pytest.approx(100 - 98.75) and paper.get_ydata()[0] == 92.85


def test_saliency_grid_labels_each_row_and_keeps_text_readable():
    """One row per group of calls, labelled; titles at 9 pt or more on a figure no wider than
    the book's column (so the text is not shrunk on the page)."""
    from xray_transfer.plots import plot_saliency_grid

    img = np.zeros((20, 26, 3), np.uint8)
    sal = np.random.default_rng(0).uniform(-1, 1, (20, 26))
    mask = np.zeros((20, 26), bool)
    mask[5:15, 6:20] = True
    cases = [(img, "COVID-19, right", "COVID-19", "COVID-19"), (img, "COVID-19, wrong", "COVID-19", "normal"),
             (img, "COVID-19, wrong", "COVID-19", "pneumonia")]
    fig = plot_saliency_grid(cases, [sal] * 3, [mask] * 3)
    assert fig.get_size_inches()[0] <= 7.5
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["COVID-19\nright", "COVID-19\nwrong"]
    titles = [ax.title for ax in fig.axes if ax.get_title()]
    assert [t.get_text() for t in titles] == ["COVID-19 \u2192 COVID-19", "COVID-19 \u2192 normal",
                                              "COVID-19 \u2192 pneumonia"]
    assert min(t.get_fontsize() for t in titles) >= 9
    assert min(ax.yaxis.label.get_fontsize() for ax in fig.axes if ax.get_ylabel()) >= 9
