"""Helpers for the leakage and shortcut audit (beyond the paper)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from .data import is_frontal_xray, resolve_data_dir


def patient_overlap(fold_of, groups) -> np.ndarray:
    """For every image: does another image of the same patient sit in its training folds?

    >>> patient_overlap([0, 1, 0, 1], ["a", "a", "b", "c"]).tolist()
    [True, True, False, False]
    """
    fold_of, groups = np.asarray(fold_of), np.asarray(groups)
    out = np.zeros(len(fold_of), dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        if len(idx) > 1:
            for i in idx:
                out[i] = bool((fold_of[idx] != fold_of[i]).any())
    return out


def read_folds(run_dir) -> dict:
    """``folds.csv`` of a run as arrays: index, file, label, patient_id, fold."""
    with open(Path(run_dir) / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {"file": np.array([r["file"] for r in rows]), "label": np.array([int(r["label"]) for r in rows]),
            "patient_id": np.array([r["patient_id"] for r in rows]), "fold": np.array([int(r["fold"]) for r in rows])}


def adult_non_covid(data_dir=None) -> list[dict]:
    """The adult X-rays of Cohen and Figure 1 that are not COVID-19 (other findings, no finding, unlabelled).

    Frontal X-rays only, as for the COVID-19 class. Each row: path, source, finding, patient_id.
    "No Finding" and "No finding" are merged; other findings are kept as written.
    """
    root = resolve_data_dir(data_dir)
    out = []
    for source, name_col in (("cohen", "filename"), ("figure1", "imagename")):
        with open(root / source / "metadata.csv", newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                finding = (row.get("finding") or "").strip()
                if finding.lower() == "no finding":  # the metadata spells it both ways
                    finding = "No finding"
                if finding.startswith("COVID-19") or not is_frontal_xray(row):
                    continue
                path = root / source / (row.get("folder") or "images") / row[name_col]
                if path.is_file():
                    out.append({"path": path, "source": source, "finding": finding or "(unlabelled)",
                                "patient_id": f"{source}-{row['patientid']}"})
    return out


def calls_with_batch_statistics(model, x, batch_size=64, seed=0) -> np.ndarray:
    """Class calls when every BatchNormalization layer normalises with its batch's own statistics.

    In inference mode BatchNormalization uses moving averages gathered during training; if
    they lag behind the fine-tuned weights, calls differ from those the model made while it
    trained. This runs the model in training mode with dropout switched off (and restored
    afterwards), on batches drawn in a random order so that each mixes the classes.
    ``x`` must already be scaled for the backbone.
    """
    import keras

    def walk(layer):
        yield layer
        for sub in getattr(layer, "layers", []):
            yield from walk(sub)

    dropouts = [layer for layer in walk(model) if isinstance(layer, keras.layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    order = np.random.default_rng(seed).permutation(len(x))
    calls = np.empty(len(x), dtype=int)
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            calls[idx] = np.asarray(model(x[idx], training=True)).argmax(1)
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate
    return calls


def run_summary(run_dir, manifest_sha256=None) -> dict:
    """A cross-validation run as the audit reads it.

    Returns ``{"status", "pooled", "record", "folds"}``: ``status`` in words ("complete",
    "3 of 10 folds", "not run"; "complete, on scikit-learn 1.7.2's folds" where another
    version of scikit-learn drew folds that this one does not draw), ``pooled`` the pooled
    metrics (:func:`metrics.pooled`) only when every fold is done, else None, so that an
    unfinished run never reaches a table.
    With ``manifest_sha256``, a run made on another dataset is refused (ValueError).
    """
    from .metrics import pooled
    from .train import folds_drawn_again, load_folds

    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file():
        return {"status": "not run", "pooled": None, "record": None, "folds": []}
    record = json.loads((run_dir / "run.json").read_text())
    made_on = record.get("dataset", {}).get("manifest_sha256")
    if manifest_sha256 and made_on and made_on != manifest_sha256:
        raise ValueError(f"{run_dir}: made on dataset {made_on[:12]}…, not {manifest_sha256[:12]}…; "
                         "re-run it on the current dataset before comparing")
    folds = load_folds(run_dir)
    n = record["params"]["n_splits"]
    done = len(folds) == n
    status = "complete" if done else f"{len(folds)} of {n} folds"
    if done and not folds_drawn_again(run_dir):
        status += f", on scikit-learn {record['environment']['versions'].get('scikit-learn', '(unknown)')}'s folds"
    return {"status": status, "record": record, "folds": folds, "pooled": pooled(folds) if done else None}


#: Metrics the audit tables show, with their headers.
SCORES = {"accuracy_3class": "3-class accuracy (%)", "accuracy_2class": "2-class accuracy (%)",
          "sensitivity": "COVID-19 sensitivity (%)", "specificity": "COVID-19 specificity (%)"}


def scores_table(runs: dict, manifest_sha256=None):
    """One row per named run folder: status and the pooled metrics in percent (one decimal).

    Unfinished or absent runs show their status and a dash. With ``manifest_sha256``, a run
    made on another dataset is refused: a table never mixes datasets.
    """
    import pandas as pd

    rows = {}
    for name, run_dir in runs.items():
        s = run_summary(run_dir, manifest_sha256)
        row = {"status": s["status"]}
        for key, header in SCORES.items():
            row[header] = f"{100 * s['pooled'][key]:.1f}" if s["pooled"] else "—"
        rows[name] = row
    return pd.DataFrame(rows).T


def inputs_record(run_dirs, model_sha256: dict, pending=()) -> dict:
    """What an executed audit page read: the folds done in each run folder, keyed
    ``"<parent>/<name>"`` (``"runs/mobilenet"``, ``"audit/bn-inference-mobilenet"``), the
    SHA-256 of each model trained on all images, by backbone (None where it was absent), and
    ``pending``, what the page could not measure yet, in the page's words (the landing page
    quotes it)."""
    runs = {f"{Path(d).parent.name}/{Path(d).name}": len(list(Path(d).glob("fold-*.json"))) for d in run_dirs}
    return {"runs": dict(sorted(runs.items())), "models": dict(sorted(model_sha256.items())),
            "pending": list(dict.fromkeys(pending))}


def pending_sentence(pending) -> str:
    """One sentence (MyST) on what the audit could not measure yet, or that nothing is missing."""
    if not pending:
        return "Every audit run and probe is complete on the current runs."
    return "Not yet measured on the current runs: " + "; ".join(dict.fromkeys(pending)) + "."


def state_sentence(audit_dir="artifacts/audit") -> str:
    """:func:`pending_sentence` as plain text, from the ``pending`` list that the audit page in
    ``audit_dir`` recorded in its ``audit-inputs.json`` (the landing page and results chapter quote it)."""
    pending = json.loads((Path(audit_dir) / "audit-inputs.json").read_text())["pending"]
    return pending_sentence(pending).replace("`", "")


def stale_inputs(record: dict, artifacts="artifacts") -> list[str]:
    """How ``artifacts/`` differs from what an audit page read (``inputs_record``); empty if it does not.

    Audit run folders the page never read count too.
    """
    art, stale = Path(artifacts), []
    for key, folds in record["runs"].items():
        now = len(list((art / key).glob("fold-*.json")))
        if now != folds:
            stale.append(f"{key}: the page read {folds} folds, artifacts/ has {now}")
    for run in sorted((art / "audit").glob("*/run.json")):
        key = f"audit/{run.parent.name}"
        if key not in record["runs"]:
            stale.append(f"{key}: not read by the page")
    for backbone, sha in record["models"].items():
        path = art / "models" / f"{backbone}.json"
        now = json.loads(path.read_text())["model_sha256"] if path.is_file() else None
        if now != sha:
            stale.append(f"models/{backbone}: the page read {sha and sha[:12]}, artifacts/ has {now and now[:12]}")
    return stale


def committed_predictions(backbone, audit_dir="artifacts/audit", records_dir="artifacts/models"):
    """The committed ``adult-non-covid-<backbone>.csv`` and the model record it came from, or None.

    Used where the model file itself is absent. The predictions count only when the audit page
    that wrote them recorded (in ``audit-inputs.json``) the same model SHA-256 as
    ``records_dir/<backbone>.json`` holds: the committed calls are then that model's.

    Returns ``(csv_path, record)`` or None.
    """
    audit_dir, records_dir = Path(audit_dir), Path(records_dir)
    csv_path, rec_path, inputs = (audit_dir / f"adult-non-covid-{backbone}.csv", records_dir / f"{backbone}.json",
                                  audit_dir / "audit-inputs.json")
    if not (csv_path.is_file() and rec_path.is_file() and inputs.is_file()):
        return None
    record = json.loads(rec_path.read_text())
    read = json.loads(inputs.read_text()).get("models", {}).get(backbone)
    return (csv_path, record) if read and read == record.get("model_sha256") else None


def committed_adult_calls(audit_dir="artifacts/audit", records_dir="artifacts/models") -> dict:
    """backbone -> counts of the committed calls on the adult X-rays without COVID-19
    (``images`` and one count per class), for every backbone whose predictions match its
    model record (:func:`committed_predictions`)."""
    from .data import CLASSES
    from .models import TABLE1

    out = {}
    for spec in TABLE1:
        found = committed_predictions(spec.key, audit_dir, records_dir)
        if found is None:
            continue
        with open(found[0], newline="") as f:
            called = [r["predicted"] for r in csv.DictReader(f)]
        out[spec.key] = {"images": len(called), **{c: called.count(c) for c in CLASSES}}
    return out
