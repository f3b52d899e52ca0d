"""How far chance and the paper's unstated choices move Table 2: the grid, its arithmetic, its verdicts.

The grid, per backbone, around the default (Table 2's run, ``artifacts/runs/<backbone>``):

* **chance**: seeds 1-3 (a seed draws the fold split, the random initial weights and
  dropout, and the batch order), and the same seeds with the split held at the default's
  (``split_seed=0``: only the initialisation and the order change);
* **the default again on the GPU** (``backend-jax``), for the backbones whose Table 2 run was made
  with Keras on TensorFlow on the CPU (:data:`REMADE_ON_GPU`): the grid's own runs are meant for
  Keras on JAX on a GPU (a run made elsewhere records where), and each run is compared with the
  default made with the same backend on the same device where one is complete (:func:`baseline`),
  so that two runs compared differ only in the factor named;
* **one choice at a time**: learning rate, BatchNorm mode, pooling, dropout, input
  scaling, resizing, augmentation; each run differs from the default in that one
  parameter only.

:func:`experiments` lists the runs to make, in the issue's priority order, for the
experiment registry; :func:`load_grid` reads what has been committed; the rest is
arithmetic on the pooled held-out predictions (:func:`xray_transfer.metrics.pooled`) and
the chapter's figure. Runs made on other data (manifest SHA-256) or from other starting
weights (SHA-256) are never mixed in: :func:`load_grid` drops them with a note.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import paper
from .metrics import pooled
from .models import OFFLINE_WEIGHTS, TABLE1, get_backbone
from .results import backend_name, is_complete, load_run, short_device
from .train import DEFAULTS

#: Where the grid's own runs go: ``<root>/<backbone>/<factor>-<value>``.
ROOT = "artifacts/robustness"
#: Backbones in Table 1's order.
ORDER = tuple(b.key for b in TABLE1)
#: Seeds run beside the default's seed 0.
SEEDS = (1, 2, 3)
#: The metrics of Table 2, and the two the specification curve draws.
METRICS = ("accuracy_2class", "accuracy_3class", "sensitivity", "specificity")
CURVE_METRICS = ("accuracy_3class", "sensitivity")
METRIC_NAMES = {"accuracy_2class": "2-class accuracy", "accuracy_3class": "3-class accuracy",
                "sensitivity": "COVID-19 sensitivity", "specificity": "specificity"}
#: Table headers of the metrics.
COLUMN_NAMES = {"accuracy_2class": "2-class accuracy", "accuracy_3class": "3-class accuracy",
                "sensitivity": "Sensitivity", "specificity": "Specificity"}
#: One choice at a time: (factor, parameter, values other than the default), in the order shown.
CHOICES = (
    ("learning_rate", "learning_rate", (1e-3, 1e-5)),
    ("batchnorm", "batchnorm", ("batch_statistics", "inference")),
    ("pooling", "pooling", ("flatten", "max")),
    ("dropout", "dropout", (0.2, 0.0)),
    ("scaling", "scaling", ("unit",)),
    ("resize", "resize", ("stretch",)),
    ("augment", "augment", ("light",)),
)
#: What each factor is, in the reader's words (the strip beneath the curve, the tables).
FACTOR_NAMES = {"default": "default (Table 2's run)", "backend": "default, other backend", "seed": "seed", "split_fixed": "seed, split fixed",
                "learning_rate": "learning rate", "batchnorm": "BatchNorm mode", "pooling": "pooling",
                "dropout": "dropout", "scaling": "input scaling", "resize": "resizing", "augment": "augmentation"}
#: Backbones whose BatchNorm choice is priority 3 (VGG19 has no BatchNorm: a control).
BATCHNORM_FIRST = ("vgg19", "xception", "inception_resnet_v2")
#: Backbones whose every choice the issue wants complete before the other two's (priority 4 order).
COMPLETE_FIRST = ("vgg19", "mobilenet", "inception_v3")
#: Backbones whose Table 2 run was made with Keras on TensorFlow on the CPU: the grid makes their
#: default once more with Keras on JAX on the GPU (``backend-jax``), the baseline of its GPU runs.
REMADE_ON_GPU = ("vgg19", "mobilenet", "inception_v3")
#: Audit runs exactly one factor away from a default, reused instead of run again.
REUSED = {("mobilenet", "batchnorm", "batch_statistics"): "artifacts/audit/bn-batch_statistics-mobilenet",
          ("mobilenet", "batchnorm", "inference"): "artifacts/audit/bn-inference-mobilenet",
          ("inception_v3", "batchnorm", "batch_statistics"): "artifacts/audit/bn-batch_statistics-inception_v3",
          ("inception_v3", "batchnorm", "inference"): "artifacts/audit/bn-inference-inception_v3"}
#: The paired comparison, in words (the effects table's note).
METHOD = ("paired over the same ten folds (same test images): the mean of the per-fold differences from the "
          "default, with a 95 % t interval over the folds; called real only when that interval excludes 0 and "
          "the change is larger than the seed yardstick, the largest change any seed run made")
#: The call of a change beyond chance made by a run that also differs in backend or device.
REAL_NOT_ALONE = "real, not the choice alone"
VERDICTS = ("reproduced within chance", "reached with a stated choice", "not reached by any setting tried")


def value_label(value) -> str:
    """A parameter value as it appears in a folder name.

    >>> value_label(1e-3), value_label(1e-5), value_label(0.0), value_label("inference")
    ('0.001', '1e-05', '0', 'inference')
    """
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def applies(backbone: str, param: str) -> bool:
    """Whether changing ``param`` can change ``backbone``'s network: dropout acts only between two
    hidden layers (MobileNet and Xception in Table 1)."""
    return param != "dropout" or len(get_backbone(backbone).hidden) == 2


def _point(backbone, factor, value, change, priority, rank, root, **made_with):
    label = f"{factor}-{value_label(value)}" if factor != "split_fixed" else f"split_fixed-seed-{value}"
    out = REUSED.get((backbone, factor, value), f"{root}/{backbone}/{label}")
    return {"name": f"robustness/{backbone}/{label}", "backbone": backbone, "factor": factor,
            "value": value, "label": label, "params": {"backbone": backbone, "weights": "offline", **change},
            "out": out, "priority": priority, "rank": rank, "reused": out.startswith("artifacts/audit/"),
            "backend": made_with.get("backend"), "device": made_with.get("device")}


def grid(backbones=ORDER, root=ROOT) -> list[dict]:
    """Every point of the grid, the defaults and the reused audit runs included, in priority order.

    Each point: ``name``, ``backbone``, ``factor``, ``value``, ``label`` (``<factor>-<value>``),
    ``params`` (keyword arguments of :func:`xray_transfer.train.cross_validate`), ``out``
    (run folder), ``priority`` (0: Table 2's run; 1: the default on the GPU, then seeds; 2: learning
    rate 1e-3; 3: BatchNorm mode of VGG19, Xception and Inception ResNet v2; 4: the rest), ``rank``
    (order within a priority), ``reused`` (an audit run), and ``backend``/``device`` (what the
    point must be made with, or None).

    >>> [p["label"] for p in grid(["vgg19"])][:8]
    ['default', 'backend-jax', 'seed-1', 'seed-2', 'seed-3', 'learning_rate-0.001', 'batchnorm-batch_statistics', 'batchnorm-inference']
    """
    points = []
    for bb in backbones:
        get_backbone(bb)
        points.append({"name": f"runs/{bb}", "backbone": bb, "factor": "default", "value": None, "label": "default",
                       "params": {"backbone": bb, "weights": "offline"}, "out": f"artifacts/runs/{bb}",
                       "priority": 0, "rank": 0, "reused": True, "backend": None, "device": None})
        if bb in REMADE_ON_GPU:
            points.append(_point(bb, "backend", "jax", {}, 1, 0, root, backend="jax", device="gpu"))
        for s in SEEDS:
            points.append(_point(bb, "seed", s, {"seed": s}, 1, s, root))
        later = 1000 * (bb not in COMPLETE_FIRST)  # priority 4: these three backbones' choices first
        for s in SEEDS:
            points.append(_point(bb, "split_fixed", s, {"seed": s, "split_seed": DEFAULTS["seed"]}, 4, later + s, root))
        for i, (factor, param, values) in enumerate(CHOICES):
            if not applies(bb, param):
                continue
            for j, v in enumerate(values):
                if factor == "learning_rate" and v == 1e-3:
                    prio, rank = 2, 0
                elif factor == "batchnorm" and bb in BATCHNORM_FIRST:
                    prio, rank = 3, j
                else:
                    prio, rank = 4, later + 10 * (i + 1) + j
                points.append(_point(bb, factor, v, {param: v}, prio, rank, root))
    order = {bb: i for i, bb in enumerate(ORDER)}
    return sorted(points, key=lambda p: (p["priority"], p["rank"], order[p["backbone"]]))


def experiments(backbones=ORDER, root=ROOT) -> list[dict]:
    """The runs the grid still has to make (not Table 2's, not the reused audit runs), in priority
    order, as plain dicts ``name, params, out, priority, backend, device`` for the experiment registry.

    >>> jobs = experiments()
    >>> len(jobs), jobs[0]["out"], jobs[0]["priority"], jobs[0]["backend"]
    (78, 'artifacts/robustness/vgg19/backend-jax', 1, 'jax')
    """
    keys = ("name", "params", "out", "priority", "backend", "device")
    return [{k: p[k] for k in keys} for p in grid(backbones, root) if not p["reused"]]


# --------------------------------------------------------------------------- reading the runs
def differs_from_default(params: dict) -> dict:
    """The parameters of a run record that differ from :data:`xray_transfer.train.DEFAULTS`
    (weights and backbone aside; a parameter the record lacks had its default)."""
    out = {}
    for k, v in DEFAULTS.items():
        if k in ("weights", "backbone"):
            continue
        have = params.get(k, v)
        if k == "image_size":
            have, v = list(have), list(v)
        if k == "split_seed" and have == params.get("seed", DEFAULTS["seed"]):
            have = None
        if have != v:
            out[k] = have
    return out


def expected_change(point) -> dict:
    """The parameters a grid point should change from the default."""
    return {k: v for k, v in point["params"].items() if k not in ("backbone", "weights")}


def reference_weights(backbone: str) -> str | None:
    """SHA-256 of the starting weights registered for ``backbone`` (None: random weights)."""
    reg = OFFLINE_WEIGHTS.get(backbone)
    return reg.sha256 if reg else None


def devices(run) -> str:
    """'backend / device' of a run's folds, joined when folds differ."""
    seen = sorted({f"{f.get('backend', '?')} / {f.get('device', '?')}" for f in run["folds"]})
    if not seen:
        env = run["record"].get("environment", {})
        seen = [f"{env.get('backend', '?')} / {env.get('device', '?')}"]
    return "; ".join(seen)


def devices_words(devices: str) -> str:
    """:func:`devices` in the words of the book's other tables.

    >>> devices_words("jax / gpu: NVIDIA H200; tensorflow / cpu: AMD EPYC x2")
    'JAX on NVIDIA H200; TensorFlow on CPU, 2 cores'
    """
    pairs = [one.partition(" / ")[::2] for one in filter(None, devices.split("; "))]
    return "; ".join(f"{backend_name(b)} on {short_device(d)}" for b, d in pairs)


def load_grid(repo=".", manifest_sha256=None, points=None) -> list[dict]:
    """Each grid point with what is committed for it.

    Adds to every point: ``status`` ("complete", "k of n folds", "not run" or "dropped"),
    ``run`` (:func:`xray_transfer.results.load_run`, or None), ``summary``
    (:func:`xray_transfer.metrics.pooled` of a complete run, else None), ``devices`` and
    ``note``. A run is dropped, with a note saying why, when it was made on another dataset
    than ``manifest_sha256`` (default: the default run's), from other starting weights than
    the registered ones, or with other parameters than the point names.
    """
    repo = Path(repo)
    points = grid() if points is None else points
    out = []
    for p in points:
        p = {**p, "status": "not run", "run": None, "summary": None, "devices": "", "note": ""}
        path = repo / p["out"]
        if (path / "run.json").is_file():
            run = load_run(path)
            rec = run["record"]
            want_manifest = manifest_sha256
            if want_manifest is None:
                default = repo / f"artifacts/runs/{p['backbone']}/run.json"
                want_manifest = json.loads(default.read_text())["dataset"]["manifest_sha256"] \
                    if default.is_file() else None
            made = (rec.get("dataset") or {}).get("manifest_sha256")
            sha = (rec.get("weights") or {}).get("sha256")
            changed = differs_from_default(rec.get("params", {}))
            if want_manifest and made != want_manifest:
                p.update(status="dropped", note=f"made on other data (manifest {str(made)[:12]}…)")
            elif sha != reference_weights(p["backbone"]):
                p.update(status="dropped", note=f"made from other starting weights ({str(sha)[:12]}…)")
            elif changed != expected_change(p):
                p.update(status="dropped", note=f"changes {changed or 'nothing'} from the default, not "
                                                f"{expected_change(p)}")
            else:
                p.update(run=run, devices=devices(run))
                if is_complete(run):
                    p.update(status="complete", summary=pooled(run["folds"]))
                else:
                    p["status"] = f"{len(run['folds'])} of {rec['params']['n_splits']} folds"
        out.append(p)
    return out


# --------------------------------------------------------------------------- arithmetic
def chance_points(points, backbone) -> list[dict]:
    """The complete runs of ``backbone``'s default setting: the default (on any backend) and its
    seeds (random splits)."""
    return [p for p in points if p["backbone"] == backbone and p["factor"] in ("default", "backend", "seed")
            and p["summary"] is not None]


def baseline(points, backbone, devices=None) -> dict | None:
    """The complete default run of ``backbone`` to compare a run made on ``devices`` with:
    the one made with the same backend on the same device ('backend / device', see
    :func:`devices`) where there is one, else Table 2's run; None when neither is complete."""
    defaults = [p for p in points if p["backbone"] == backbone and p["factor"] in ("default", "backend")
                and p["summary"] is not None]
    same = [p for p in defaults if p["devices"] == devices]
    table2 = [p for p in defaults if p["factor"] == "default"]
    return (same or table2 or [None])[0]


def seed_band(points, backbone, metric) -> dict:
    """The spread that chance alone gives ``metric`` (percent) over the runs of the default setting.

    Returns ``n`` (complete runs: Table 2's, the default made on another backend, and the seeds), ``low``/``high`` (their range),
    ``sd`` (standard deviation over them, NaN with fewer than two) and ``half_range``.
    """
    vals = [100 * p["summary"][metric] for p in chance_points(points, backbone)]
    if not vals:
        return {"n": 0, "low": math.nan, "high": math.nan, "sd": math.nan, "half_range": math.nan}
    return {"n": len(vals), "low": min(vals), "high": max(vals),
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
            "half_range": (max(vals) - min(vals)) / 2}


def paired_change(default, other, metric, z_t=None) -> dict:
    """The change of ``metric`` (percentage points) from the default run to ``other``, paired by fold.

    Both must be complete runs over the same folds with the same test images. Returns the pooled
    change ``pooled``, the mean per-fold change ``mean`` with its 95 % t interval
    (``low``, ``high``) over the ``n`` folds, and ``paired`` (False, and NaN interval, when the
    folds differ: then only the pooled change is given).
    """
    from scipy import stats

    a, b = default["summary"], other["summary"]
    change = {"pooled": 100 * (b[metric] - a[metric])}
    same = [f["test_file"] for f in default["run"]["folds"]] == [f["test_file"] for f in other["run"]["folds"]]
    if not same:
        return {**change, "mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "paired": False}
    d = 100 * (np.asarray(b["per_fold"][metric], float) - np.asarray(a["per_fold"][metric], float))
    d = d[np.isfinite(d)]
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n > 1:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n))
    else:
        half = math.nan
    return {**change, "mean": mean, "low": mean - half, "high": mean + half, "n": n, "paired": True}


def seed_yardstick(points, backbone, metric) -> dict:
    """How far chance alone moved the default's ``metric`` (points): the largest change, from the
    default made on the same backend and device (:func:`baseline`), of any of its seed runs:
    ``split_fixed`` (initialisation and order only, paired by fold) and ``seed`` (split too).
    ``value`` is the larger; NaN where no seed run is complete."""
    out = {}
    for kind in ("split_fixed", "seed"):
        runs = [p for p in points if p["backbone"] == backbone and p["factor"] == kind and p["summary"] is not None]
        changes = [abs(100 * (p["summary"][metric] - base["summary"][metric])) for p in runs
                   for base in [baseline(points, backbone, p["devices"])] if base is not None]
        out[kind] = max(changes, default=math.nan)
        out[f"n_{kind}"] = len(runs)
    vals = [v for v in (out["split_fixed"], out["seed"]) if not math.isnan(v)]
    out["value"] = max(vals) if vals else math.nan
    return out


def effects(points, metrics=CURVE_METRICS) -> pd.DataFrame:
    """One row per complete one-choice run and metric: its paired change from the default beside the
    seed yardstick, and whether the change is real (see :data:`METHOD`).

    ``call``: "real" (interval excludes 0 and the change beats the yardstick), "within chance",
    or "no yardstick yet" (no complete seed run). Each run is compared with the default made with
    the same backend on the same device where there is one (:func:`baseline`); ``also_differs``
    names the run's backend and device where they still differ from its baseline's, and a real
    change of such a run is :data:`REAL_NOT_ALONE`: the choice is not all that differs.
    """
    rows = []
    for bb in ORDER:
        for p in points:
            if (p["backbone"] != bb or p["factor"] in ("default", "backend", "seed", "split_fixed")
                    or p["summary"] is None):
                continue
            default = baseline(points, bb, p["devices"])
            if default is None:
                continue
            also = "" if p["devices"] == default["devices"] else p["devices"]
            for m in metrics:
                ch = paired_change(default, p, m)
                yard = seed_yardstick(points, bb, m)
                change = ch["mean"] if ch["paired"] else ch["pooled"]
                if math.isnan(yard["value"]):
                    call = "no yardstick yet"
                elif ch["paired"] and not (ch["low"] <= 0 <= ch["high"]) and abs(change) > yard["value"]:
                    call = REAL_NOT_ALONE if also else "real"
                else:
                    call = "within chance"
                rows.append({"backbone": bb, "factor": p["factor"], "value": p["value"], "label": p["label"],
                             "metric": m, "default": 100 * default["summary"][m], "run": 100 * p["summary"][m],
                             "change_pooled": ch["pooled"], "change_mean": ch["mean"], "change_low": ch["low"],
                             "change_high": ch["high"], "paired": ch["paired"], "yardstick": yard["value"],
                             "call": call, "out": p["out"], "baseline": default["label"],
                             "also_differs": also})
    return pd.DataFrame(rows, columns=["backbone", "factor", "value", "label", "metric", "default", "run",
                                       "change_pooled", "change_mean", "change_low", "change_high", "paired",
                                       "yardstick", "call", "out", "baseline", "also_differs"])


def _inside(value, ci) -> bool:
    lo, hi = ci
    return 100 * lo <= value <= 100 * hi


def verdicts(points) -> pd.DataFrame:
    """A verdict for every cell of Table 2 (backbone x metric), computed from the complete runs.

    * "reproduced within chance": the paper's value lies inside the 95 % interval of the
      default or of one of its seed runs (the default setting, up to chance);
    * "reached with a stated choice": otherwise, inside the 95 % interval of a one-choice run
      (``choices`` names which, and the backend and device where they too differ from the default's);
    * "not reached by any setting tried";
    * "not judged": Table 2's run is not complete.

    ``n_chance`` and ``n_choices`` say how many complete runs the verdict rests on; ``nearest``
    is the run value closest to the paper's and, for a value not reached, ``side`` says where the
    runs lie: all above it ("ours higher"), all below ("ours lower") or "runs on both sides"
    (their intervals miss it between them).
    """
    rows = []
    for spec in TABLE1:
        bb = spec.key
        mine = [p for p in points if p["backbone"] == bb and p["summary"] is not None]
        chance = chance_points(points, bb)
        choices = [p for p in mine if p["factor"] not in ("default", "backend", "seed", "split_fixed")]
        has_default = any(p["factor"] == "default" for p in chance)
        for m in METRICS:
            pub = paper.TABLE2[bb][m]
            reached = [p for p in choices if _inside(pub, p["summary"]["ci"][m])]
            if not has_default:
                verdict = "not judged"
            elif any(_inside(pub, p["summary"]["ci"][m]) for p in chance):
                verdict = VERDICTS[0]
            elif reached:
                verdict = VERDICTS[1]
            else:
                verdict = VERDICTS[2]
            default = next((p for p in chance if p["factor"] == "default"), None)
            values = [100 * p["summary"][m] for p in mine]
            nearest = min(values, key=lambda x: abs(x - pub), default=math.nan)
            side = ("ours higher" if min(values) > pub else "ours lower" if max(values) < pub
                    else "runs on both sides") if values else ""
            rows.append({"backbone": bb, "network": spec.name, "metric": m, "paper": pub,
                         "default": 100 * default["summary"][m] if default else math.nan,
                         "verdict": verdict, "nearest": nearest,
                         "side": side if verdict == VERDICTS[2] else "",
                         "choices": [_choice_and_devices(points, p) for p in reached] if verdict == VERDICTS[1] else [],
                         "n_chance": len(chance), "n_choices": len(choices)})
    return pd.DataFrame(rows)


def _choice_and_devices(points, p) -> str:
    """The choice a run changed, and its backend and device where they differ from its baseline's."""
    base = baseline(points, p["backbone"], p["devices"])
    also = "" if base is None or base["devices"] == p["devices"] else f" (also differs: {devices_words(p['devices'])})"
    return choice_words(p) + also


def choice_words(point) -> str:
    """A grid point's change in words: 'learning rate 0.001', 'BatchNorm mode inference', 'seed 2'.

    >>> choice_words({"factor": "batchnorm", "value": "inference"})
    'BatchNorm mode inference'
    """
    if point["factor"] == "default":
        return FACTOR_NAMES["default"]
    if point["factor"] == "backend":
        return f"default, made with Keras on {str(point['value']).upper()}"
    return f"{FACTOR_NAMES[point['factor']]} {value_label(point['value'])}"


def missing(points) -> pd.DataFrame:
    """The grid points without a complete run, in priority order: what the chapter still lacks."""
    rows = [{"backbone": p["backbone"], "network": get_backbone(p["backbone"]).name, "label": p["label"],
             "change": choice_words(p), "priority": p["priority"], "status": p["status"], "note": p["note"],
             "out": p["out"]} for p in points if p["summary"] is None]
    return pd.DataFrame(rows, columns=["backbone", "network", "label", "change", "priority", "status", "note", "out"])


def coverage(points) -> dict:
    """Counts for the prose: points in all, complete, per priority (complete / all)."""
    by = {}
    for p in points:
        done, total = by.get(p["priority"], (0, 0))
        by[p["priority"]] = (done + (p["summary"] is not None), total + 1)
    return {"total": len(points), "complete": sum(p["summary"] is not None for p in points),
            "dropped": sum(p["status"] == "dropped" for p in points), "by_priority": dict(sorted(by.items()))}


# --------------------------------------------------------------------------- words for the landing page
def verdict_table(v: pd.DataFrame) -> pd.DataFrame:
    """Table 2's cells as verdicts: one row per network, one column per metric (short words)."""
    short = {VERDICTS[0]: "within chance", VERDICTS[1]: "with a choice", VERDICTS[2]: "not reached",
             "not judged": "not judged"}
    cell = v["verdict"].map(short) + v["side"].map(lambda s: f" ({s})" if s else "")
    out = v.assign(cell=cell).pivot(index="network", columns="metric", values="cell")
    out = out.reindex(index=[b.name for b in TABLE1 if b.name in set(v["network"])], columns=list(METRICS))
    out.columns = [COLUMN_NAMES[m] for m in out.columns]
    return out.reset_index().rename(columns={"network": "Network"})


def verdict_sentence(v: pd.DataFrame, points=None) -> str:
    """One sentence for the landing page and the README: how many of Table 2's cells each verdict has.

    >>> v = pd.DataFrame({"verdict": ["reproduced within chance", "not reached by any setting tried"],
    ...                   "n_chance": [1, 1]})
    >>> verdict_sentence(v)
    "Of the 2 cells of Table 2, 1 is reproduced within chance, 0 are reached with a stated choice and 1 is not reached by any setting tried (within chance: the paper's value lies inside the 95 % interval of the default run or a seed run; 1 such run per backbone at most so far)."
    """
    judged = v[v["verdict"] != "not judged"]
    counts = [(int((judged["verdict"] == k).sum()), k) for k in VERDICTS]
    parts = [f"{n} {'is' if n == 1 else 'are'} {k}" for n, k in counts]
    text = f"Of the {len(judged)} cells of Table 2, " + ", ".join(parts[:-1]) + f" and {parts[-1]}"
    most = int(v["n_chance"].max()) if len(v) else 0
    text += (f" (within chance: the paper's value lies inside the 95 % interval of the default run or a seed run; "
             f"{most} such run{'s' if most != 1 else ''} per backbone at most so far)")
    if len(judged) < len(v):
        text += f"; {len(v) - len(judged)} cells are not judged yet"
    if points is not None:
        c = coverage(points)
        text += f"; {c['complete']} of the grid's {c['total']} runs are complete"
    return text + "."


# --------------------------------------------------------------------------- the figure
def plot_specification_curve(points, backbone, metrics=CURVE_METRICS, width=7.4):
    """Specification curve of one backbone (Simonsohn et al. 2020): every complete run's
    ``metrics`` with 95 % intervals, sorted by the first metric; the default ringed, runs made on
    another backend or device than the default hollow, the seed band shaded, the paper's value
    dashed; beneath, a strip marking which choice each run changed.
    Returns the figure, or None when the backbone has no complete run."""
    import matplotlib.pyplot as plt

    runs = sorted([p for p in points if p["backbone"] == backbone and p["summary"] is not None],
                  key=lambda p: p["summary"][metrics[0]])
    if not runs:
        return None
    factors = [f for f in FACTOR_NAMES if any(p["factor"] == f for p in runs)]
    default_devices = next((p["devices"] for p in runs if p["factor"] == "default"), None)
    other = np.array([default_devices is not None and p["devices"] != default_devices for p in runs])
    x = np.arange(len(runs))
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(width, 1.9 * len(metrics) + 0.3 * len(factors) + 0.6),
                             sharex=True, gridspec_kw={"height_ratios": [3] * len(metrics) + [0.45 * len(factors)]})
    for ax, m in zip(axes, metrics):
        band = seed_band(points, backbone, m)
        if band["n"] > 1:
            ax.axhspan(band["low"], band["high"], color="tab:green", alpha=0.15, lw=0,
                       label=f"seed band ({band['n']} seeds)")
        ax.axhline(paper.TABLE2[backbone][m], color="black", ls="--", lw=1, label="paper")
        vals = np.array([100 * p["summary"][m] for p in runs])
        lo = np.array([100 * p["summary"]["ci"][m][0] for p in runs])
        hi = np.array([100 * p["summary"]["ci"][m][1] for p in runs])
        err = np.clip([vals - lo, hi - vals], 0, None)
        ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="tab:blue", elinewidth=1, capsize=0)
        ax.plot(x[~other], vals[~other], "o", ms=5, color="tab:blue")
        if other.any():  # made on another backend or device than the default: hollow
            ax.plot(x[other], vals[other], "o", ms=5, mfc="white", mec="tab:blue",
                    label="other backend or device")
        d = [i for i, p in enumerate(runs) if p["factor"] == "default"]
        if d:
            ax.plot(x[d], vals[d], "o", ms=9, mfc="none", mec="tab:red", mew=1.5, label="default (Table 2)")
        ax.set_ylabel(f"{METRIC_NAMES[m]} (%)", fontsize=9)
        ax.set_ylim(-2, 102)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(frameon=False, fontsize=8, ncol=2, loc="best")
    strip = axes[-1]
    for i, p in enumerate(runs):
        strip.plot(i, factors.index(p["factor"]), "s", color="black" if p["factor"] != "default" else "tab:red", ms=5)
    strip.set_yticks(range(len(factors)), [FACTOR_NAMES[f] for f in factors], fontsize=8)
    strip.set_ylim(len(factors) - 0.5, -0.5)
    strip.set_xticks(x, [value_label(p["value"]) if p["value"] is not None else "" for p in runs], fontsize=7,
                     rotation=90)
    strip.set_xlim(-0.6, len(runs) - 0.4)
    strip.grid(axis="x", alpha=0.2)
    strip.set_xlabel("runs, sorted by " + METRIC_NAMES[metrics[0]] + "; the strip says what each changed", fontsize=9)
    axes[0].set_title(get_backbone(backbone).name, fontsize=10)
    fig.tight_layout()
    return fig


def plot_nothing_yet(text, width=7.4):
    """A small figure that says, in place of a curve, that there is nothing to draw yet."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, 0.8))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, color="grey")
    ax.set_axis_off()
    return fig


def landing(repo=".") -> tuple[str, pd.DataFrame]:
    """The landing page's and README's quote of the verdicts: one sentence and the small table
    (:func:`verdict_sentence`, :func:`verdict_table`), from the committed runs under ``repo``."""
    points = load_grid(repo)
    v = verdicts(points)
    return verdict_sentence(v, points), verdict_table(v)
