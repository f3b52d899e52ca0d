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
