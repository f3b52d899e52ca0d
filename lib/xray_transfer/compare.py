"""Comparisons of runs that should differ in one named factor, with what else differs per row.

A comparison is fair when its runs differ only in the factor it names. Each row here
carries the Keras backend, device and git commit its folds were made with
(:func:`results.run_provenance`), and :func:`held_fixed` says which of them are the same
on every row, so that a sentence says "alone" only when all of them are.

Reads committed run folders only: ``artifacts/runs/<backbone>`` (Table 2, BatchNorm mode
``keras2``), ``artifacts/audit/bn-<mode>-<backbone>`` and
``artifacts/robustness/<backbone>/<factor>-<value>`` (``batchnorm-inference``,
``backend-tensorflow``, ...).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .metrics import pooled
from .models import BATCHNORM_MODES, get_backbone
from .results import load_run, run_provenance

#: What a comparison table's rows must agree on, besides the named factor.
CONTEXT = ("backend", "device", "commit")
#: The folds of the cross-backend check (two folds of one collapsed backbone on each backend).
BACKEND_FOLDS = (0, 1)
#: Backbones whose Table 2 run never predicts COVID-19 in the paper's likely BatchNorm mode.
COLLAPSED = ("xception", "inception_resnet_v2")


def batchnorm_dirs(backbone, artifacts="artifacts") -> dict:
    """mode -> run folder of one backbone under each BatchNorm mode (the folder may not exist).

    ``keras2`` is Table 2's run. The other modes come from the audit's runs
    (``audit/bn-<mode>-<backbone>``) or, failing those, the robustness grid's
    (``robustness/<backbone>/batchnorm-<mode>``).
    """
    art = Path(artifacts)
    out = {"keras2": art / "runs" / backbone}
    for mode in BATCHNORM_MODES:
        if mode != "keras2":
            audit = art / "audit" / f"bn-{mode}-{backbone}"
            out[mode] = audit if (audit / "run.json").is_file() else art / "robustness" / backbone / f"batchnorm-{mode}"
    return out


def backend_dirs(backbone, artifacts="artifacts") -> dict:
    """The cross-backend check of one backbone: Table 2's run and its twin on TensorFlow
    (``robustness/<backbone>/backend-tensorflow``), keyed by a label."""
    art = Path(artifacts)
    return {"Table 2's run": art / "runs" / backbone,
            "on TensorFlow": art / "robustness" / backbone / "backend-tensorflow"}


def row(name, run_dir, folds=None) -> dict:
    """One comparison row: the run's status, provenance and scores (percent).

    ``folds``: score only these folds (e.g. :data:`BACKEND_FOLDS`), and call the run
    complete when it has all of them; default, all of the run's folds.
    Scores stay NaN unless the run is complete.
    """
    run_dir = Path(run_dir)
    out = {"run": name, "path": str(run_dir), "complete": False, "status": "not run", "folds": 0,
           "backend": "", "device": "", "commit": "", "accuracy_3class": float("nan"),
           "sensitivity": float("nan"), "specificity": float("nan"), "accuracy_2class": float("nan")}
    if not (run_dir / "run.json").is_file():
        return out
    run = load_run(run_dir)
    want = list(folds) if folds is not None else list(range(run["record"]["params"]["n_splits"]))
    have = [f for f in run["folds"] if f["fold"] in want]
    run = {**run, "folds": have}
    prov = run_provenance(run)
    out.update({k: "; ".join(prov[k]) for k in CONTEXT})
    out.update(folds=len(have), complete=len(have) == len(want),
               status="complete" if len(have) == len(want) else f"{len(have)} of {len(want)} folds")
    if out["complete"]:
        m = pooled(have)
        out.update({k: 100 * m[k] for k in ("accuracy_3class", "sensitivity", "specificity", "accuracy_2class")})
    return out


def table(named_dirs: dict, folds=None) -> pd.DataFrame:
    """:func:`row` for every ``name -> run folder``, in order."""
    return pd.DataFrame([row(name, d, folds) for name, d in named_dirs.items()])


def held_fixed(rows: pd.DataFrame) -> dict:
    """For each of backend, device and commit: True when every run of ``rows`` that exists shares it."""
    made = rows[rows["folds"] > 0]
    return {k: made[k].nunique() <= 1 for k in CONTEXT}


def batchnorm_table(backbone, artifacts="artifacts") -> pd.DataFrame:
    """The three BatchNorm modes of one backbone, with a ``mode`` column."""
    dirs = batchnorm_dirs(backbone, artifacts)
    t = table({f"{get_backbone(backbone).name}, {m}": d for m, d in dirs.items()})
    t.insert(1, "mode", list(dirs))
    return t


def collapse_untested(artifacts="artifacts", backbones=COLLAPSED) -> list[str]:
    """What the book lacks to test why the collapsed runs collapse; empty when nothing.

    Needs, for each collapsed backbone, at least one other BatchNorm mode complete, and the
    cross-backend check (:data:`BACKEND_FOLDS` of the first collapsed backbone on TensorFlow
    beside the same folds of Table 2's run).
    """
    missing = []
    for b in backbones:
        others = batchnorm_table(b, artifacts)
        others = others[others["mode"] != "keras2"]
        if not others["complete"].any():
            missing.append(f"{get_backbone(b).name} in another BatchNorm mode ("
                           + "; ".join(f"{r.mode}: {r.status}" for r in others.itertuples()) + ")")
    if backbones:
        b = backbones[0]
        twin = table(backend_dirs(b, artifacts), folds=BACKEND_FOLDS)
        if not twin["complete"].all():
            missing.append(f"the cross-backend check of {get_backbone(b).name} (folds "
                           + " and ".join(str(k) for k in BACKEND_FOLDS) + " on TensorFlow: "
                           + twin["status"].iloc[1] + ")")
    return missing
