"""The arithmetic of Tables 1-3: runs loaded from the committed artifacts, pooled beside the
published values, and the paper's table checked against itself.

Reads ``artifacts/runs/<backbone>/`` (``run.json`` and ``fold-XX.json``) only: no
data, no Keras, no GPU. Only *complete* runs (every fold finished) give numbers; an
unfinished run is a row saying "k of 10 folds", a missing one "not run", and their
"ours" cells stay empty, never a placeholder number. A table never mixes runs made on
different datasets (manifest SHA-256) or from a different weights policy:
:func:`one_generation` refuses them, naming the runs.

How the numbers are shown (Markdown tables, sentences, the README block, the at-a-glance
figure) lives in :mod:`xray_transfer.report`; its names are also reachable here
(``results.pct``, ``results.md_table``, ...) for code written before the split.

Command line (:func:`xray_transfer.report.main`)::

    python -m xray_transfer.results --write   # regenerate results/table{1,2,3}.csv, the README block
    python -m xray_transfer.results --check   # exit 1 if those are stale
    python -m xray_transfer.results --glance book/images/at_a_glance.png   # the at-a-glance figure
"""
from __future__ import annotations

import io
import json
import math
import re
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
NOT_RUN = "not run"
NOT_COMPLETE = "not complete"
#: Float format of the CSV files: fixed decimals keep --write byte-stable.
FLOAT_FORMAT = "%.4f"
TABLE_FILES = ("table1.csv", "table2.csv", "table3.csv")


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


def run_provenance(run) -> dict:
    """Where a run's folds were made: the sets of Keras backends, devices and git commits.

    Each fold record names its backend and device, and newer ones their commit (a resumed
    run's later folds can come from later commits than ``run.json``'s); a fold that does not
    is taken to share ``run.json``'s. Returns ``{"backend", "device", "commit"}``, each a
    sorted list (one element when every fold agrees); empty lists for ``None``.
    """
    if run is None:
        return {"backend": [], "device": [], "commit": []}
    env = run["record"].get("environment") or {}
    made = [(f.get("backend") or env.get("backend", ""), f.get("device") or env.get("device", ""),
             commit({"environment": {"git": f["git"]}}) if f.get("git") else commit(run["record"]))
            for f in run["folds"]] or [(env.get("backend", ""), env.get("device", ""), commit(run["record"]))]
    return {k: sorted({m[i] for m in made}) for i, k in enumerate(("backend", "device", "commit"))}


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


def largest_gaps(t2: pd.DataFrame, n=3, allowed_only=False) -> list[tuple]:
    """The ``n`` largest |ours - paper| differences of complete runs: (network, metric, ours, paper, diff).

    ``allowed_only=True`` ranks only the paper's values that its own table allows
    (:func:`paper_checks`): a difference from a value the paper could not have measured
    says nothing about the reproduction.
    """
    bad = set() if not allowed_only else {
        (r.backbone, r.metric) for r in paper_checks().itertuples() if not r.possible}
    gaps = [(r["network"], METRIC_NAMES[k], r[f"{k}_ours"], r[f"{k}_paper"], r[f"{k}_diff_pp"])
            for _, r in t2.iterrows() for k in METRICS
            if not pd.isna(r[f"{k}_diff_pp"]) and (r["backbone"], k) not in bad]
    return sorted(gaps, key=lambda g: -abs(g[4]))[:n]


# --------------------------------------------------------------------------- the paper against itself
#: Decimals the paper prints its percentages with (Table 2).
PAPER_DECIMALS = 2


def accuracy3_cap(sensitivity, n_covid=None, n=None) -> float:
    """The highest 3-class accuracy (percent) that a COVID-19 sensitivity (percent) allows.

    Every COVID-19 image the network misses is also a 3-class error, so at most
    ``1 - (n_covid / n)(1 - s)`` of the images can be right. Defaults: the paper's
    class sizes (224 COVID-19 images of 1428).

    >>> round(accuracy3_cap(12.94), 1), round(accuracy3_cap(0.08), 1)
    (86.3, 84.3)
    """
    n_covid = paper.COUNTS["covid"] if n_covid is None else n_covid
    n = sum(paper.COUNTS.values()) if n is None else n
    return 100 * (1 - n_covid / n * (1 - sensitivity / 100))


def implied_accuracy2(sensitivity, specificity, n_covid=None, n=None) -> float:
    """The 2-class accuracy (percent) that a sensitivity and a specificity (percent) imply:
    the share of all images called right, ``(s n_covid + sp (n - n_covid)) / n``.

    >>> round(implied_accuracy2(0.08, 99.99), 2)   # Xception's row of the paper's Table 2
    84.32
    """
    n_covid = paper.COUNTS["covid"] if n_covid is None else n_covid
    n = sum(paper.COUNTS.values()) if n is None else n
    return (sensitivity * n_covid + specificity * (n - n_covid)) / n


def rate_possible(value, n, decimals=PAPER_DECIMALS) -> bool:
    """Whether a printed percentage can be k/n for a whole number k of ``n`` images, rounded or
    cut to ``decimals`` (so within one last printed digit of it).

    >>> rate_possible(12.94, 224), rate_possible(0.08, 224), rate_possible(99.83, 1204)
    (True, False, True)
    """
    step = 10.0 ** -decimals
    k = value * n / 100
    return any(0 <= j <= n and abs(100 * j / n - value) < step - 1e-9 for j in (math.floor(k), math.ceil(k)))


def paper_checks(table2=None, counts=None) -> pd.DataFrame:
    """Every cell of the paper's Table 2 checked against the rest of its row and its class sizes.

    A cell is impossible (``possible`` False, ``why`` says which rule) when:

    - a sensitivity or specificity is not a whole number of images out of the COVID-19
      (or other) images, to the printed decimals (:func:`rate_possible`);
    - a 3-class accuracy is above :func:`accuracy3_cap` of the row's sensitivity;
    - a 2-class accuracy differs from :func:`implied_accuracy2` of the row's sensitivity and
      specificity by more than the printing can explain (two last digits).

    Returns one row per backbone and metric: ``backbone``, ``metric``, ``paper``, ``bound``
    (the cap or the implied value where a rule gives one, else NaN), ``possible``, ``why``.
    """
    table2 = paper.TABLE2 if table2 is None else table2
    counts = paper.COUNTS if counts is None else counts
    n_covid, n = counts["covid"], sum(counts.values())
    step = 10.0 ** -PAPER_DECIMALS
    rows = []
    for key, v in table2.items():
        s, sp = v["sensitivity"], v["specificity"]
        cap = accuracy3_cap(s, n_covid, n)
        implied = implied_accuracy2(s, sp, n_covid, n)
        checks = {
            "sensitivity": (math.nan, rate_possible(s, n_covid),
                            f"not a whole number of the {n_covid} COVID-19 images"),
            "specificity": (math.nan, rate_possible(sp, n - n_covid),
                            f"not a whole number of the {n - n_covid} other images"),
            "accuracy_3class": (cap, v["accuracy_3class"] <= cap + step,
                                f"above the {cap:.1f} % that its sensitivity of {s:.2f} % allows"),
            "accuracy_2class": (implied, abs(v["accuracy_2class"] - implied) <= 2 * step,
                                f"its sensitivity and specificity imply {implied:.2f} %"),
        }
        for metric in METRICS:
            bound, ok, why = checks[metric]
            rows.append({"backbone": key, "metric": metric, "paper": v[metric], "bound": bound,
                         "possible": bool(ok), "why": "" if ok else why})
    return pd.DataFrame(rows)


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
                         "protocol_speedup": r["protocol_speedup"],
                         # every fold at once (benchmark --together), where measured; why not, where tried
                         "together_protocol_seconds": r.get("together", {}).get("protocol_seconds", math.nan),
                         "together_speedup": r.get("together_speedup", math.nan),
                         "together_not_measured": r.get("together", {}).get("not_measured", "")})
    return pd.DataFrame(rows), records


#: A benchmark record's paths as the tables and figures name them.
PATH_LABELS = {"plain": "plain model.fit", "fast": "ours", "together": "ours, folds together"}


def benchmark_throughput(records, flops_path) -> pd.DataFrame | None:
    """Achieved TFLOP/s of each benchmark path against the chip's dense peak; None without FLOP counts.

    A row per record, backbone and path (:data:`PATH_LABELS`: ``together`` where measured), from
    :func:`xray_transfer.benchmark.throughput`: XLA's FLOP count of the protocol
    (``flops_path``, :mod:`xray_transfer.flops`) over the measured protocol seconds
    (``protocol_tflops``) and over a steady epoch's seconds (``steady_tflops``); ``share`` and
    ``steady_share`` of ``peak_tflops`` (NaN where no data-sheet peak is known: a CPU).
    ``notes`` says which arithmetic the peak is for and what the record did not state.
    """
    from .benchmark import throughput

    try:
        counts = json.loads(Path(flops_path).read_text())
    except (OSError, ValueError):
        return None
    rows = []
    for bench in records:
        for key, r in bench["backbones"].items():
            for path, label in PATH_LABELS.items():
                if "protocol_seconds" not in r.get(path, {}):  # the together path: not tried or not measured
                    continue
                t = throughput(bench, key, path, r[path], counts)
                rows.append({"device": short_device(bench["environment"]["device"]), "backbone": key,
                             "network": get_backbone(key).name, "path": label,
                             "protocol_tflops": t["protocol_tflops_per_second"],
                             "steady_tflops": t["steady_tflops_per_second"], "peak_tflops": t["peak_tflops"],
                             "arithmetic": t["arithmetic"], "share": t["share_of_peak"],
                             "steady_share": t["steady_share_of_peak"], "notes": t["notes"]})
    return pd.DataFrame(rows).astype({"protocol_tflops": float, "steady_tflops": float, "peak_tflops": float,
                                      "share": float, "steady_share": float})


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


# --------------------------------------------------------------------------- presentation, moved
#: Names that moved to :mod:`xray_transfer.report` when the arithmetic and the display were split.
MOVED_TO_REPORT = (
    "ASTERISK_NOTE", "README_START", "README_END", "DASH", "pct", "duration", "short_hash", "breakable", "md_table",
    "glance_display", "table2_display", "table1_display", "table3_display", "comparison_display", "headline",
    "complete_phrase", "listing", "readme_block", "with_readme_block", "glance_stamp", "write_glance", "write",
    "check", "main", "verdict")


def __getattr__(name):
    """``results.pct`` and the other display names still work: they live in :mod:`.report`."""
    if name in MOVED_TO_REPORT:
        from . import report

        return getattr(report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    import sys

    from .report import main as _main

    sys.exit(_main())
