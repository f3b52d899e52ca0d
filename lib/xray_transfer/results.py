"""Tables 1-3 of the paper, rebuilt from the committed run artifacts, beside the published values.

Reads ``artifacts/runs/<backbone>/`` (``run.json`` and ``fold-XX.json``) only: no
data, no Keras, no GPU. Only *complete* runs (every fold finished) give numbers; an
unfinished run is a row saying "k of 10 folds", a missing one "not run", and their
"ours" cells stay empty, never a placeholder number. A table never mixes runs made on
different datasets (manifest SHA-256) or from a different weights policy:
:func:`one_generation` refuses them, naming the runs.

Command line::

    python -m xray_transfer.results --write   # regenerate results/table{1,2,3}.csv, the README block
    python -m xray_transfer.results --check   # exit 1 if those are stale
    python -m xray_transfer.results --glance book/images/at_a_glance.png   # the at-a-glance figure
"""
from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

from . import paper
from .metrics import pooled
from .models import OFFLINE_WEIGHTS, TABLE1, get_backbone, init_label
from .train import load_folds

#: Backbone keys in the paper's order (Table 1).
ORDER = tuple(b.key for b in TABLE1)
#: Table 2's four metrics, in the paper's column order.
METRICS = ("accuracy_2class", "accuracy_3class", "sensitivity", "specificity")
METRIC_NAMES = {"accuracy_2class": "2-class accuracy", "accuracy_3class": "3-class accuracy",
                "sensitivity": "sensitivity", "specificity": "specificity"}
#: What the paper's asterisk means (its Table 2 footnote, in our words).
ASTERISK_NOTE = ("* marked by the authors: high specificity that is not acceptable in real life, "
                 "because of the class imbalance (the network rarely predicts COVID-19)")
NOT_RUN = "not run"
NOT_COMPLETE = "not complete"
#: Float format of the CSV files: fixed decimals keep --write byte-stable.
FLOAT_FORMAT = "%.4f"
TABLE_FILES = ("table1.csv", "table2.csv", "table3.csv")
#: Markers of the generated block of README.md (headline numbers).
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


# --------------------------------------------------------------------------- loading
def load_run(path) -> dict:
    """One run folder: its ``run.json`` record and its ``fold-XX.json`` files in fold order."""
    path = Path(path)
    return {"path": path, "record": json.loads((path / "run.json").read_text()), "folds": load_folds(path)}


def load_runs(root="artifacts/runs") -> dict:
    """Every run under ``root`` that has a ``run.json``, keyed by backbone, in Table 1 order.

    Parameters
    ----------
    root : path, default "artifacts/runs"
        Folder holding one sub-folder per backbone.

    Returns
    -------
    dict
        ``backbone -> {"path", "record", "folds"}``. Backbones without a folder are
        absent; :func:`status` tells the tables how to mark them.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run folder {root} not found (expected artifacts/runs/<backbone>/run.json)")
    runs = {}
    for sub in sorted(p for p in root.iterdir() if (p / "run.json").is_file()):
        run = load_run(sub)
        key = run["record"].get("params", {}).get("backbone", sub.name)
        get_backbone(key)
        if key in runs:
            raise ValueError(f"two run folders for backbone {key!r}: {runs[key]['path']} and {sub}")
        runs[key] = run
    return {k: runs[k] for k in ORDER if k in runs}


# --------------------------------------------------------------------------- labels
def status(run) -> str:
    """'full protocol', 'reduced settings', 'incomplete (k of n folds)' or 'not run' (plus
    '(0 of n folds)' when a run folder exists but no fold has finished)."""
    if run is None:
        return NOT_RUN
    rec = run["record"]
    n = rec["params"]["n_splits"]
    done = len(run["folds"])
    if not done:
        return f"{NOT_RUN} (0 of {n} folds)"
    if done < n:
        return f"incomplete ({done} of {n} folds)"
    return "full protocol" if rec.get("full_protocol") else "reduced settings"


def table_status(run) -> str:
    """The status the tables and CSV files record: :func:`status` for a complete run,
    'not complete' for one still running (its folds done are left out, so that the
    files change only when a run completes), 'not run' without a folder."""
    if run is None:
        return NOT_RUN
    return status(run) if is_complete(run) else NOT_COMPLETE


def is_complete(run) -> bool:
    """True when every fold of the run has finished (only such runs enter Tables 2 and 3)."""
    return run is not None and len(run["folds"]) == run["record"]["params"]["n_splits"]


def folds_label(run) -> str:
    """'k of n folds' for a run, '' when there is none.

    >>> folds_label({"record": {"params": {"n_splits": 10}}, "folds": [{}, {}, {}]})
    '3 of 10 folds'
    """
    return "" if run is None else f"{len(run['folds'])} of {run['record']['params']['n_splits']} folds"


def initialisation(run) -> str:
    """How the run's backbone was initialised, in the reader's words (:func:`models.init_label`)."""
    return "" if run is None else init_label(run["record"].get("weights"))


def commit(record) -> str:
    """The run's git commit, with '+dirty' when tracked sources differed from it."""
    git = (record.get("environment") or {}).get("git") or {}
    sha = git.get("commit") or "unknown"
    return sha + ("+dirty" if git.get("dirty") else "")


def manifest(record) -> str:
    """The SHA-256 of the dataset manifest a run was made on ('' if unrecorded)."""
    return (record.get("dataset") or {}).get("manifest_sha256") or ""


def weights_policy(key, record) -> str:
    """Which kind of start a run had, comparable across backbones.

    'registered': the file registered for the backbone in ``models.OFFLINE_WEIGHTS``
    (or random weights where none is registered); "Keras' ImageNet": the online
    download; otherwise 'other: <label>'.

    >>> weights_policy("inception_resnet_v2", {"weights": {"kind": "none"}})
    'registered'
    >>> weights_policy("vgg19", {"weights": {"kind": "none"}})
    'other: random'
    """
    w = record.get("weights") or {}
    reg = OFFLINE_WEIGHTS.get(key)
    if w.get("kind") == "imagenet (keras download)":
        return "Keras' ImageNet"
    if (reg is None and w.get("kind") == "none") or (reg is not None and w.get("sha256") == reg.sha256):
        return "registered"
    return f"other: {init_label(w)}"


class MixedRunsError(ValueError):
    """Runs of different datasets or starting weights were asked to share a table."""


def one_generation(runs, what="these tables", weights=True) -> None:
    """Refuse to tabulate runs made on different datasets or from a different weights policy.

    Raises
    ------
    MixedRunsError
        Naming every run folder by its manifest hash (and weights policy).
    """
    problems = []
    checks = [("datasets", lambda k, r: f"manifest {manifest(r['record'])[:12] or 'unrecorded'}")]
    if weights:
        checks.append(("starting weights", lambda k, r: weights_policy(k, r["record"])))
    for name, key_of in checks:
        groups = {}
        for k, r in runs.items():
            groups.setdefault(key_of(k, r), []).append(str(r["path"]))
        if len(groups) > 1:
            problems.append(f"different {name} (" + "; ".join(f"{g}: {', '.join(p)}" for g, p in groups.items())
                            + ")")
    if problems:
        raise MixedRunsError(f"{what} would mix runs made on " + " and on ".join(problems)
                             + ". Keep one generation per runs folder: move the other runs to "
                             "artifacts/earlier-<n>/runs, or re-run them.")


def classifier(hidden) -> str:
    """Table 1's classifier column in words.

    >>> classifier((1000, 750))
    '2 hidden layers, 1000 and 750 nodes'
    """
    if not hidden:
        return "none"
    if len(hidden) == 1:
        return f"1 hidden layer, {hidden[0]} nodes"
    return f"{len(hidden)} hidden layers, {' and '.join(str(h) for h in hidden)} nodes"


def _provenance(run) -> dict:
    if not is_complete(run):
        return {"commit": "", "manifest_sha256": ""}
    return {"commit": commit(run["record"]), "manifest_sha256": manifest(run["record"])}


# --------------------------------------------------------------------------- tables
def table1(runs) -> pd.DataFrame:
    """Table 1: the configuration the paper states beside the one each run recorded.

    The paper's cutoff and classifier come from :data:`xray_transfer.models.TABLE1`;
    ours from the registry the run was built with and from ``run.json``'s ``params``
    (dropout, learning rate, epochs, batch size, input size, pooling) and ``weights``.
    """
    one_generation(runs, "Table 1")
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        two = len(spec.hidden) == 2
        row = {"backbone": spec.key, "network": spec.name, "status": table_status(run),
               "weights_paper": "ImageNet", "weights_ours": "",
               "cutoff_paper": spec.cutoff, "cutoff_ours": pd.NA,
               "classifier_paper": classifier(spec.hidden), "classifier_ours": "",
               "dropout_paper": "yes, rate unstated" if two else "none", "dropout_ours": "",
               "optimizer_paper": "Adam", "optimizer_ours": "",
               "learning_rate_paper": "unstated", "learning_rate_ours": "",
               "epochs_paper": 10, "epochs_ours": pd.NA,
               "batch_size_paper": 64, "batch_size_ours": pd.NA,
               "input_size_paper": "200x266", "input_size_ours": "",
               "pooling_paper": "unstated", "pooling_ours": "",
               "folds_paper": 10, "folds_ours": pd.NA}
        if run is not None:
            p = run["record"]["params"]
            h, w = p["image_size"]
            row.update({"weights_ours": initialisation(run), "cutoff_ours": spec.cutoff,
                        "classifier_ours": classifier(spec.hidden),
                        "dropout_ours": f"{p['dropout']:g}" if two else "none",
                        "optimizer_ours": "Adam", "learning_rate_ours": f"{p['learning_rate']:g}",
                        "epochs_ours": p["epochs"], "batch_size_ours": p["batch_size"],
                        "input_size_ours": f"{h}x{w}",
                        "pooling_ours": {"avg": "global average", "max": "global max",
                                         "flatten": "flatten"}.get(p["pooling"], p["pooling"]),
                        "folds_ours": p["n_splits"]})
        row.update(_provenance(run))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("cutoff_ours", "epochs_ours", "batch_size_ours", "folds_ours"):
        df[c] = df[c].astype("Int64")
    return df


def table2(runs, check=True) -> pd.DataFrame:
    """Table 2 in percent: ours pooled over the test folds of each *complete* run, with
    95 % Wilson interval and per-fold SD, beside the paper's value and the difference
    (ours - paper, points). ``check=False`` skips :func:`one_generation` (for a
    generation that is shown only beside another, e.g. the earlier runs)."""
    if check:
        one_generation(runs, "Table 2")
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        row = {"backbone": spec.key, "network": spec.name, "status": table_status(run),
               "initialisation": initialisation(run), "n_images": pd.NA, "n_folds": pd.NA}
        m = pooled(run["folds"]) if is_complete(run) else None
        if m is not None:
            row.update(n_images=m["n"], n_folds=m["n_folds"])
        pub = paper.TABLE2[spec.key]
        for k in METRICS:
            if m is not None:
                lo, hi = m["ci"][k]
                ours = 100 * m[k]
                row.update({f"{k}_ours": ours, f"{k}_ci_low": 100 * lo, f"{k}_ci_high": 100 * hi,
                            f"{k}_fold_sd": 100 * m["fold_sd"][k], f"{k}_paper": pub[k],
                            f"{k}_diff_pp": ours - pub[k]})
            else:
                row.update({f"{k}_ours": math.nan, f"{k}_ci_low": math.nan, f"{k}_ci_high": math.nan,
                            f"{k}_fold_sd": math.nan, f"{k}_paper": pub[k], f"{k}_diff_pp": math.nan})
        row["paper_asterisk"] = "*" if spec.key in paper.ASTERISK else ""
        row.update(_provenance(run))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in ("n_images", "n_folds"):
        df[c] = df[c].astype("Int64")
    return df


def table3(runs) -> pd.DataFrame:
    """Table 3: COVID-19 vs rest counts pooled over the folds of each complete run; the paper's for two."""
    one_generation(runs, "Table 3")
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        row = {"backbone": spec.key, "network": spec.name, "status": table_status(run),
               "initialisation": initialisation(run)}
        m = pooled(run["folds"]) if is_complete(run) else None
        pub = paper.TABLE3.get(spec.key)
        for k in ("TP", "FP", "TN", "FN"):
            row[f"{k}_ours"] = m[k] if m else pd.NA
        for k in ("TP", "FP", "TN", "FN"):
            row[f"{k}_paper"] = pub[k] if pub else pd.NA
        row["n_ours"] = m["n"] if m else pd.NA
        row["n_paper"] = sum(pub.values()) if pub else pd.NA
        row.update(_provenance(run))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:
        if c.endswith(("_ours", "_paper")) and c.split("_")[0] in ("TP", "FP", "TN", "FN", "n"):
            df[c] = df[c].astype("Int64")
    return df


def confusions(runs) -> dict:
    """Pooled 3x3 confusion matrix (rows true; covid, normal, pneumonia) of every complete run."""
    return {k: pooled(r["folds"])["confusion"] for k, r in runs.items() if is_complete(r)}


def auc_interval(auc, n_pos, n_neg, z=1.959963984540054) -> tuple[float, float]:
    """95 % interval of an ROC AUC from its standard error (Hanley & McNeil 1982).

    >>> [round(v, 4) for v in auc_interval(0.9, 50, 100)]
    [0.8398, 0.9602]
    """
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc))
                   / (n_pos * n_neg))
    return (max(0.0, auc - z * se), min(1.0, auc + z * se))


def roc(run) -> dict:
    """ROC of COVID-19 against the rest from a run's stored probabilities (``probs[:, 0]``).

    Returns ``fpr``, ``tpr``, ``auc`` and ``auc_ci`` (95 %), and the operating point of
    the argmax decision the tables use (``sensitivity``, ``specificity``, fractions).
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.concatenate([np.asarray(f["y_true"]) for f in run["folds"]]) == 0
    probs = np.concatenate([np.asarray(f["probs"], dtype=float) for f in run["folds"]])
    score = probs[:, 0]
    fpr, tpr, _ = roc_curve(y, score)
    auc = float(roc_auc_score(y, score))
    called = probs.argmax(1) == 0
    return {"fpr": fpr, "tpr": tpr, "auc": auc, "auc_ci": auc_interval(auc, int(y.sum()), int((~y).sum())),
            "sensitivity": float(called[y].mean()), "specificity": float((~called[~y]).mean())}


def comparison(earlier, current) -> pd.DataFrame:
    """How each Table 2 row moved between two generations of runs, for the backbones
    complete in both: the initialisation and the four metrics (percent) of each, and
    the change (now - earlier, points). Each generation must be of one dataset."""
    one_generation(earlier, "The earlier generation", weights=False)
    one_generation(current, "The current generation")
    a, b = table2(earlier, check=False).set_index("backbone"), table2(current).set_index("backbone")
    rows = []
    for spec in TABLE1:
        if not (is_complete(earlier.get(spec.key)) and is_complete(current.get(spec.key))):
            continue
        row = {"backbone": spec.key, "network": spec.name, "initialisation_earlier": a.loc[spec.key, "initialisation"],
               "initialisation_now": b.loc[spec.key, "initialisation"],
               "n_images_earlier": a.loc[spec.key, "n_images"], "n_images_now": b.loc[spec.key, "n_images"]}
        for k in METRICS:
            row.update({f"{k}_earlier": a.loc[spec.key, f"{k}_ours"], f"{k}_now": b.loc[spec.key, f"{k}_ours"],
                        f"{k}_change_pp": b.loc[spec.key, f"{k}_ours"] - a.loc[spec.key, f"{k}_ours"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=["backbone", "network", "initialisation_earlier", "initialisation_now",
                                       "n_images_earlier", "n_images_now"]
                        + [f"{k}_{s}" for k in METRICS for s in ("earlier", "now", "change_pp")])


def weights_table() -> pd.DataFrame:
    """The registered offline weights per backbone: file, label, what differs from Keras'
    own ImageNet weights, why we believe the file is ImageNet, and its SHA-256."""
    rows = []
    for spec in TABLE1:
        reg = OFFLINE_WEIGHTS.get(spec.key)
        rows.append({"backbone": spec.key, "network": spec.name,
                     "file": reg.file if reg else "", "label": reg.label if reg else init_label({"kind": "none"}),
                     "differs": reg.differs if reg else "no ImageNet weights are available offline: every "
                                                          "weight starts from Keras' random initializer",
                     "evidence": reg.evidence if reg else "", "sha256": reg.sha256 if reg else ""})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- display helpers
DASH = "\u2013"


def pct(value, sign=False) -> str:
    """Percent with one decimal, or a dash for a missing value.

    >>> pct(97.774), pct(-3.09, sign=True), pct(float("nan"))
    ('97.8', '−3.1', '–')
    """
    if value is None or pd.isna(value):
        return DASH
    text = f"{value:+.1f}" if sign else f"{value:.1f}"
    return text.replace("-", "\u2212")


def duration(seconds) -> str:
    """A time for people: seconds under two minutes, minutes under two hours, else hours.

    >>> duration(91.8), duration(1168), duration(7917)
    ('92 s', '19 min', '2.2 h')
    """
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def short_hash(sha, n=12) -> str:
    """A long hash shortened for a table cell, as git shortens commits: its first ``n`` characters.

    >>> short_hash("5b3032734b2c671a168233ff664d1646dd8e42324e9dbffe5b8bfc0b9ed0f971")
    '5b3032734b2c'
    """
    return sha[:n] if sha else DASH


def breakable(name: str) -> str:
    """A long file name that a table cell may wrap after '_' and '.' (HTML ``<wbr>``).

    >>> breakable("a_b.h5")
    'a_<wbr>b.<wbr>h5'
    """
    return re.sub(r"([_.])", r"\1<wbr>", name)


def _cell(value) -> str:
    """A table cell: a dash for a missing value, a blank for an empty string (a grouped row)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return DASH
    return (str(value) or "\u00a0").replace("\n", " ")


def md_table(df: pd.DataFrame, caption: str, name: str, notes=(), widths=None) -> str:
    """A MyST ``list-table`` (numbered "Table n.m" by Sphinx, referable as ``{numref}`name```)
    with the DataFrame's columns as one header row, and notes below it.

    Missing values become a dash; give a note that says what the dash means.
    """
    lines = [f":::{{list-table}} {caption}", f":name: {name}", ":header-rows: 1", ":class: xray-table"]
    if widths:
        lines.append(f":widths: {' '.join(str(w) for w in widths)}")
    lines.append("")
    for row in [list(df.columns)] + df.values.tolist():
        lines.append(f"* - {_cell(row[0])}")
        lines.extend(f"  - {_cell(v)}" for v in row[1:])
    lines.append(":::")
    if notes:
        lines.append("")
        lines.append(":::{div} table-notes")
        lines.extend(notes)
        lines.append(":::")
    return "\n".join(lines) + "\n"


def glance_display(t2: pd.DataFrame) -> pd.DataFrame:
    """The five-row table at a glance: per network its initialisation and 'ours / paper'
    for the four metrics (percent; the paper's as printed)."""
    out = pd.DataFrame({"Network": t2["network"], "Initialisation": t2["initialisation"].replace("", NOT_RUN)})
    for k in METRICS:
        out[f"{METRIC_NAMES[k].capitalize()} (%)"] = [
            f"{pct(r[f'{k}_ours'])} / {r[f'{k}_paper']:.2f}" for _, r in t2.iterrows()]
    return out


def table2_display(t2: pd.DataFrame, runs=None) -> pd.DataFrame:
    """Table 2 for reading, one row per network and metric: ours, its 95 % interval, the
    per-fold SD, the paper's value and the difference, in percent with one decimal.
    Unfinished runs show a dash and say how many folds are done."""
    rows = []
    for _, r in t2.iterrows():
        run = (runs or {}).get(r["backbone"])
        for i, k in enumerate(METRICS):
            first = i == 0
            done = not pd.isna(r[f"{k}_ours"])
            who = f"{r['network']}: {r['initialisation'] or NOT_RUN}" if first else ""
            if first and not done and run is not None:
                who += f" ({folds_label(run)})"
            rows.append({"Network: initialisation": who, "Metric": METRIC_NAMES[k],
                         "Ours (%)": pct(r[f"{k}_ours"]),
                         "95 % interval": f"{pct(r[f'{k}_ci_low'])}{DASH}{pct(r[f'{k}_ci_high'])}" if done else DASH,
                         "Fold SD (pp)": pct(r[f"{k}_fold_sd"]),
                         "Paper (%)": f"{r[f'{k}_paper']:.2f}" + (r["paper_asterisk"] if k == "specificity" else ""),
                         "Difference (pp)": pct(r[f"{k}_diff_pp"], sign=True)})
    return pd.DataFrame(rows)


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for reading: one row per setting (paper, then ours), one column per network;
    a dash where a backbone has no run."""
    settings = [("weights", "Initial weights"), ("cutoff", "Layer cutoff"), ("classifier", "Classifier"),
                ("dropout", "Dropout"), ("optimizer", "Optimizer"), ("learning_rate", "Learning rate"),
                ("epochs", "Epochs"), ("batch_size", "Batch size"), ("input_size", "Input size (HxW)"),
                ("pooling", "Pooling"), ("folds", "Cross-validation folds")]
    rows = []
    for key, label in settings:
        for who in ("paper", "ours"):
            rows.append({"Setting": label if who == "paper" else "", "Source": who,
                         **{n: DASH if pd.isna(v) or v == "" else str(v)
                            for n, v in zip(t1["network"], t1[f"{key}_{who}"])}})
    return pd.DataFrame(rows)


def table3_display(t3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 for reading: per network ours, then the paper's TP, FP, TN, FN and total."""
    rows = []
    for _, r in t3.iterrows():
        for who in ("ours", "paper"):
            rows.append({"Network": r["network"] if who == "ours" else "", "Source": who,
                         **{k if k != "n" else "Images": DASH if pd.isna(r[f"{k}_{who}"]) else str(int(r[f"{k}_{who}"]))
                            for k in ("TP", "FP", "TN", "FN", "n")}})
    return pd.DataFrame(rows)


def comparison_display(cmp: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How each row moved, as two tables that fit a column: the initialisation of each
    generation, and 'earlier → now (change)' per metric."""
    inits = pd.DataFrame({"Network": cmp["network"], "Earlier initialisation": cmp["initialisation_earlier"],
                          "Current initialisation": cmp["initialisation_now"]})
    moved = pd.DataFrame({"Network": cmp["network"]})
    for k in METRICS:
        moved[f"{METRIC_NAMES[k].capitalize()} (%)"] = [
            f"{pct(r[f'{k}_earlier'])} \u2192 {pct(r[f'{k}_now'])} ({pct(r[f'{k}_change_pp'], sign=True)})"
            for _, r in cmp.iterrows()]
    return inits, moved


def largest_gaps(t2: pd.DataFrame, n=3) -> list[tuple]:
    """The ``n`` largest |ours - paper| differences of complete runs: (network, metric, ours, paper, diff)."""
    gaps = [(r["network"], METRIC_NAMES[k], r[f"{k}_ours"], r[f"{k}_paper"], r[f"{k}_diff_pp"])
            for _, r in t2.iterrows() for k in METRICS if not pd.isna(r[f"{k}_diff_pp"])]
    return sorted(gaps, key=lambda g: -abs(g[4]))[:n]


def headline(t2: pd.DataFrame, runs, folds=True) -> str:
    """Sentences that state what the tables show, generated from their numbers: how many
    runs are complete, and the largest differences from the paper first. ``folds=False``
    leaves out the folds done of unfinished runs (for files that change only when a run
    completes)."""
    done = [r["network"] for _, r in t2.iterrows() if not pd.isna(r["accuracy_3class_ours"])]
    pending = [get_backbone(k).name + (f" ({folds_label(r)})" if folds else "")
               for k, r in runs.items() if not is_complete(r)]
    missing = [s.name for s in TABLE1 if s.key not in runs]
    out = [f"{len(done)} of {len(TABLE1)} backbones {'has' if len(done) == 1 else 'have'} a complete re-run"
           + (f" ({listing(done)})." if done else ".")]
    if pending:
        out.append(f"Still running: {listing(pending)}; these rows show only the paper's values until every "
                   "fold is done.")
    if missing:
        out.append(f"Not started: {listing(missing)}.")
    gaps = largest_gaps(t2)
    if gaps:
        out.append("Largest differences from the paper: " + "; ".join(
            f"{net} {metric} {pct(ours)} % against {pub:.2f} % ({pct(d, sign=True)} pp)"
            for net, metric, ours, pub, d in gaps) + ".")
    return " ".join(out)


def complete_phrase(n_complete: int) -> str:
    """How many of the five backbones have a complete run, as the start of a sentence.

    >>> complete_phrase(5), complete_phrase(3), complete_phrase(1)
    ('All five backbones have', '3 of the five backbones have', '1 of the five backbones has')
    """
    if n_complete == len(TABLE1):
        return "All five backbones have"
    return f"{n_complete} of the five backbones {'has' if n_complete == 1 else 'have'}"


def listing(items) -> str:
    """'a', 'a and b', 'a, b and c'.

    >>> listing(["a", "b", "c"])
    'a, b and c'
    """
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# --------------------------------------------------------------------------- learning curves, cost
def learning_summary(runs) -> pd.DataFrame:
    """Per complete run: training and held-out accuracy (mean over folds) after the last epoch,
    held-out accuracy halfway (``half_epoch``), and how concentrated the held-out predictions
    are (share of the most predicted class)."""
    import numpy as np

    rows = []
    for key, run in runs.items():
        if not is_complete(run):
            continue
        folds = run["folds"]
        preds = np.concatenate([np.asarray(f["probs"]).argmax(1) for f in folds])
        counts = np.bincount(preds, minlength=3)
        true = np.concatenate([f["y_true"] for f in folds])
        rows.append({"backbone": key, "network": get_backbone(key).name, "initialisation": initialisation(run),
                     "train_accuracy_final": float(np.mean([f["history"]["accuracy"][-1] for f in folds])),
                     "train_accuracy_max": float(np.max([max(f["history"]["accuracy"]) for f in folds])),
                     "heldout_accuracy_final": float(np.mean([f["history"]["test_accuracy"][-1] for f in folds])),
                     "half_epoch": (half := max(len(folds[0]["history"]["test_accuracy"]) // 2, 1)),
                     "heldout_accuracy_half": float(np.mean([f["history"]["test_accuracy"][half - 1] for f in folds])),
                     "top_predicted_class": int(counts.argmax()),
                     "top_predicted_share": float(counts.max() / counts.sum()),
                     "true_share_of_top_class": float(np.mean(true == counts.argmax()))})
    return pd.DataFrame(rows)


def cost(runs) -> pd.DataFrame:
    """Reproduction cost per run: device, folds done, fold wall time, setup, fit throughput, fast path."""
    rows = []
    for key, run in runs.items():
        rec, folds = run["record"], run["folds"]
        env = rec.get("environment") or {}
        fc = rec.get("feature_cache") or {}
        row = {"backbone": key, "network": get_backbone(key).name, "status": status(run),
               "device": env.get("device", ""), "backend": env.get("backend", ""), "folds": len(folds),
               "fast_path": fc.get("used"), "setup_seconds": fc.get("setup_seconds"),
               "fold_wall_seconds": math.nan, "fit_seconds": math.nan, "train_images_per_second": math.nan,
               "median_fold_images_per_second": math.nan}
        if folds:
            import numpy as np
            fit = sum(f["timing"]["fit_seconds"] for f in folds)
            seen = sum(f["n_train"] * len(f["history"]["seconds"]) for f in folds)
            row.update(fold_wall_seconds=sum(f["timing"]["wall_seconds"] for f in folds), fit_seconds=fit,
                       train_images_per_second=seen / fit if fit else math.nan,
                       median_fold_images_per_second=float(np.median(
                           [f["timing"]["train_images_per_second"] for f in folds])))
        rows.append(row)
    return pd.DataFrame(rows)


def backend_name(backend: str) -> str:
    """A Keras backend as its project spells it: "jax" -> "JAX", "tensorflow" -> "TensorFlow"."""
    return {"jax": "JAX", "tensorflow": "TensorFlow", "torch": "PyTorch", "numpy": "NumPy"}.get(backend, backend)


def short_device(device: str) -> str:
    """A benchmark record's device in a table cell: "CPU, 2 cores" or the GPU's name."""
    kind, _, name = device.partition(": ")
    if kind == "cpu":
        cores = re.search(r" x(\d+)$", name)
        return f"CPU, {cores.group(1)} cores" if cores else "CPU"
    return name or device


def benchmark_table(paths) -> tuple[pd.DataFrame, list[dict]] | None:
    """Plain ``model.fit`` against our trainer: a row per record and backbone; None if no record exists.

    ``paths`` are ``benchmark.json`` files (the CPU's, then the GPU's); those that do not
    exist are left out. The protocol times are the record's own: set-up, the first fold, and
    every later fold at the second's measured cost, each of the protocol's epochs, on the
    record's images.
    """
    records = [json.loads(p.read_text()) for p in map(Path, paths) if p.is_file()]
    if not records:
        return None
    rows = []
    for bench in records:
        for key, r in bench["backbones"].items():
            rows.append({"device": short_device(bench["environment"]["device"]), "backbone": key,
                         "network": get_backbone(key).name, "n_images": bench["n_images"],
                         "plain_images_per_second": r["plain"]["steady_images_per_second"],
                         "fast_images_per_second": r["fast"]["steady_images_per_second"],
                         "fast_path": bool(r["fast"]["fast_path"]), "steady_speedup": r["steady_speedup"],
                         "plain_protocol_seconds": r["plain"]["protocol_seconds"],
                         "fast_protocol_seconds": r["fast"]["protocol_seconds"],
                         "protocol_speedup": r["protocol_speedup"]})
    return pd.DataFrame(rows), records


def benchmark_absent(record) -> list[str]:
    """The Table 1 networks a ``benchmark.json`` record has no row for (a run stopped early), in Table 1's order."""
    return [b.name for b in TABLE1 if b.key not in record["backbones"]]


# --------------------------------------------------------------------------- CSV files
def to_csv(df: pd.DataFrame) -> str:
    """Deterministic CSV text: fixed float format, '\\n' line ends, empty cells for missing values."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return buf.getvalue()


def render(runs) -> dict:
    """File name -> CSV text of the three tables."""
    return {"table1.csv": to_csv(table1(runs)), "table2.csv": to_csv(table2(runs)),
            "table3.csv": to_csv(table3(runs))}


def readme_block(runs) -> str:
    """The README's headline block: the at-a-glance figure, the generated summary and the
    five-row table (Markdown), between :data:`README_START` and :data:`README_END`."""
    t2 = table2(runs)
    table = glance_display(t2)
    head = "| " + " | ".join(table.columns) + " |\n| " + " | ".join("---" for _ in table.columns) + " |\n"
    body = "".join("| " + " | ".join(_cell(v) for v in row) + " |\n" for row in table.values.tolist())
    return (f"{README_START}\n![Results at a glance](book/images/at_a_glance.png)\n\n"
            f"{headline(t2, runs, folds=False)}\n\n"
            f"{head}{body}\nOurs / the paper's value, in percent; ours pooled over the ten held-out folds of each complete run, "
            f"{DASH} where a run is not complete. Generated from `artifacts/runs` by `make results`.\n{README_END}")


def with_readme_block(text, block, path="README.md") -> str:
    """``text`` with its generated block replaced by ``block``."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path} has no {README_START} ... {README_END} block to hold the headline numbers")
    before, rest = text.split(README_START, 1)
    return before + block + rest.split(README_END, 1)[1]


def glance_stamp(runs) -> str:
    """What the at-a-glance figure was drawn from: the SHA-256 of Table 2's CSV text."""
    import hashlib

    return "table2.csv sha256 " + hashlib.sha256(to_csv(table2(runs)).encode()).hexdigest()


def write_glance(runs_root="artifacts/runs", path="book/images/at_a_glance.png") -> Path:
    """Draw the at-a-glance forest plot of the complete runs into a 200-dpi PNG stamped
    with :func:`glance_stamp` (so that ``--check`` can tell when it is stale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_forest

    runs = load_runs(runs_root)
    fig = plot_forest(table2(runs))  # no folds-done labels: the file changes only when a run completes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=200, metadata={"Software": None, "Description": glance_stamp(runs)})
    plt.close(fig)
    tmp.replace(path)
    return path


def write(runs_root="artifacts/runs", out="results", readme="README.md") -> list[Path]:
    """Write results/table{1,2,3}.csv and the README's headline block from the run artifacts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(runs_root)
    paths = []
    for name, text in render(runs).items():
        (out / name).write_text(text)
        paths.append(out / name)
    if readme and Path(readme).is_file():
        readme = Path(readme)
        readme.write_text(with_readme_block(readme.read_text(), readme_block(runs), readme))
        paths.append(readme)
    return paths


def _first_difference(have, want) -> str:
    old, new = have.splitlines(), want.splitlines()
    line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    return (f"first at line {line + 1}: file {old[line] if line < len(old) else '<end>'!r} vs "
            f"artifacts {new[line] if line < len(new) else '<end>'!r}")


def check(runs_root="artifacts/runs", out="results", readme="README.md", glance=None) -> list[str]:
    """Problems that make results/*.csv, the README block or the glance figure differ from
    the artifacts (empty list when up to date). ``readme``/``glance`` None: not checked."""
    problems = []
    runs = load_runs(runs_root)
    for name, text in render(runs).items():
        path = Path(out) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        have = path.read_text()
        if have != text:
            problems.append(f"{path} differs from the artifacts in {runs_root} ({_first_difference(have, text)})")
    if readme and Path(readme).is_file():
        text = Path(readme).read_text()
        try:
            want = with_readme_block(text, readme_block(runs), readme)
        except ValueError as e:
            problems.append(str(e))
        else:
            if want != text:
                problems.append(f"{readme}'s headline block differs from the artifacts ({_first_difference(text, want)})")
    if glance:
        from PIL import Image

        path = Path(glance)
        stamp = Image.open(path).text.get("Description") if path.is_file() else None
        if stamp != glance_stamp(runs):
            problems.append(f"{path} is missing or was drawn from other runs (run python -m xray_transfer.results "
                            f"--glance {path})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xray_transfer.results", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the CSV files and the README block")
    mode.add_argument("--check", action="store_true", help="fail if the CSV files or the README block are stale")
    mode.add_argument("--glance", metavar="PNG", help="draw the at-a-glance figure into PNG")
    ap.add_argument("--runs", default="artifacts/runs", help="run artifacts folder (default %(default)s)")
    ap.add_argument("--out", default="results", help="CSV folder (default %(default)s)")
    ap.add_argument("--readme", default="README.md", help="README holding the headline block (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        if args.glance:
            print(f"wrote {write_glance(args.runs, args.glance)}")
            return 0
        if args.write:
            for p in write(args.runs, args.out, args.readme):
                print(f"wrote {p}")
            return 0
        problems = check(args.runs, args.out, args.readme)
    except (MixedRunsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if problems:
        print("results are stale:\n  " + "\n  ".join(problems)
              + "\nRun `make results` (python -m xray_transfer.results --write) and commit results/ and README.md.",
              file=sys.stderr)
        return 1
    print(f"{', '.join(TABLE_FILES)} in {args.out} and {args.readme} match the artifacts in {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
