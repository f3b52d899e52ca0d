"""Plain ``model.fit`` against the fast path (cached frozen outputs), measured side by side.

Both paths train the same network from the same initial weights on the same
batches; only where the frozen layers' outputs come from differs. Weight values do
not change speed, so the benchmark uses random initialisation for every backbone.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .data import load_dataset
from .models import TABLE1
from .provenance import environment
from .train import Trainer, make_config, make_folds


def time_path(dataset, backbone, fast, epochs=2, seed=0) -> dict:
    """Set up a trainer and train one fold of a 10-fold split for ``epochs``; return timings."""
    cfg = make_config(backbone=backbone, epochs=epochs, fast=fast, seed=seed)
    fold_of = make_folds(dataset.labels, cfg["n_splits"], seed)
    train_idx, test_idx = np.flatnonzero(fold_of != 0), np.flatnonzero(fold_of == 0)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, dataset.images)
    setup = time.perf_counter() - t0
    res = trainer.fit_fold(train_idx, test_idx, dataset.labels, fold_seed=seed)
    secs = res["history"]["seconds"]
    steady = float(np.mean(secs[1:])) if len(secs) > 1 else secs[0]
    return {"setup_seconds": setup, "feature_seconds": trainer.feature_seconds,
            "first_epoch_seconds": secs[0], "steady_epoch_seconds": steady,
            "steady_images_per_second": len(train_idx) / steady,
            "fold_seconds": setup + sum(secs) + res["predict_seconds"],
            "n_train": int(len(train_idx)), "epochs": epochs}


def run_benchmark(dataset_dir, output_dir, backbones=None, epochs=2, limit=None) -> dict:
    """Time both paths for each backbone in one process; write ``benchmark.json``."""
    ds = load_dataset(dataset_dir, limit=limit)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = backbones or [b.key for b in TABLE1]
    result = {"environment": environment(), "n_images": len(ds), "epochs": epochs, "fold": "1 of 10",
              "manifest_sha256": ds.manifest_sha256, "weights": "none (speed does not depend on values)",
              "backbones": {}}
    for key in keys:
        row = {}
        for name, fast in (("plain", False), ("fast", True)):
            row[name] = time_path(ds, key, fast, epochs)
            print(f"{key:22s} {name:5s} steady {row[name]['steady_images_per_second']:8.1f} img/s, "
                  f"fold {row[name]['fold_seconds']:7.1f} s", flush=True)
        row["steady_speedup"] = row["plain"]["steady_epoch_seconds"] / row["fast"]["steady_epoch_seconds"]
        row["fold_speedup"] = row["plain"]["fold_seconds"] / row["fast"]["fold_seconds"]
        print(f"{key:22s} speed-up: steady x{row['steady_speedup']:.1f}, fold x{row['fold_speedup']:.1f}", flush=True)
        result["backbones"][key] = row
        tmp = out / ".benchmark.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out / "benchmark.json")
    return result
