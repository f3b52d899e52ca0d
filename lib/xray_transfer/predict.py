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

from .data import CLASSES, walk_folder
from .preprocess import IMAGE_SUFFIXES, ImageReadError, letterbox, read_image, stretch

#: What to say about files of other kinds, by suffix.
UNSUPPORTED = {".dcm": "DICOM is not read; export the image as PNG (e.g. with pydicom) and predict that",
               "": "no file extension; give the file its image type's extension (.png, .jpg)"}
CSV_COLUMNS = ["file", *[f"p_{c}" for c in CLASSES], "predicted", "error"]


class ModelLoadError(ValueError):
    """A model file or its record cannot be used; the message names the file and what to do."""


class PredictionError(FloatingPointError):
    """The model gave NaN or infinite probabilities; the message names the images."""


def load_trained(model_path):
    """Load a ``.keras`` model and its record, and check each against the other.

    The file must have the recorded SHA-256, the record its own ``record_sha256`` (records
    written before it existed have none), and the model the record's backbone and input size.

    Raises
    ------
    FileNotFoundError
        If the model or its record is missing.
    ModelLoadError
        If the file is not a ``.keras`` model, the record is damaged or edited, the file
        differs from it, or Keras cannot load it.
    """
    import keras

    from .data import sha256_file
    from .provenance import record_sha256

    model_path = Path(model_path)
    record_path = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path}: no such model; train one with `make final-models` "
                                "(or xray_transfer.train.fit_final)")
    if model_path.suffix != ".keras":
        raise ModelLoadError(f"{model_path}: not a Keras model (.keras file); give the .keras file that "
                             "`xray-transfer final` wrote")
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: the model's record is missing (it names the backbone)")
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        record["params"]["backbone"], record["params"]["image_size"], record["model_sha256"]
    except (ValueError, KeyError, TypeError):
        raise ModelLoadError(f"{record_path}: not a model record of `xray-transfer final` (damaged?); "
                             "retrain the model with `make final-models`") from None
    if "record_sha256" in record and record["record_sha256"] != record_sha256(record):
        raise ModelLoadError(f"{record_path}: edited after `xray-transfer final` wrote it (its record_sha256 "
                             "no longer matches); restore it or retrain the model with `make final-models`")
    digest = sha256_file(model_path)
    if digest != record["model_sha256"]:
        raise ModelLoadError(f"{model_path}: SHA-256 {digest[:12]}… differs from its record "
                             f"{record['model_sha256'][:12]}…; the file was changed or is not this run's")
    try:
        model = keras.models.load_model(model_path, compile=False)
    except Exception as err:  # zip, h5py or Keras errors: the message alone would not name the file
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"{model_path}: Keras cannot load this model ({first}); retrain it with "
                             "`make final-models`") from None
    params = record["params"]
    built = (model.name.removesuffix("_transfer"), list(model.input_shape[1:3]))
    if built != (params["backbone"], list(params["image_size"])):
        raise ModelLoadError(f"{record_path}: names backbone {params['backbone']} at {params['image_size']}, but "
                             f"the model is {built[0]} at {built[1]}; restore the record or retrain the model")
    return model, record


def list_files(folder) -> tuple[list[Path], list[tuple[Path, str]], list[tuple[Path, str]]]:
    """Every file under ``folder`` (recursive, following links once each, sorted), and what is left out.

    The files are images and the files that will be listed as not predicted; then the
    entries that cannot be used (broken links, loops) and the repeats (a second link to a
    folder or file already listed), as (path, why) pairs: see :func:`~xray_transfer.data.walk_folder`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder; give the folder of X-rays to predict")
    files, bad, repeats = walk_folder(folder)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        raise FileNotFoundError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) among its "
                                f"{len(files)} file(s)")
    return files, bad, repeats


def unsupported_reason(path) -> str | None:
    """Why ``path`` is not predicted because of its type, or None for an image suffix.

    >>> unsupported_reason("scan.DCM")
    'DICOM is not read; export the image as PNG (e.g. with pydicom) and predict that'
    >>> unsupported_reason("a.PNG") is None
    True
    """
    suffix = Path(path).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    return UNSUPPORTED.get(suffix, f"not an image type read here ({suffix}); images must be "
                                   f"{', '.join(sorted(IMAGE_SUFFIXES))}")


def predict_folder(model_path, folder, out_csv, batch_size=32, on_error="skip") -> dict:
    """Write ``out_csv``: one row per file under ``folder``, with the three class probabilities and the call.

    Every file that is not predicted (unreadable, or not of an image type: ``.dcm``,
    no extension, ...) gets a row with the reason in the ``error`` column
    (``on_error="skip"``, the default), or stops the run (``on_error="raise"``).
    Before any work the output is checked: it must be writable, outside ``folder``,
    and not an existing file other than a CSV of this function. The CSV is written
    atomically. Entries that are not used (broken links, link loops, a second link to one
    file) get a row with the reason too. Returns counts: ``images`` (rows), ``predicted``,
    ``skipped``, the calls per class, and ``warnings`` (such as outputs that do not vary
    across images, the sign of a collapsed model).

    Raises
    ------
    PredictionError
        If the model gives a NaN or infinite probability: that is never a class.
    """
    from .models import preprocess_input
    from .safety import Refused, check_apart, check_writable

    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    folder, out_csv = Path(folder), Path(out_csv)
    check_apart(out_csv, folder, "folder of images")
    if out_csv.is_file() and not _is_prediction_csv(out_csv):
        raise Refused(f"{out_csv}: exists and is not a prediction CSV of this command, so it is left alone; "
                      "choose another output file")
    check_writable(out_csv)
    files, bad, repeats = list_files(folder)
    if bad and on_error == "raise":
        raise ImageReadError(f"{bad[0][0]}: {bad[0][1]}")
    model, record = load_trained(model_path)
    h, w = record["params"]["image_size"]
    # as the model was trained (models trained before these parameters existed: the defaults)
    scaling = record["params"].get("scaling", "preprocess_input")
    to_input = stretch if record["params"].get("resize", "letterbox") == "stretch" else letterbox
    rows, batch, names = [], [], []

    def flush():
        if not batch:
            return
        x = preprocess_input(record["params"]["backbone"], np.stack(batch), scaling)
        probs = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)
        bad = [name for name, p in zip(names, probs) if not np.isfinite(p).all()]
        if bad:
            raise PredictionError(f"{model_path}: gives NaN or infinite probabilities for {len(bad)} image(s) "
                                  f"({', '.join(bad[:3])}); the model is broken (training diverged?): "
                                  "retrain it with `make final-models`")
        for name, p in zip(names, probs):
            rows.append({"file": name, **{f"p_{c}": f"{v:.6f}" for c, v in zip(CLASSES, p)},
                         "predicted": CLASSES[int(p.argmax())], "error": ""})
        batch.clear()
        names.clear()

    skipped = 0
    for path in files:
        name = str(path.relative_to(folder))
        try:
            reason = unsupported_reason(path)
            if reason is not None:
                raise ImageReadError(f"{path}: {reason}")
            im = to_input(read_image(path), (w, h))
        except ImageReadError as err:
            if on_error == "raise":
                raise
            skipped += 1
            rows.append({"file": name, **{f"p_{c}": "" for c in CLASSES}, "predicted": "",
                         "error": str(err).removeprefix(f"{path}: ")})
            continue
        batch.append(np.asarray(im))
        names.append(name)
        if len(batch) == batch_size:
            flush()
    flush()
    for path, why in bad + repeats:
        skipped += 1
        rows.append({"file": str(path.relative_to(folder)), **{f"p_{c}": "" for c in CLASSES},
                     "predicted": "", "error": why})
    rows.sort(key=lambda r: r["file"])
    probs = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows if r["predicted"]])
    warnings = []
    if len(probs) > 1 and np.ptp(probs, axis=0).max() < 1e-4:
        warnings.append(f"{model_path}: gives the same probabilities ({', '.join(f'{v:.3f}' for v in probs[0])}) for "
                        f"all {len(probs)} images; the model has collapsed (it ignores its input): do not use "
                        "its calls")
    tmp = out_csv.with_name(f".{out_csv.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            wr.writeheader()
            wr.writerows(rows)
        os.replace(tmp, out_csv)
    finally:
        tmp.unlink(missing_ok=True)
    return {"images": len(rows), "predicted": len(rows) - skipped, "skipped": skipped,
            "calls": {c: sum(r["predicted"] == c for r in rows) for c in CLASSES}, "warnings": warnings}


def _is_prediction_csv(path) -> bool:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None) == CSV_COLUMNS
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
