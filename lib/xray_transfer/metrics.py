"""Section 2.4's metrics with scikit-learn: 3-class accuracy, COVID-19 vs rest counts and rates.

Label 0 is COVID-19 (see ``data.CLASSES``). TP: COVID-19 called COVID-19; FN: COVID-19
called normal or pneumonia; FP: normal or pneumonia called COVID-19; TN: the rest
(a normal called pneumonia is a TN for the 2-class figures).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix

POSITIVE = 0


def confusion(y_true, y_pred, n_classes=3) -> np.ndarray:
    """3x3 confusion matrix, rows true class, columns predicted class."""
    return confusion_matrix(y_true, y_pred, labels=list(range(n_classes)))


def binary_counts(y_true, y_pred, positive=POSITIVE) -> dict:
    """TP, FP, TN, FN of ``positive`` against the rest.

    >>> binary_counts([0, 0, 1, 2], [0, 1, 0, 2])
    {'TP': 1, 'FP': 1, 'TN': 1, 'FN': 1}
    """
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    (tn, fp), (fn, tp) = confusion_matrix(t, p, labels=[False, True])
    return {"TP": int(tp), "FP": int(fp), "TN": int(tn), "FN": int(fn)}


def rates(TP, FP, TN, FN) -> dict:
    """Accuracy, sensitivity and specificity (fractions) from the four counts."""
    n = TP + FP + TN + FN
    return {"accuracy_2class": (TP + TN) / n if n else math.nan,
            "sensitivity": TP / (TP + FN) if TP + FN else math.nan,
            "specificity": TN / (TN + FP) if TN + FP else math.nan}


def wilson_interval(k, n, z=1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n.

    >>> [round(v, 4) for v in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def summarize(y_true, y_pred) -> dict:
    """Table 2 and Table 3 figures for pooled predictions, with 95 % Wilson intervals."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    c = binary_counts(y_true, y_pred)
    r = rates(**c)
    n = len(y_true)
    k3 = int((y_true == y_pred).sum())
    out = {**c, "n": n, "accuracy_3class": accuracy_score(y_true, y_pred), **r}
    out["ci"] = {"accuracy_3class": wilson_interval(k3, n),
                 "accuracy_2class": wilson_interval(c["TP"] + c["TN"], n),
                 "sensitivity": wilson_interval(c["TP"], c["TP"] + c["FN"]),
                 "specificity": wilson_interval(c["TN"], c["TN"] + c["FP"])}
    return out


def pooled(folds) -> dict:
    """Pool the test folds of a run (each with ``y_true`` and ``probs``) and add per-fold spread."""
    y_true = np.concatenate([np.asarray(f["y_true"]) for f in folds])
    y_pred = np.concatenate([np.asarray(f["probs"]).argmax(1) for f in folds])
    out = summarize(y_true, y_pred)
    per = [summarize(f["y_true"], np.asarray(f["probs"]).argmax(1)) for f in folds]
    keys = ("accuracy_3class", "accuracy_2class", "sensitivity", "specificity")
    out["per_fold"] = {k: [p[k] for p in per] for k in keys}
    out["fold_sd"] = {k: float(np.nanstd(out["per_fold"][k], ddof=1)) if len(per) > 1 else math.nan for k in keys}
    out["confusion"] = confusion(y_true, y_pred).tolist()
    out["n_folds"] = len(folds)
    return out
