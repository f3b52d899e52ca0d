"""Figures shared by the training, results and audit chapters."""
from __future__ import annotations

import numpy as np

from .data import CLASSES

LABELS = {"covid": "COVID-19", "normal": "normal", "pneumonia": "pneumonia"}


def plot_confusion(cm, ax=None, title=None, normalize=False):
    """Seaborn heatmap of a 3x3 confusion matrix (rows true, columns predicted)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(cm)
    ax = ax or plt.subplots(figsize=(3.6, 3.0))[1]
    names = [LABELS[c] for c in CLASSES]
    data = cm / cm.sum(axis=1, keepdims=True) if normalize else cm
    sns.heatmap(data, annot=cm, fmt="d", cmap="Blues", cbar=False, xticklabels=names, yticklabels=names,
                ax=ax, square=True, linewidths=0.5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    return ax


def plot_learning_curves(folds, metric="accuracy"):
    """Training and held-out-fold curves of every fold, one panel per metric."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.0), sharex=True)
    for ax, m in zip(axes, ("loss", metric)):
        for f in folds:
            h = f["history"]
            ep = np.arange(1, len(h[m]) + 1)
            ax.plot(ep, h[m], color="tab:blue", alpha=0.5, lw=1)
            ax.plot(ep, h[f"test_{m}"], color="tab:orange", alpha=0.5, lw=1)
        ax.plot([], [], color="tab:blue", label="training folds")
        ax.plot([], [], color="tab:orange", label="held-out fold")
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def plot_fold_scores(runs, metric="accuracy_3class", ax=None, reference=None, reference_label=None, rotation=20):
    """Per-fold scores of several runs as dots, the pooled score as a black bar.

    ``runs`` maps a label to a :func:`xray_transfer.metrics.pooled` summary (or None for a
    run that is missing, drawn as an empty slot). Scores are shown in %. ``reference`` adds
    a dashed horizontal line, e.g. the accuracy of always guessing the largest class.
    """
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(1.2 * len(runs) + 2, 3.2))[1]
    rng = np.random.default_rng(0)
    for x, (name, summary) in enumerate(runs.items()):
        if summary is None:
            ax.text(x, 50, "not run", ha="center", va="center", fontsize=8, color="grey", rotation=90)
            continue
        per_fold = 100 * np.asarray(summary["per_fold"][metric], dtype=float)
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(per_fold)), per_fold, s=14, alpha=0.6, color="tab:blue")
        ax.hlines(100 * summary[metric], x - 0.3, x + 0.3, color="black", lw=2)
    if reference is not None:
        ax.axhline(reference, ls="--", color="tab:red", lw=1, label=reference_label)
        if reference_label:
            ax.legend(frameon=False, fontsize=8, loc="lower left")
    ax.set_xticks(range(len(runs)), list(runs), rotation=rotation, ha="right" if rotation else "center", fontsize=8)
    names = {"accuracy_3class": "3-class accuracy", "accuracy_2class": "2-class accuracy"}
    ax.set_ylabel(f"{names.get(metric, metric)} (%)")
    ax.set_ylim(0, 101)
    ax.grid(axis="y", alpha=0.3)
    return ax
