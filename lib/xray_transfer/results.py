"""Tables 1-3 of the paper, rebuilt from the committed run artifacts, beside the published values.

Reads ``artifacts/runs/<backbone>/`` (``run.json`` and ``fold-XX.json``) only: no
data, no Keras, no GPU. A backbone without a folder, or without a finished fold, is
a row marked ``not run``; its "ours" cells stay empty, never a placeholder number.

Command line::

    python -m xray_transfer.results --write   # regenerate results/table{1,2,3}.csv
    python -m xray_transfer.results --check   # exit 1 if results/*.csv are stale
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
from .models import TABLE1, get_backbone
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
#: Float format of the CSV files: fixed decimals keep --write byte-stable.
FLOAT_FORMAT = "%.4f"
TABLE_FILES = ("table1.csv", "table2.csv", "table3.csv")
_GPU_LOG = re.compile(r"^== --backbone (\S+)\b.*:\s*([0-9.]+)\s*s\s*$")


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


def weights_start(record) -> str:
    """How the backbone was initialised, from ``run.json``'s ``weights`` block.

    >>> weights_start({"weights": {"kind": "none"}})
    'none (random)'
    >>> weights_start({"weights": {"kind": "partial imagenet file", "missing_tensors": ["a/kernel (3, 3)"]}})
    'partial ImageNet (missing: a/kernel (3, 3))'
    """
    w = record.get("weights") or {}
    kind = w.get("kind")
    if kind == "none":
        return "none (random)"
    if kind == "imagenet (keras download)" or w.get("complete_imagenet") is True:
        return "complete ImageNet"
    if kind == "partial imagenet file":
        missing = w.get("missing_tensors") or ["unlisted tensors"]
        return f"partial ImageNet (missing: {'; '.join(missing)})"
    if kind == "file":
        return f"file {w.get('file')} (completeness unknown)"
    return f"unknown ({kind})"


def weights_short(record) -> str:
    """One word for tables: 'ImageNet', 'partial ImageNet' or 'random'."""
    kind = (record.get("weights") or {}).get("kind")
    return {"none": "random", "partial imagenet file": "partial ImageNet",
            "imagenet (keras download)": "ImageNet"}.get(kind, str(kind))


def commit(record) -> str:
    """The run's git commit, with '+dirty' when tracked sources differed from it."""
    git = (record.get("environment") or {}).get("git") or {}
    sha = git.get("commit") or "unknown"
    return sha + ("+dirty" if git.get("dirty") else "")


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
    if run is None:
        return {"commit": "", "manifest_sha256": ""}
    rec = run["record"]
    return {"commit": commit(rec), "manifest_sha256": (rec.get("dataset") or {}).get("manifest_sha256", "")}


def _done(run) -> bool:
    return run is not None and bool(run["folds"])


# --------------------------------------------------------------------------- tables
def table1(runs) -> pd.DataFrame:
    """Table 1: the configuration the paper states beside the one each run recorded.

    The paper's cutoff and classifier come from :data:`xray_transfer.models.TABLE1`;
    ours from the registry the run was built with and from ``run.json``'s ``params``
    (dropout, learning rate, epochs, batch size, input size, pooling) and ``weights``.
    """
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        two = len(spec.hidden) == 2
        row = {"backbone": spec.key, "network": spec.name, "status": status(run),
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
            row.update({"weights_ours": weights_start(run["record"]), "cutoff_ours": spec.cutoff,
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


def table2(runs) -> pd.DataFrame:
    """Table 2 in percent: ours pooled over the test folds, with 95 % Wilson interval and
    per-fold SD, beside the paper's value and the difference (ours - paper, points)."""
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        row = {"backbone": spec.key, "network": spec.name, "status": status(run),
               "weights": weights_short(run["record"]) if run else "", "n_images": pd.NA, "n_folds": pd.NA}
        m = pooled(run["folds"]) if _done(run) else None
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
    """Table 3: COVID-19 vs rest counts pooled over the folds; ours for all five, the paper's for two."""
    rows = []
    for spec in TABLE1:
        run = runs.get(spec.key)
        row = {"backbone": spec.key, "network": spec.name, "status": status(run),
               "weights": weights_short(run["record"]) if run else ""}
        m = pooled(run["folds"]) if _done(run) else None
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
    """Pooled 3x3 confusion matrix (rows true; covid, normal, pneumonia) of every run with folds."""
    return {k: pooled(r["folds"])["confusion"] for k, r in runs.items() if _done(r)}


# --------------------------------------------------------------------------- display helpers
def fmt_estimate(ours, lo, hi, sd) -> str:
    """'97.77 [96.83, 98.44] SD 1.21' or '' when not run ('SD n/a' with a single fold).

    >>> fmt_estimate(97.774, 96.83, 98.444, 1.212)
    '97.77 [96.83, 98.44] SD 1.21'
    """
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        return ""
    spread = "n/a" if sd is None or math.isnan(sd) else f"{sd:.2f}"
    return f"{ours:.2f} [{lo:.2f}, {hi:.2f}] SD {spread}"


def table2_display(t2: pd.DataFrame) -> pd.DataFrame:
    """Table 2 for reading: per metric ours (95 % CI, per-fold SD), the paper's value, the difference."""
    out = pd.DataFrame({"network": t2["network"], "weights": t2["weights"].replace("", "-"),
                        "status": t2["status"]})
    cols = {}
    for k in METRICS:
        name = METRIC_NAMES[k]
        cols[(name, "ours [95% CI] SD")] = [
            fmt_estimate(r[f"{k}_ours"], r[f"{k}_ci_low"], r[f"{k}_ci_high"], r[f"{k}_fold_sd"]) or NOT_RUN
            for _, r in t2.iterrows()]
        cols[(name, "paper")] = [f"{r[f'{k}_paper']:.2f}" + (r["paper_asterisk"] if k == "specificity" else "")
                                 for _, r in t2.iterrows()]
        cols[(name, "diff (pp)")] = ["" if math.isnan(r[f"{k}_diff_pp"]) else f"{r[f'{k}_diff_pp']:+.2f}"
                                     for _, r in t2.iterrows()]
    body = pd.DataFrame(cols)
    body.columns = pd.MultiIndex.from_tuples(body.columns)
    out.columns = pd.MultiIndex.from_tuples([(c, "") for c in out.columns])
    return pd.concat([out, body], axis=1)


def table1_display(t1: pd.DataFrame) -> pd.DataFrame:
    """Table 1 for reading: one row per setting (paper, then ours), one column per network."""
    settings = [("weights", "initial weights"), ("cutoff", "layer cutoff"), ("classifier", "classifier"),
                ("dropout", "dropout"), ("optimizer", "optimizer"), ("learning_rate", "learning rate"),
                ("epochs", "epochs"), ("batch_size", "batch size"), ("input_size", "input size (HxW)"),
                ("pooling", "pooling"), ("folds", "cross-validation folds")]
    data = {}
    for key, label in settings:
        for who in ("paper", "ours"):
            data[(label, who)] = ["" if pd.isna(v) else str(v) for v in t1[f"{key}_{who}"]]
    data[("run", "status")] = list(t1["status"])
    df = pd.DataFrame(data, index=t1["network"]).T
    df.index = pd.MultiIndex.from_tuples(df.index, names=["setting", "source"])
    df.columns.name = None
    return df


def table3_display(t3: pd.DataFrame) -> pd.DataFrame:
    """Table 3 for reading: ours and the paper's TP, FP, TN, FN side by side."""
    cols = {("", "network"): t3["network"], ("", "weights"): t3["weights"].replace("", "-"),
            ("", "status"): t3["status"]}
    for who in ("ours", "paper"):
        for k in ("TP", "FP", "TN", "FN", "n"):
            cols[(who, k)] = ["" if pd.isna(v) else str(int(v)) for v in t3[f"{k}_{who}"]]
    df = pd.DataFrame(cols)
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df


# --------------------------------------------------------------------------- learning curves, cost
def learning_summary(runs) -> pd.DataFrame:
    """Per run: final-epoch training and held-out accuracy (mean over folds) and how
    concentrated the held-out predictions are (share of the most predicted class)."""
    import numpy as np

    rows = []
    for key, run in runs.items():
        if not _done(run):
            continue
        folds = run["folds"]
        preds = np.concatenate([np.asarray(f["probs"]).argmax(1) for f in folds])
        counts = np.bincount(preds, minlength=3)
        true = np.concatenate([f["y_true"] for f in folds])
        rows.append({"backbone": key, "network": get_backbone(key).name, "weights": weights_short(run["record"]),
                     "train_accuracy_final": float(np.mean([f["history"]["accuracy"][-1] for f in folds])),
                     "train_accuracy_max": float(np.max([max(f["history"]["accuracy"]) for f in folds])),
                     "heldout_accuracy_final": float(np.mean([f["history"]["test_accuracy"][-1] for f in folds])),
                     "top_predicted_class": int(counts.argmax()),
                     "top_predicted_share": float(counts.max() / counts.sum()),
                     "true_share_of_top_class": float(np.mean(true == counts.argmax()))})
    return pd.DataFrame(rows)


def gpu_log_seconds(path) -> dict:
    """Wall seconds per backbone from a GPU log's '== --backbone X ... : N s' lines."""
    path = Path(path)
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(errors="replace").splitlines():
        m = _GPU_LOG.match(line.strip())
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def cost(runs, gpu_log=None) -> pd.DataFrame:
    """Reproduction cost per run: device, fold wall time, setup, fit throughput, fast path."""
    logged = gpu_log_seconds(gpu_log) if gpu_log else {}
    rows = []
    for key, run in runs.items():
        rec, folds = run["record"], run["folds"]
        env = rec.get("environment") or {}
        fc = rec.get("feature_cache") or {}
        row = {"backbone": key, "network": get_backbone(key).name, "status": status(run),
               "device": env.get("device", ""), "backend": env.get("backend", ""), "folds": len(folds),
               "fast_path": fc.get("used"), "setup_seconds": fc.get("setup_seconds"),
               "fold_wall_seconds": math.nan, "fit_seconds": math.nan, "train_images_per_second": math.nan,
               "median_fold_images_per_second": math.nan, "log_seconds": logged.get(key, math.nan)}
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


def projected_speedup(row, n_bench_images, n_images=1426, n_splits=10, epochs=10) -> float:
    """Plain over fast time for the whole protocol, from the benchmark's measured rates.

    Plain: every epoch of every fold at the plain steady rate. Fast: the frozen part once
    over all images (at the rate measured for the benchmark's images), then every epoch
    at the fast steady rate. A projection from measured rates, not an end-to-end timing.
    """
    n_train = n_images * (n_splits - 1) / n_splits
    steps = n_splits * epochs * n_train
    plain = steps / row["plain"]["steady_images_per_second"]
    fast = (row["fast"]["feature_seconds"] * n_images / n_bench_images
            + steps / row["fast"]["steady_images_per_second"])
    return plain / fast


def benchmark_table(path, n_images=1426) -> tuple[pd.DataFrame, dict] | None:
    """Plain ``model.fit`` against the fast path from ``benchmark.json``; None if it does not exist.

    ``n_images`` is the size of the dataset the protocol speed-up is projected to.
    """
    path = Path(path)
    if not path.is_file():
        return None
    bench = json.loads(path.read_text())
    rows = []
    for key, r in bench.get("backbones", {}).items():
        rows.append({"backbone": key, "network": get_backbone(key).name,
                     "plain_images_per_second": r["plain"]["steady_images_per_second"],
                     "fast_images_per_second": r["fast"]["steady_images_per_second"],
                     "steady_speedup": r["steady_speedup"],
                     "plain_fold_seconds": r["plain"]["fold_seconds"], "fast_fold_seconds": r["fast"]["fold_seconds"],
                     "fold_speedup": r["fold_speedup"],
                     "projected_protocol_speedup": projected_speedup(r, bench["n_images"], n_images)})
    return pd.DataFrame(rows), bench


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


def write(runs_root="artifacts/runs", out="results") -> list[Path]:
    """Write results/table{1,2,3}.csv from the run artifacts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render(load_runs(runs_root)).items():
        (out / name).write_text(text)
        paths.append(out / name)
    return paths


def check(runs_root="artifacts/runs", out="results") -> list[str]:
    """Problems that make results/*.csv differ from the artifacts (empty list when up to date)."""
    problems = []
    for name, text in render(load_runs(runs_root)).items():
        path = Path(out) / name
        if not path.is_file():
            problems.append(f"{path} is missing")
            continue
        have = path.read_text()
        if have != text:
            old, new = have.splitlines(), text.splitlines()
            line = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
            problems.append(f"{path} differs from the artifacts in {runs_root} (first at line {line + 1}: "
                            f"file {old[line] if line < len(old) else '<end>'!r} vs "
                            f"artifacts {new[line] if line < len(new) else '<end>'!r})")
    return problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xray_transfer.results", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate the CSV files")
    mode.add_argument("--check", action="store_true", help="fail if the CSV files are stale")
    ap.add_argument("--runs", default="artifacts/runs", help="run artifacts folder (default %(default)s)")
    ap.add_argument("--out", default="results", help="CSV folder (default %(default)s)")
    args = ap.parse_args(argv)
    if args.write:
        for p in write(args.runs, args.out):
            print(f"wrote {p}")
        return 0
    problems = check(args.runs, args.out)
    if problems:
        print("results/*.csv are stale:\n  " + "\n  ".join(problems)
              + "\nRun `make results` (python -m xray_transfer.results --write) and commit results/.",
              file=sys.stderr)
        return 1
    print(f"{', '.join(TABLE_FILES)} in {args.out} match the artifacts in {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
