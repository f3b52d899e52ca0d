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

With ``together`` (Keras on JAX) a third path, **together**, trains every fold of the split
at once as one compiled program (:func:`xray_transfer.fold_parallel.fit_folds`: the fold
models vmapped, the run's inputs resident on the device) for ``epochs`` epochs, from our
trainer's set-up: the levers "the ten folds as one program" and "the dataset on the device",
measured in the same process as the two others.

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

Each path's ``throughput`` (:func:`throughput`) divides XLA's FLOP count of the protocol
(``artifacts/benchmark/flops.json``, :mod:`xray_transfer.flops`) by the measured seconds, and
that by the chip's dense peak for the arithmetic used, where the count's settings are the
benchmark's and the chip's peak is known.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .data import Dataset, load_dataset
from .models import TABLE1, build_model, preprocess_input
from .provenance import environment, portable_path
from .train import DEFAULTS, Trainer, make_config, make_folds, resize_images

#: XLA's FLOP counts (``python -m xray_transfer.flops``), read by :func:`run_benchmark`.
FLOPS_JSON = Path(__file__).resolve().parents[2] / "artifacts" / "benchmark" / "flops.json"

#: Fields of one path's timings in ``benchmark.json`` (the same on a CPU and a GPU).
PATH_FIELDS = ("setup_seconds", "feature_seconds", "first_epoch_seconds", "steady_epoch_seconds",
               "steady_images_per_second", "fold_seconds", "later_fold_seconds", "protocol_seconds",
               "n_train", "epochs", "fast_path")
#: Fields of one backbone's row besides the two paths.
ROW_FIELDS = ("steady_speedup", "fold_speedup", "protocol_speedup")
#: Fields of the ``together`` path, where a row has one (its epochs train every fold: ``n_train``
#: counts the training images of all ``n_folds``).
TOGETHER_FIELDS = ("setup_seconds", "feature_seconds", "first_epoch_seconds", "steady_epoch_seconds",
                   "steady_images_per_second", "protocol_seconds", "n_train", "n_folds", "epochs", "fast_path")


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


def time_plain(dataset, backbone, epochs=2, n_splits=10, protocol_epochs=10, seed=0, image_size=(200, 266),
               precision="float32") -> dict:
    """Plain ``model.fit``: for each fold a fresh model, compiled and fitted on the raw images."""
    import keras

    cfg = make_config(backbone=backbone, epochs=epochs, seed=seed, image_size=image_size, precision=precision)
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
        model = build_model(backbone, input_shape=(h, w, 3), weights="none", seed=seed, precision=precision)
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


def time_ours(dataset, backbone, epochs=2, n_splits=10, protocol_epochs=10, seed=0, image_size=(200, 266),
              precision="float32") -> dict:
    """Our :class:`~xray_transfer.train.Trainer` (fast path where it pays), over the same folds."""
    cfg = make_config(backbone=backbone, epochs=epochs, seed=seed, image_size=image_size, precision=precision)
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


def time_together(dataset, backbone, epochs=2, n_splits=10, protocol_epochs=10, seed=0, image_size=(200, 266),
                  precision="float32") -> dict:
    """Every fold of the split at once (:func:`xray_transfer.fold_parallel.fit_folds`), from our set-up.

    The protocol time is the set-up, the measured epochs (the first compiles) and the
    protocol's other epochs at the measured seconds of a later one (prediction of the held-out
    folds included). Keras on JAX only.
    """
    from .fold_parallel import fit_folds

    cfg = make_config(backbone=backbone, epochs=epochs, seed=seed, image_size=image_size, precision=precision)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset.images)
    setup = time.perf_counter() - t0
    fold_of = make_folds(dataset.labels, n_splits, seed)
    splits = [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in range(n_splits)]
    watch = _Stopwatch()
    res = fit_folds(trainer, splits, dataset.labels, [seed * 1000 + k for k in range(n_splits)], progress=watch)
    wall = time.perf_counter() - watch.times[0]
    fit, walls = res[0]["history"]["seconds"], watch.epoch_walls()
    tail = slice(1, None) if len(fit) > 1 else slice(None)
    steady, epoch_wall = float(np.mean(fit[tail])), float(np.mean(walls[tail]))
    n_train = sum(len(tr) for tr, _ in splits)
    return {"setup_seconds": setup, "feature_seconds": trainer.feature_seconds, "first_epoch_seconds": fit[0],
            "steady_epoch_seconds": steady, "steady_images_per_second": n_train / steady,
            "protocol_seconds": setup + wall + (protocol_epochs - len(fit)) * epoch_wall,
            "n_train": n_train, "n_folds": n_splits, "epochs": len(fit), "fast_path": trainer.fast}


def _out_of_memory(error: Exception) -> bool:
    """Whether ``error`` is the device running out of memory (XLA's RESOURCE_EXHAUSTED)."""
    return isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error)


def run_benchmark(dataset, output_dir, backbones=None, epochs=2, limit=None, protocol_epochs=10,
                  n_splits=10, image_size=(200, 266), precision="float32", flops_json=FLOPS_JSON,
                  together=False) -> dict:
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
    precision : {"float32", "mixed_bfloat16"}, default "float32"
        The arithmetic of both paths (:data:`xray_transfer.models.PRECISIONS`).
    flops_json : path, default ``artifacts/benchmark/flops.json``
        XLA's FLOP counts; each path's ``throughput`` (:func:`throughput`) where a count with
        the benchmark's settings is there.
    together : bool, default False
        Also time the ``together`` path (:func:`time_together`; Keras on JAX only), and each
        row's ``together_speedup``: ours' protocol seconds over the together path's. Where the
        device runs out of memory with every fold at once, the row says so (``together.
        not_measured``) and keeps its two other paths.
    """
    from .safety import Refused, check_writable

    if together:  # before any work
        import keras
        if keras.backend.backend() != "jax":
            raise RuntimeError(f"the together path (every fold at once) is a JAX program, and Keras here runs on "
                               f"{keras.backend.backend()}; set KERAS_BACKEND=jax, or leave the together path out")
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
    flops_record = _read_json(flops_json)
    result = {"environment": environment(), "n_images": len(ds), "epochs": epochs, "image_size": list(image_size),
              "batch_size": DEFAULTS["batch_size"], "batchnorm": DEFAULTS["batchnorm"], "precision": precision,
              **_arithmetic_settings(),
              "flops_counts": None if flops_record is None else {
                  "file": portable_path(flops_json), "sha256": _sha256(flops_json),
                  "commit": flops_record.get("environment", {}).get("git", {}).get("commit")},
              "fold": f"folds 1 and 2 of {n_splits}", "n_splits": n_splits, "protocol_epochs": protocol_epochs,
              "manifest_sha256": ds.manifest_sha256, "weights": "none (speed does not depend on values)",
              "persistent_compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
              "paths": {"plain": "per fold: build, compile, model.fit on the raw images, evaluate, predict",
                        "fast": "our Trainer: one model reset per fold, frozen outputs cached where the "
                                "cutoff is deep, else uint8 images scaled by the network; padded prediction "
                                "batches"},
              "backbones": {}}
    if together:
        result["paths"]["together"] = (f"every fold of the split at once: our trainer's set-up, the {n_splits} fold "
                                       "models as one vmapped, compiled JAX program, the inputs on the device")
    earlier = _earlier_rows(out / "benchmark.json", result)
    for key in keys:
        if key in earlier:
            print(f"{key:22s} measured before, at {earlier[key].get('measured_utc', '?')}: kept", flush=True)
            result["backbones"][key] = earlier[key]
            continue
        row = {"plain": time_plain(ds, key, epochs, n_splits, protocol_epochs, image_size=image_size, precision=precision),
               "fast": time_ours(ds, key, epochs, n_splits, protocol_epochs, image_size=image_size, precision=precision)}
        for name in ("plain", "fast"):
            print(f"{key:22s} {name:5s} steady {row[name]['steady_images_per_second']:8.1f} img/s, "
                  f"fold {row[name]['fold_seconds']:7.1f} s, protocol {row[name]['protocol_seconds']:8.1f} s",
                  flush=True)
        row["steady_speedup"] = row["plain"]["steady_epoch_seconds"] / row["fast"]["steady_epoch_seconds"]
        row["fold_speedup"] = row["plain"]["fold_seconds"] / row["fast"]["fold_seconds"]
        row["protocol_speedup"] = row["plain"]["protocol_seconds"] / row["fast"]["protocol_seconds"]
        print(f"{key:22s} speed-up: steady x{row['steady_speedup']:.1f}, fold x{row['fold_speedup']:.1f}, "
              f"protocol x{row['protocol_speedup']:.1f}", flush=True)
        if together:
            try:
                row["together"] = time_together(ds, key, epochs, n_splits, protocol_epochs, image_size=image_size,
                                                precision=precision)
            except Exception as e:  # noqa: BLE001 -- only running out of memory is recorded, anything else raised
                if not _out_of_memory(e):
                    raise
                row["together"] = {"not_measured": f"out of device memory with {n_splits} folds at once: "
                                                   f"{str(e).splitlines()[0][:300]}"}
                print(f"{key:22s} together: {row['together']['not_measured']}", flush=True)
            else:
                row["together_speedup"] = row["fast"]["protocol_seconds"] / row["together"]["protocol_seconds"]
                print(f"{key:22s} together steady {row['together']['steady_images_per_second']:8.1f} img/s, protocol "
                      f"{row['together']['protocol_seconds']:8.1f} s: x{row['together_speedup']:.1f} over ours",
                      flush=True)
        for name in [p for p in ("plain", "fast", "together") if "protocol_seconds" in row.get(p, {})]:
            row[name]["throughput"] = throughput(result, key, name, row[name], flops_record)
            t = row[name]["throughput"]
            if t["protocol_tflops_per_second"] is not None:
                share = "" if t["share_of_peak"] is None else f", {t['share_of_peak']:.1%} of the {t['arithmetic']} peak"
                print(f"{key:22s} {name:5s} {t['protocol_tflops_per_second']:.1f} TFLOP/s over the protocol{share}",
                      flush=True)
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
            "persistent_compilation_cache", "paths", "precision", "flops_counts")
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
        if "together" in row and "not_measured" not in row["together"]:
            missing += [f"{key}.together.{k}" for k in TOGETHER_FIELDS + ("throughput",) if k not in row["together"]]
            missing += [f"{key}.together_speedup"] * ("together_speedup" not in row)
    if missing:
        raise ValueError(f"benchmark record lacks {', '.join(missing)}; re-run `make benchmark`")


# ---------------------------------------------------------------- FLOP/s against the chip's limit


def _read_json(path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return None


def _sha256(path) -> str:
    from .data import sha256_file
    return sha256_file(path)


def _arithmetic_settings() -> dict:
    """What decides whether float32 runs on TF32 tensor cores: JAX's default matmul precision
    (None: XLA's default) and ``NVIDIA_TF32_OVERRIDE``."""
    import keras

    matmul = None
    if keras.backend.backend() == "jax":
        import jax
        matmul = jax.config.jax_default_matmul_precision
    return {"matmul_precision": matmul, "tf32_override": os.environ.get("NVIDIA_TF32_OVERRIDE")}


def settings_of(record: dict) -> tuple[dict, list[str]]:
    """The settings a benchmark record's times are for, and notes on those it did not record.

    Records made before batch size, BatchNorm mode and precision were written used the code's
    defaults then (64, "keras2", float32): they are filled in and named in the notes.
    """
    notes, out = [], {}
    for k, default in (("batch_size", 64), ("batchnorm", "keras2"), ("precision", "float32")):
        out[k] = record.get(k)
        if out[k] is None:
            out[k] = default
            notes.append(f"{k.replace('_', ' ')} not recorded: {default}, the code's default at that commit")
    out.update(image_size=list(record["image_size"]), n_images=record["n_images"], n_splits=record["n_splits"],
               protocol_epochs=record["protocol_epochs"])
    return out, notes


def count_for(flops_record: dict, backbone: str, settings: dict, fast_path: bool) -> tuple[dict | None, str]:
    """The row of ``flops.json`` that counts a benchmark path, or None and why not.

    The count must be of the same backbone, BatchNorm mode, path (fast or whole network),
    image size and batch size as the timing.
    """
    rows = [r for r in (flops_record or {}).get("rows", {}).values()
            if r.get("backbone") == backbone and r.get("batchnorm") == settings["batchnorm"]]
    if not rows:
        return None, f"no FLOP count of {backbone} with batchnorm={settings['batchnorm']!r}"
    rows = [r for r in rows if r.get("fast_path") == fast_path]
    if not rows:
        return None, f"no FLOP count of {backbone}'s {'fast path' if fast_path else 'whole network'}"
    for r in rows:
        if list(r["image_size"]) == settings["image_size"] and r["batch_size"] == settings["batch_size"]:
            return r, ""
    r = rows[0]
    return None, (f"the FLOP count is for {r['image_size'][0]}x{r['image_size'][1]} images in batches of "
                  f"{r['batch_size']}, the timing for {settings['image_size'][0]}x{settings['image_size'][1]} in "
                  f"batches of {settings['batch_size']}")


def throughput(record: dict, backbone: str, path: str, timing: dict, flops_record: dict | None) -> dict:
    """Achieved TFLOP/s of one path of a benchmark row, and its share of the chip's dense peak.

    ``protocol_flops`` (:func:`xray_transfer.flops.protocol_flops` for the record's images,
    folds and protocol epochs: plain fit predicts the held-out fold once more than ours) over
    the path's ``protocol_seconds`` gives ``protocol_tflops_per_second``; the training steps
    of one epoch over ``steady_epoch_seconds`` give ``steady_tflops_per_second``. Shares
    (``share_of_peak``, ``steady_share_of_peak``) divide by :func:`xray_transfer.flops.peak`,
    None where the chip's peak is not known. Everything is None, with a ``note`` saying why,
    when ``flops_record`` has no count with the record's settings.
    """
    from .flops import peak, protocol_flops

    settings, notes = settings_of(record)
    env = record["environment"]
    limit = peak(env["device"], env["backend"], settings["precision"], record.get("matmul_precision"),
                 record.get("tf32_override"))
    out = {"protocol_flops": None, "protocol_tflops_per_second": None, "steady_tflops_per_second": None,
           "peak_tflops": limit["peak_tflops"], "arithmetic": limit["arithmetic"], "share_of_peak": None,
           "steady_share_of_peak": None, "notes": notes + [limit["note"]]}
    row, why = count_for(flops_record, backbone, settings, bool(timing["fast_path"]))
    if row is None:
        out["notes"].append(why)
        return out
    total = protocol_flops(row, settings["n_images"], settings["n_splits"], settings["protocol_epochs"],
                           predictions=settings["protocol_epochs"] + (path == "plain"))
    steady = timing["n_train"] / settings["batch_size"] * row["train_step"]
    out.update(protocol_flops=total, protocol_tflops_per_second=total / timing["protocol_seconds"] / 1e12,
               steady_tflops_per_second=steady / timing["steady_epoch_seconds"] / 1e12)
    if limit["peak_tflops"]:
        out["share_of_peak"] = out["protocol_tflops_per_second"] / limit["peak_tflops"]
        out["steady_share_of_peak"] = out["steady_tflops_per_second"] / limit["peak_tflops"]
    return out
