"""bfloat16 against float32: Table 2's metrics of a ``mixed_bfloat16`` run beside the float32 run.

A comparison is fair only when the two runs differ in the precision alone: the same backend
and device (fold by fold), the same starting weights, data and folds, every other parameter
the same. :func:`compare` pairs the runs by fold (:func:`xray_transfer.robustness.paired_change`
on :func:`xray_transfer.metrics.pooled`) and refuses, naming the difference, any other pair.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import pooled
from .results import is_complete, load_run
from .robustness import METRIC_NAMES, METRICS, devices, differs_from_default, paired_change

#: Where the bfloat16 runs go (``precision/<backbone>/mixed_bfloat16`` in the experiment registry).
BF16_DIR = "artifacts/precision/{backbone}/mixed_bfloat16"
#: The float32 runs each may be compared with, in order: Table 2's, or the default made again with
#: Keras on JAX on the GPU (the robustness grid's ``backend-jax``) where Table 2's was made elsewhere.
FLOAT32_DIRS = ("artifacts/runs/{backbone}", "artifacts/robustness/{backbone}/backend-jax")


class NotComparable(ValueError):
    """Two runs differ in more than the precision; the message says in what."""


def why_not_comparable(float32_run: dict, bf16_run: dict) -> str | None:
    """What makes two complete runs differ beyond the precision, in words, or None.

    >>> a = {"record": {"params": {"backbone": "vgg19"}, "weights": {"sha256": "w"},
    ...                 "dataset": {"manifest_sha256": "m"}, "environment": {}},
    ...      "folds": [{"test_file": ["x.png"], "backend": "jax", "device": "gpu: NVIDIA H200"}]}
    >>> b = {"record": {**a["record"], "params": {"backbone": "vgg19", "precision": "mixed_bfloat16"}},
    ...      "folds": [{**a["folds"][0], "device": "cpu: Intel"}]}
    >>> why_not_comparable(a, b)
    'made on jax / gpu: NVIDIA H200 and on jax / cpu: Intel'
    """
    a, b = float32_run["record"], bf16_run["record"]
    pa = {k: v for k, v in differs_from_default(a["params"]).items() if k != "precision"}
    pb = {k: v for k, v in differs_from_default(b["params"]).items() if k != "precision"}
    if a["params"].get("precision", "float32") != "float32" or b["params"].get("precision") != "mixed_bfloat16":
        return (f"precisions are {a['params'].get('precision', 'float32')} and "
                f"{b['params'].get('precision', 'float32')}, not float32 and mixed_bfloat16")
    if a["params"].get("backbone") != b["params"].get("backbone") or pa != pb:
        return f"other parameters: {a['params'].get('backbone')} {pa} and {b['params'].get('backbone')} {pb}"
    if devices(float32_run) != devices(bf16_run):
        return f"made on {devices(float32_run)} and on {devices(bf16_run)}"
    if (a.get("weights") or {}).get("sha256") != (b.get("weights") or {}).get("sha256"):
        return "other starting weights"
    if (a.get("dataset") or {}).get("manifest_sha256") != (b.get("dataset") or {}).get("manifest_sha256"):
        return "other data (dataset manifest)"
    if [f["test_file"] for f in float32_run["folds"]] != [f["test_file"] for f in bf16_run["folds"]]:
        return "other folds (test images)"
    return None


def later_fold_seconds(run: dict) -> float:
    """Median training seconds of a fold after the first (the first carries compilation); NaN without one."""
    secs = [f["timing"]["fit_seconds"] for f in run["folds"][1:] if "timing" in f]
    return float(np.median(secs)) if secs else float("nan")


def compare(float32_run: dict, bf16_run: dict) -> pd.DataFrame:
    """Each Table 2 metric (percent) of the float32 and the bfloat16 run, and the change paired by fold.

    Both are :func:`xray_transfer.results.load_run` dicts of complete runs. Columns: ``metric``,
    ``float32``, ``mixed_bfloat16`` (pooled over the folds), ``change`` (pooled, points), ``mean``,
    ``low``, ``high`` (mean per-fold change and its 95 % t interval) and ``n`` (folds paired).

    Raises
    ------
    NotComparable
        When a run is incomplete or the two differ in more than the precision (:func:`why_not_comparable`).
    """
    for name, run in (("float32", float32_run), ("mixed_bfloat16", bf16_run)):
        if not is_complete(run):
            raise NotComparable(f"the {name} run {run.get('path', '')} is not complete")
    why = why_not_comparable(float32_run, bf16_run)
    if why:
        raise NotComparable(f"{bf16_run.get('path', 'the bfloat16 run')} differs from "
                            f"{float32_run.get('path', 'the float32 run')} in more than the precision: {why}")
    a = {"summary": pooled(float32_run["folds"]), "run": float32_run}
    b = {"summary": pooled(bf16_run["folds"]), "run": bf16_run}
    rows = []
    for m in METRICS:
        ch = paired_change(a, b, m)
        rows.append({"metric": METRIC_NAMES[m], "float32": 100 * a["summary"][m], "mixed_bfloat16": 100 * b["summary"][m],
                     "change": ch["pooled"], "mean": ch["mean"], "low": ch["low"], "high": ch["high"], "n": ch["n"]})
    return pd.DataFrame(rows)


def load_comparisons(repo=".", backbones=None) -> dict:
    """What is committed of the bfloat16 runs, per backbone: ``{"table", "seconds", "devices",
    "float32"}`` where a complete bfloat16 run can be compared with a float32 run of
    :data:`FLOAT32_DIRS` (the first that differs in the precision alone), ``{"note"}`` where it
    cannot (not run yet, incomplete, or not comparable: the note says why)."""
    from .models import TABLE1

    repo = Path(repo)
    out = {}
    for bb in backbones or [b.key for b in TABLE1]:
        bf16 = repo / BF16_DIR.format(backbone=bb)
        if not (bf16 / "run.json").is_file():
            out[bb] = {"note": "not run yet"}
            continue
        low = load_run(bf16)
        if not is_complete(low):
            out[bb] = {"note": f"{len(low['folds'])} of {low['record']['params']['n_splits']} folds so far"}
            continue
        notes = []
        for rel in FLOAT32_DIRS:
            f32 = repo / rel.format(backbone=bb)
            if not (f32 / "run.json").is_file():
                continue
            high = load_run(f32)
            try:
                table = compare(high, low)
            except NotComparable as err:
                notes.append(str(err).replace(str(repo) + "/", ""))
                continue
            out[bb] = {"table": table, "devices": devices(low), "float32": rel.format(backbone=bb),
                       "seconds": {"float32": later_fold_seconds(high), "mixed_bfloat16": later_fold_seconds(low)}}
            break
        else:
            out[bb] = {"note": "; ".join(notes) or "no float32 run to compare with"}
    return out
