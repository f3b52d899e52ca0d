"""The audit's per-fold figure draws what the runs hold."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

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
