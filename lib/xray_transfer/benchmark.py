"""Our trainer against a plain Keras ``model.fit`` of the same model on the same data.

Per backbone, both paths train Table 1's network from the same initial weights on the
same folds of the same images, in one process:

- **plain**: what a straightforward script does for each fold: build the model,
  ``compile``, ``model.fit(x, y, epochs=..., shuffle=True)`` on the raw images, evaluate
  and predict the held-out fold;
- **ours** (key ``fast`` in the record): :class:`xray_transfer.train.Trainer`, built once
  per run and reset per fold, training the tail on cached frozen outputs where the cutoff
  is deep (the fast path); elsewhere the whole network trains on the uint8 images, which
  it scales itself. Held-out images are predicted in full, padded batches.

Each path runs the first two folds of a 10-fold split for ``epochs`` epochs. The first
fold carries the set-up and compilation, the second shows what every later fold costs.
From these measured parts the record gives the steady speed (training images/s in a later
epoch of the second fold), and each path's time for the whole protocol (``n_splits``
folds of ``protocol_epochs`` epochs): set-up, the first fold, and ``n_splits - 1`` times
the second fold, each fold lengthened to ``protocol_epochs`` at its measured seconds per
later epoch (evaluation included); then their ratios. Weight values do not change speed,
so both paths start from random weights. Run it in a process of its own without JAX's
persistent compilation cache (``gpu_plan`` does), so that plain ``model.fit`` compiles as in
anyone's script. The record has the same fields on every device
(:data:`PATH_FIELDS`, :data:`ROW_FIELDS`).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .data import Dataset, load_dataset
from .models import TABLE1, build_model, preprocess_input
from .provenance import environment
from .train import Trainer, make_config, make_folds, resize_images

#: Fields of one path's timings in ``benchmark.json`` (the same on a CPU and a GPU).
PATH_FIELDS = ("setup_seconds", "feature_seconds", "first_epoch_seconds", "steady_epoch_seconds",
               "steady_images_per_second", "fold_seconds", "later_fold_seconds", "protocol_seconds",
               "n_train", "epochs", "fast_path")
#: Fields of one backbone's row besides the two paths.
ROW_FIELDS = ("steady_speedup", "fold_speedup", "protocol_speedup")


def _split(dataset, n_splits, seed):
    fold_of = make_folds(dataset.labels, n_splits, seed)
    return [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in (0, 1)]


class _Stopwatch:
    """Stands in for a progress bar: notes the time of every finished epoch (training and evaluation)."""

    def __init__(self):
        self.times = [time.perf_counter()]

    def set_postfix(self, **_):
        pass

    def update(self, _=1):
        self.times.append(time.perf_counter())

    def epoch_walls(self):
        return list(np.diff(self.times))


def _summary(setup, first, later, n_splits, protocol_epochs, feature_seconds, fast):
    """One path's timings from its set-up and two measured folds.

    ``first`` and ``later`` hold ``fit`` (seconds of training per epoch), ``walls`` (seconds
    per epoch with evaluation) and ``wall`` (the fold's seconds, set-up of the fold included).
    """
    tail = slice(1, None) if len(later["fit"]) > 1 else slice(None)
    steady = float(np.mean(later["fit"][tail]))
    epoch_wall = float(np.mean(later["walls"][tail]))
    more = protocol_epochs - len(later["fit"])  # epochs the protocol has beyond the measured ones
    later_fold = later["wall"] + more * epoch_wall
    return {"setup_seconds": setup, "feature_seconds": feature_seconds, "first_epoch_seconds": first["fit"][0],
            "steady_epoch_seconds": steady, "steady_images_per_second": first["n_train"] / steady,
            "fold_seconds": setup + first["wall"], "later_fold_seconds": later_fold,
            "protocol_seconds": setup + first["wall"] + more * epoch_wall + (n_splits - 1) * later_fold,
            "n_train": int(first["n_train"]), "epochs": len(later["fit"]), "fast_path": fast}


def time_plain(dataset, backbone, epochs=2, n_splits=10, protocol_epochs=10, seed=0, image_size=(200, 266)) -> dict:
    """Plain ``model.fit``: for each fold a fresh model, compiled and fitted on the raw images."""
    import keras

    cfg = make_config(backbone=backbone, epochs=epochs, seed=seed, image_size=image_size)
    h, w = cfg["image_size"]
    t0 = time.perf_counter()
    x = preprocess_input(backbone, dataset.images)
    setup = time.perf_counter() - t0
    folds = []
    for train_idx, test_idx in _split(dataset, n_splits, seed):
        marks = {"begin": [], "test": [], "end": []}

        def mark(name):
            return lambda *_: marks[name].append(time.perf_counter())

        t0 = time.perf_counter()
        model = build_model(backbone, input_shape=(h, w, 3), weights="none", seed=seed)
        model.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        stamp = keras.callbacks.LambdaCallback(on_epoch_begin=mark("begin"), on_epoch_end=mark("end"))
        stamp.on_test_begin = mark("test")
        model.fit(x[train_idx], dataset.labels[train_idx], batch_size=cfg["batch_size"], epochs=epochs,
                  shuffle=True, verbose=0, callbacks=[stamp],
                  validation_data=(x[test_idx], dataset.labels[test_idx]))
        model.predict(x[test_idx], batch_size=cfg["batch_size"], verbose=0)
        folds.append({"fit": [t - b for b, t in zip(marks["begin"], marks["test"])],
                      "walls": [e - b for b, e in zip(marks["begin"], marks["end"])],
                      "wall": time.perf_counter() - t0, "n_train": len(train_idx)})
        del model
    return _summary(setup, folds[0], folds[1], n_splits, protocol_epochs, 0.0, False)


def time_ours(dataset, backbone, epochs=2, n_splits=10, protocol_epochs=10, seed=0, image_size=(200, 266)) -> dict:
    """Our :class:`~xray_transfer.train.Trainer` (fast path where it pays), over the same folds."""
    cfg = make_config(backbone=backbone, epochs=epochs, seed=seed, image_size=image_size)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset.images)
    setup = time.perf_counter() - t0
    folds = []
    for k, (train_idx, test_idx) in enumerate(_split(dataset, n_splits, seed)):
        watch = _Stopwatch()
        res = trainer.fit_fold(train_idx, test_idx, dataset.labels, fold_seed=seed * 1000 + k, progress=watch)
        folds.append({"fit": res["history"]["seconds"], "walls": watch.epoch_walls(),
                      "wall": time.perf_counter() - watch.times[0], "n_train": len(train_idx)})
    return _summary(setup, folds[0], folds[1], n_splits, protocol_epochs, trainer.feature_seconds, trainer.fast)


def run_benchmark(dataset, output_dir, backbones=None, epochs=2, limit=None, protocol_epochs=10,
                  n_splits=10, image_size=(200, 266)) -> dict:
    """Time both paths for each backbone in one process; write ``benchmark.json`` after each backbone.

    A ``benchmark.json`` already in ``output_dir`` with the same settings, dataset, device,
    backend and commit keeps its rows, and only the backbones it lacks are measured (a GPU
    call's time limit can stop the benchmark between rows). Each row records when it was
    measured (``measured_utc``); both paths of a row are always timed in one process.

    Parameters
    ----------
    dataset : path or xray_transfer.data.Dataset
        Dataset folder or ``.npz`` pack (or a loaded dataset).
    output_dir : path
        Gets ``benchmark.json`` (written atomically). A ``benchmark.json`` there that is
        not a record of this function is refused, before any work.
    backbones : list of str, optional
        Default: all five of Table 1.
    epochs : int, default 2
        Epochs of each measured fold (at least 2: the second is the steady one).
    limit : int, optional
        A stratified subset of this many images.
    protocol_epochs, n_splits : int, default 10, 10
        The protocol the whole-protocol times are for.
    image_size : (int, int), default (200, 266)
        Input size; the images are resized to it (smaller only for tests).
    """
    from .safety import Refused, check_writable

    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs!r}")
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise Refused(f"{out}: exists and is not a folder; choose another output folder")
    if (out / "benchmark.json").exists() and not _is_benchmark(out / "benchmark.json"):
        raise Refused(f"{out / 'benchmark.json'}: exists and is not a record of `xray-transfer benchmark`, so it "
                      "is left alone; choose another output folder")
    check_writable(out / "benchmark.json")
    ds = dataset if isinstance(dataset, Dataset) else load_dataset(dataset, limit=limit)
    ds = Dataset(resize_images(ds.images, image_size), ds.labels, ds.manifest, ds.manifest_sha256)
    keys = backbones or [b.key for b in TABLE1]
    result = {"environment": environment(), "n_images": len(ds), "epochs": epochs, "image_size": list(image_size),
              "fold": f"folds 1 and 2 of {n_splits}", "n_splits": n_splits, "protocol_epochs": protocol_epochs,
              "manifest_sha256": ds.manifest_sha256, "weights": "none (speed does not depend on values)",
              "persistent_compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
              "paths": {"plain": "per fold: build, compile, model.fit on the raw images, evaluate, predict",
                        "fast": "our Trainer: one model reset per fold, frozen outputs cached where the "
                                "cutoff is deep, else uint8 images scaled by the network; padded prediction "
                                "batches"},
              "backbones": {}}
    earlier = _earlier_rows(out / "benchmark.json", result)
    for key in keys:
        if key in earlier:
            print(f"{key:22s} measured before, at {earlier[key].get('measured_utc', '?')}: kept", flush=True)
            result["backbones"][key] = earlier[key]
            continue
        row = {"plain": time_plain(ds, key, epochs, n_splits, protocol_epochs, image_size=image_size),
               "fast": time_ours(ds, key, epochs, n_splits, protocol_epochs, image_size=image_size)}
        for name in ("plain", "fast"):
            print(f"{key:22s} {name:5s} steady {row[name]['steady_images_per_second']:8.1f} img/s, "
                  f"fold {row[name]['fold_seconds']:7.1f} s, protocol {row[name]['protocol_seconds']:8.1f} s",
                  flush=True)
        row["steady_speedup"] = row["plain"]["steady_epoch_seconds"] / row["fast"]["steady_epoch_seconds"]
        row["fold_speedup"] = row["plain"]["fold_seconds"] / row["fast"]["fold_seconds"]
        row["protocol_speedup"] = row["plain"]["protocol_seconds"] / row["fast"]["protocol_seconds"]
        print(f"{key:22s} speed-up: steady x{row['steady_speedup']:.1f}, fold x{row['fold_speedup']:.1f}, "
              f"protocol x{row['protocol_speedup']:.1f}", flush=True)
        row["measured_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["backbones"][key] = row
        tmp = out / ".benchmark.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out / "benchmark.json")
    return result


def _earlier_rows(path: Path, result: dict) -> dict:
    """The rows of an earlier ``benchmark.json`` made with the same settings, data, device, backend and
    commit as ``result``; empty otherwise."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = ("n_images", "epochs", "image_size", "n_splits", "protocol_epochs", "manifest_sha256",
            "persistent_compilation_cache", "paths")
    was, now = old.get("environment", {}), result["environment"]
    if all(old.get(k) == result[k] for k in same) and all(was.get(k) == now[k] for k in ("device", "backend", "git")):
        return old.get("backbones", {})
    return {}


def _is_benchmark(path: Path) -> bool:
    try:
        check_record(json.loads(path.read_text()))
        return True
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def check_record(record: dict) -> None:
    """Raise ValueError naming what a ``benchmark.json`` record lacks (the same fields on every device)."""
    missing = [k for k in ("environment", "n_images", "epochs", "n_splits", "protocol_epochs", "backbones")
               if k not in record]
    missing += [f"environment.{k}" for k in ("backend", "device", "versions") if k not in record.get("environment", {})]
    for key, row in record.get("backbones", {}).items():
        missing += [f"{key}.{k}" for k in ROW_FIELDS if k not in row]
        for path in ("plain", "fast"):
            missing += [f"{key}.{path}.{k}" for k in PATH_FIELDS if k not in row.get(path, {})]
    if missing:
        raise ValueError(f"benchmark record lacks {', '.join(missing)}; re-run `make benchmark`")
