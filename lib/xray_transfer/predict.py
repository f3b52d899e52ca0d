"""Apply a trained model to any folder of X-rays: letterbox like the training data, write probabilities.

A model is the ``.keras`` file written by :func:`xray_transfer.train.fit_final`; the
JSON record beside it names the backbone (hence the input scaling) and input size.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from .data import CLASSES
from .preprocess import ImageReadError, letterbox, read_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}


def load_trained(model_path):
    """Load a ``.keras`` model and its record; checks the file against the recorded SHA-256."""
    import keras

    from .data import sha256_file

    model_path = Path(model_path)
    record_path = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model; train one with `make final-models` "
                                "(or xray_transfer.train.fit_final)")
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: the model's record is missing (it names the backbone)")
    record = json.loads(record_path.read_text())
    digest = sha256_file(model_path)
    if digest != record["model_sha256"]:
        raise ValueError(f"{model_path}: SHA-256 {digest[:12]}… differs from its record "
                         f"{record['model_sha256'][:12]}…; the file was changed or is not this run's")
    return keras.models.load_model(model_path, compile=False), record


def list_images(folder) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted), by suffix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def predict_folder(model_path, folder, out_csv, batch_size=32, on_error="skip") -> dict:
    """Write ``out_csv``: one row per image with the three class probabilities and the call.

    Unreadable files are skipped and listed in the CSV with an ``error`` column
    (``on_error="skip"``, the default), or stop the run (``on_error="raise"``).
    The CSV is written atomically. Returns counts.
    """
    from .models import preprocess_input

    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    model, record = load_trained(model_path)
    h, w = record["params"]["image_size"]
    rows, batch, names = [], [], []

    def flush():
        if not batch:
            return
        x = preprocess_input(record["params"]["backbone"], np.stack(batch))
        probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0))
        for name, p in zip(names, probs):
            rows.append({"file": name, **{f"p_{c}": f"{v:.6f}" for c, v in zip(CLASSES, p)},
                         "predicted": CLASSES[int(p.argmax())], "error": ""})
        batch.clear()
        names.clear()

    folder = Path(folder)
    files = list_images(folder)
    skipped = 0
    for path in files:
        try:
            im = letterbox(read_image(path), (w, h))
        except ImageReadError as err:
            if on_error == "raise":
                raise
            skipped += 1
            rows.append({"file": str(path.relative_to(folder)), **{f"p_{c}": "" for c in CLASSES},
                         "predicted": "", "error": str(err)})
            continue
        batch.append(np.asarray(im))
        names.append(str(path.relative_to(folder)))
        if len(batch) == batch_size:
            flush()
    flush()
    rows.sort(key=lambda r: r["file"])
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["file", *[f"p_{c}" for c in CLASSES], "predicted", "error"])
        wr.writeheader()
        wr.writerows(rows)
    os.replace(tmp, out_csv)
    return {"images": len(files), "predicted": len(files) - skipped, "skipped": skipped,
            "calls": {c: sum(r["predicted"] == c for r in rows) for c in CLASSES}}
