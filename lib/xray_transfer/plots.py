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

    fig, axes = plt.subplots(1, 2, figsize=(7.4, 3.0), sharex=True)
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
    axes[0].legend(frameon=False, fontsize=9)
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
            ax.text(x, 50, "not run", ha="center", va="center", fontsize=9, color="grey", rotation=90)
            continue
        per_fold = 100 * np.asarray(summary["per_fold"][metric], dtype=float)
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(per_fold)), per_fold, s=14, alpha=0.6, color="tab:blue")
        ax.hlines(100 * summary[metric], x - 0.3, x + 0.3, color="black", lw=2)
    if reference is not None:
        ax.axhline(reference, ls="--", color="tab:red", lw=1, label=reference_label)
        if reference_label:
            ax.legend(frameon=False, fontsize=9, loc="lower left")
    ax.set_xticks(range(len(runs)), list(runs), rotation=rotation, ha="right" if rotation else "center", fontsize=9)
    names = {"accuracy_3class": "3-class accuracy", "accuracy_2class": "2-class accuracy"}
    ax.set_ylabel(f"{names.get(metric, metric)} (%)")
    ax.set_ylim(0, 101)
    ax.grid(axis="y", alpha=0.3)
    return ax


#: Colour and marker of each kind of initialisation (forest plot, ROC).
INIT_STYLE = {"ImageNet": ("tab:blue", "o"), "ImageNet, partial": ("tab:green", "s"), "random": ("tab:red", "^")}


def init_kind(label: str) -> str:
    """'ImageNet', 'ImageNet, partial' or 'random' for a ``models.init_label`` string.

    >>> init_kind("ImageNet, partial: block14 trained from scratch"), init_kind("ImageNet (8-bit, complete)")
    ('ImageNet, partial', 'ImageNet')
    """
    if label.startswith("random"):
        return "random"
    return "ImageNet, partial" if "partial" in label else "ImageNet"


def plot_forest(t2, runs=None, width=7.4):
    """Results at a glance: one panel per Table 2 metric, one row per backbone; ours as a
    point with its 95 % interval (coloured by initialisation), the paper's value as a
    black cross. A backbone without a complete run shows its folds done instead.

    ``t2`` is :func:`xray_transfer.results.table2`; ``runs`` (optional) gives the folds
    done of unfinished runs.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    metrics = [("accuracy_2class", "2-class accuracy"), ("accuracy_3class", "3-class accuracy"),
               ("sensitivity", "Sensitivity (COVID-19)"), ("specificity", "Specificity (COVID-19)")]
    n = len(t2)
    with plt.rc_context({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
                         "xtick.labelsize": 9, "ytick.labelsize": 10, "legend.fontsize": 9}):
        fig, axes = plt.subplots(2, 2, figsize=(width, 0.42 * n * 2 + 2.0), sharey=True)
        y = np.arange(n)[::-1]
        kinds = set()
        for ax, (key, title) in zip(axes.flat, metrics):
            for yi, (_, r) in zip(y, t2.iterrows()):
                ax.plot(r[f"{key}_paper"], yi, marker="x", color="black", ms=7, mew=1.6, ls="none", zorder=3)
                if np.isnan(r[f"{key}_ours"]):
                    run = (runs or {}).get(r["backbone"])
                    done = (f"{len(run['folds'])} of {run['record']['params']['n_splits']} folds" if run
                            else "no complete run yet" if runs is None else "not run")
                    ax.text(50, yi + 0.28, done, ha="center", va="center", fontsize=9, color="0.35")
                    continue
                kind = init_kind(r["initialisation"])
                kinds.add(kind)
                color, marker = INIT_STYLE[kind]
                lo, hi = r[f"{key}_ci_low"], r[f"{key}_ci_high"]
                ax.errorbar(r[f"{key}_ours"], yi, xerr=[[max(0.0, r[f"{key}_ours"] - lo)], [max(0.0, hi - r[f"{key}_ours"])]],
                            fmt=marker, color=color, ms=6, capsize=3, lw=1.4, zorder=4)
            ax.set_title(title)
            ax.set_xlim(-3, 103)
            ax.set_ylim(-0.6, n - 0.4)
            ax.grid(axis="x", alpha=0.3)
            ax.set_xlabel("%")
        axes[0, 0].set_yticks(y, list(t2["network"]))
        handles = [Line2D([], [], color=INIT_STYLE[k][0], marker=INIT_STYLE[k][1], ls="-", label=f"ours, {k} start")
                   for k in INIT_STYLE if k in kinds]
        handles.append(Line2D([], [], color="black", marker="x", ls="none", mew=1.6, label="paper"))
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def plot_confusion_grid(cms, names, notes=None, ncols=3, width=7.4):
    """Pooled 3x3 confusion matrices as a grid of readable panels (counts, rows true).

    ``cms`` maps a key to its matrix, ``names`` every key to its panel title; a key
    without a matrix shows its entry of ``notes`` (e.g. '3 of 10 folds') instead.
    """
    import matplotlib.pyplot as plt

    keys = list(names)
    nrows = int(np.ceil(len(keys) / ncols))
    with plt.rc_context({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
                         "xtick.labelsize": 9, "ytick.labelsize": 9}):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.55 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            if key in cms:
                plot_confusion(cms[key], ax=ax, title=names[key])
            else:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"{names[key]}\n{(notes or {}).get(key, 'not run')}", ha="center", va="center",
                        transform=ax.transAxes)
        for ax in list(axes.flat)[len(keys):]:
            ax.set_axis_off()
        fig.tight_layout()
    return fig


def plot_roc(curves, names, paper_points=None, width=7.4, ncols=3):
    """ROC curves of COVID-19 against the rest, one panel per backbone, with AUC and its
    95 % interval; our argmax operating point (filled) and the paper's (cross).

    ``curves`` maps a key to :func:`xray_transfer.results.roc`; ``paper_points`` maps a
    key to the paper's (sensitivity, specificity) in percent.
    """
    import matplotlib.pyplot as plt

    keys = list(curves)
    nrows = max(1, int(np.ceil(len(keys) / ncols)))
    with plt.rc_context({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
                         "xtick.labelsize": 9, "ytick.labelsize": 9, "legend.fontsize": 9}):
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, 2.6 * nrows + 0.4), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            c = curves[key]
            lo, hi = c["auc_ci"]
            ax.plot(100 * c["fpr"], 100 * c["tpr"], color="tab:blue", lw=1.5)
            ax.plot([0, 100], [0, 100], color="0.7", lw=0.8, ls="--")
            ax.plot(100 * (1 - c["specificity"]), 100 * c["sensitivity"], "o", color="tab:blue", ms=6)
            if paper_points and key in paper_points:
                sens, spec = paper_points[key]
                ax.plot(100 - spec, sens, "x", color="black", ms=7, mew=1.6)
            ax.set_title(f"{names[key]}\nAUC {c['auc']:.3f} ({lo:.3f}\u2013{hi:.3f})")
            ax.set_xlim(-2, 102)
            ax.set_ylim(-2, 102)
            ax.set_xlabel("1 \u2212 specificity (%)")
            ax.set_ylabel("sensitivity (%)")
            ax.set_aspect("equal")
        for ax in list(axes.flat)[len(keys):]:
            ax.set_axis_off()
        from matplotlib.lines import Line2D
        fig.legend(handles=[Line2D([], [], color="tab:blue", marker="o", label="ours: ROC, argmax decision"),
                            Line2D([], [], color="black", marker="x", ls="none", mew=1.6, label="paper's operating point")],
                   loc="lower center", ncol=2, frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def plot_saliency_grid(cases, maps, masks, width=7.4, max_per_row=4):
    """Occlusion maps over their X-rays, one labelled row per group of calls.

    Parameters
    ----------
    cases : sequence of tuples
        ``(image, group, true, called, ...)`` per image: the uint8 image (H, W, 3), the
        group it belongs to (the row label, e.g. "COVID-19, wrong"), and the true and
        called class as words.
    maps, masks : sequences of (H, W) arrays
        Per case, the occlusion map (:func:`xray_transfer.saliency.occlusion_map`) and the
        central region (:func:`xray_transfer.saliency.central_mask`), outlined in cyan.
    width : float, default 7.4
        Figure width in inches: the book's column, so 9 pt text stays 9 pt on the page.
    max_per_row : int, default 4
        Images shown per group.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(case[1] for case in cases))
    n = max(1, min(max_per_row, max((sum(case[1] == g for case in cases) for g in groups), default=1)))
    rows = max(1, len(groups))
    panel = width / (n + 0.55)  # room on the left for the row labels
    with plt.rc_context({"font.size": 10, "axes.titlesize": 9, "axes.labelsize": 10}):
        aspect = cases[0][0].shape[0] / cases[0][0].shape[1] if cases else 0.75
        fig, axes = plt.subplots(rows, n, figsize=(width, (panel * aspect + 0.3) * rows + 0.1), squeeze=False)
        for r, group in enumerate(groups):
            row = [(case, m, mask) for case, m, mask in zip(cases, maps, masks) if case[1] == group][:n]
            for k, ax in enumerate(axes[r]):
                ax.set_xticks([]), ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if k == 0:
                    ax.set_ylabel(group.replace(", ", "\n"), rotation=0, ha="right", va="center", labelpad=6)
                if k >= len(row):
                    continue
                (img, _, true, call, *_), m, mask = row[k]
                ax.imshow(img, cmap="gray")
                ax.imshow(np.clip(m, 0, None), cmap="Reds", alpha=0.5, vmin=0, vmax=max(float(np.max(m)), 1e-6))
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=0.8)
                ax.set_title(f"{true} \u2192 {call}")
        fig.tight_layout(pad=0.3, w_pad=0.3, h_pad=0.6)
    return fig


def plot_throughput(df, width=7.4):
    """Achieved TFLOP/s per network, plain ``model.fit`` against ours (and ours with the folds
    together, where measured), a panel per device.

    ``df`` is :func:`xray_transfer.results.benchmark_throughput`'s table. Bars: the whole
    protocol (compilation and set-up included); ticks: a steady epoch. A device whose dense
    peak is known has it drawn as a line, with the share of it written at each bar.
    """
    import matplotlib.pyplot as plt

    devices = list(dict.fromkeys(df["device"]))
    nets = list(dict.fromkeys(df["network"]))  # every panel has every network's place, measured or not
    y = np.arange(len(nets))
    colors = {"plain model.fit": "#9e9e9e", "ours": "#1f77b4", "ours, folds together": "#ff7f0e"}
    colors = {path: c for path, c in colors.items() if (df["path"] == path).any()}  # the together path where measured
    step = 0.76 / len(colors)
    fig, axes = plt.subplots(1, len(devices), figsize=(width, 0.25 * len(nets) * len(colors) + 1.9), squeeze=False,
                             sharey=True)
    for ax, device in zip(axes[0], devices):
        d = df[df["device"] == device]
        for j, (path, color) in enumerate(colors.items()):
            p = d[d["path"] == path].set_index("network").reindex(nets)
            pos = y + (j - (len(colors) - 1) / 2) * step
            ax.barh(pos, p["protocol_tflops"], height=step * 0.95, color=color, label=f"{path}: whole protocol")
            ax.plot(p["steady_tflops"], pos, "|", color="black", markersize=9,
                    label="steady epoch" if j == 1 else None)
            for yy, v, tick, share in zip(pos, p["protocol_tflops"], p["steady_tflops"], p["share"]):
                if np.isfinite(v):  # the label after the bar and its tick
                    ax.annotate((f"{v:,.1f}" if v >= 1 else f"{v:.2f}") + ("" if not np.isfinite(share) else f" ({share:.0%})"),
                                (np.nanmax([v, tick]), yy),
                                xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
        peak = d["peak_tflops"].dropna()
        if len(peak):
            arith = d["arithmetic"].dropna().iloc[0]
            ax.axvline(peak.iloc[0], color="crimson", lw=1.2)
            ax.annotate(f"dense {arith.upper()} peak\n{peak.iloc[0]:,.0f} TFLOP/s", (peak.iloc[0], 0.98),
                        xycoords=ax.get_xaxis_transform(), xytext=(-4, 0), textcoords="offset points", ha="right", va="top", fontsize=7,
                        color="crimson")
            ax.set_xlim(0, peak.iloc[0] * 1.03)
        else:
            ax.set_xlim(0, np.nanmax(d[["protocol_tflops", "steady_tflops"]].to_numpy()) * 1.45)
            ax.text(0.98, 0.02, "no data-sheet peak", transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=7, color="0.4")
        for k, net in enumerate(nets):
            if not d[d["network"] == net]["protocol_tflops"].notna().any():
                ax.text(0.01, k, "not measured", transform=ax.get_yaxis_transform(), va="center", fontsize=7,
                        color="0.4")
        ax.set_title(device, fontsize=9)
        ax.set_xlabel("achieved TFLOP/s")
    axes[0][0].set_yticks(y, nets)
    axes[0][0].invert_yaxis()  # shared: Table 1's order from the top
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(colors) + 1, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig
