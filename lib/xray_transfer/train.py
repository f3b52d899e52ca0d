"""Stratified k-fold cross-validation with the paper's protocol, resumable, and a fast path.

The fast path: layers below Table 1's cutoff are frozen, their batch normalisation
runs in inference mode and no augmentation is applied, so they compute the same
outputs for an image in every epoch of every fold. We compute those outputs once
per run and train only the tail on them. Same mathematics, a fraction of the work
when the cutoff is deep (see ``tests/test_train.py`` for the equivalence test).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .models import (AUGMENTATIONS, BATCHNORM_MODES, PRECISIONS, SCALINGS, build_model, get_backbone, has_frozen_batchnorm,
                     preprocess_input, resolve_weights, split_at_cutoff, weights_provenance, with_preprocessing)
from .preprocess import RESIZES

#: The paper's protocol (Section 2.3); unstated choices are marked in DEFAULT_NOTES.
DEFAULTS = dict(backbone="mobilenet", weights="none", n_splits=10, epochs=10, batch_size=64,
                learning_rate=1e-4, dropout=0.5, pooling="avg", seed=0, image_size=(200, 266),
                fast="auto", group_by_patient=False, image_mask="none", batchnorm="keras2",
                split_seed=None, scaling="preprocess_input", resize="letterbox", augment="none",
                precision="float32")
#: Parameters added after runs were committed: at their default they stay out of a run's identity
#: (:func:`run_identity`), so the committed runs keep theirs; any other value enters it.
LATER_PARAMS = ("split_seed", "scaling", "resize", "augment", "precision")
DEFAULT_NOTES = {
    "learning_rate": "unstated in the paper; 1e-4, a common Adam rate for fine-tuning",
    "dropout": "unstated; 0.5 (Hinton et al. 2012) between the two hidden layers",
    "pooling": "unstated; global average pooling between base and classifier",
    "loss": "unstated; softmax output with categorical cross-entropy",
    "scaling": "unstated; each backbone's own keras.applications preprocess_input",
    "augmentation": "none (discussed in Section 2.2, not stated as used)",
    "resize": "letterboxed: padded on black to 266x200's aspect ratio, then resized (the paper: 'no distortion')",
    "seed": "one seed draws the fold split (unless split_seed is given), the random initial weights (classifier, "
            "missing ImageNet tensors) and dropout, and each fold's batch order",
    "batchnorm": "unstated; every BatchNormalization layer, frozen ones included, normalises with "
                 "batch statistics while training, as Keras 2.3 / TensorFlow 2.1 (early 2020) did",
    "precision": "float32 arithmetic (Keras' default); mixed_bfloat16 is an option for speed",
}


class TrainingDiverged(FloatingPointError):
    """The loss or a prediction became NaN or infinite; the message says which fold and epoch."""


class RunMismatch(ValueError):
    """A run folder holds files of another run; the message says how to start afresh."""
#: "lungs_hidden": black out all but a border of the 200x266 image (letterbox bands included);
#: "lungs_hidden_in_frame": the same within each X-ray's own frame, so the kept border is X-ray.
IMAGE_MASKS = ("none", "lungs_hidden", "lungs_hidden_in_frame")
PROTOCOL = dict(n_splits=10, epochs=10, batch_size=64, image_size=(200, 266))


def make_config(**params) -> dict:
    """Validate training parameters and fill in defaults; names any bad value.

    >>> make_config(backbone="vgg19", epochs=1)["epochs"]
    1
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **params}
    get_backbone(cfg["backbone"])
    for k in ("n_splits", "epochs", "batch_size"):
        if isinstance(cfg[k], bool) or not isinstance(cfg[k], (int, np.integer)) or cfg[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {cfg[k]!r}")
    if cfg["n_splits"] < 2:
        raise ValueError(f"n_splits must be at least 2, got {cfg['n_splits']!r}")
    lr = cfg["learning_rate"]
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and 0 < lr <= 1):
        raise ValueError(f"learning_rate must be a finite number in (0, 1], got {lr!r}")
    size = tuple(int(v) for v in cfg["image_size"])
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"image_size must be (height, width), each at least 32, got {cfg['image_size']!r}")
    cfg["image_size"] = list(size)
    if isinstance(cfg["dropout"], bool) or not (isinstance(cfg["dropout"], (int, float)) and 0 <= cfg["dropout"] < 1):
        raise ValueError(f"dropout must be a number in [0, 1), got {cfg['dropout']!r}")
    if cfg["pooling"] not in ("avg", "max", "flatten"):
        raise ValueError(f"pooling must be 'avg', 'max' or 'flatten', got {cfg['pooling']!r}")
    if isinstance(cfg["seed"], bool) or not isinstance(cfg["seed"], (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {cfg['seed']!r}")
    if cfg["fast"] not in ("auto", True, False):
        raise ValueError(f"fast must be 'auto', True or False, got {cfg['fast']!r}")
    if cfg["image_mask"] not in IMAGE_MASKS:
        raise ValueError(f"image_mask must be one of {IMAGE_MASKS}, got {cfg['image_mask']!r}")
    if cfg["batchnorm"] not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {tuple(BATCHNORM_MODES)}, got {cfg['batchnorm']!r}")
    if cfg["split_seed"] is not None and (isinstance(cfg["split_seed"], bool)
                                          or not isinstance(cfg["split_seed"], (int, np.integer))):
        raise ValueError(f"split_seed must be an integer or None (the folds of seed), got {cfg['split_seed']!r}")
    for k, allowed in (("scaling", SCALINGS), ("resize", RESIZES), ("augment", AUGMENTATIONS),
                       ("precision", PRECISIONS)):
        if cfg[k] not in allowed:
            raise ValueError(f"{k} must be one of {tuple(allowed)}, got {cfg[k]!r}")
    if cfg["fast"] is True and cfg["augment"] != "none":
        raise ValueError(f"fast=True caches the frozen part's outputs, but augment={cfg['augment']!r} changes the "
                         "images in every epoch; use fast='auto'")
    if cfg["fast"] is True and cfg["batchnorm"] == "keras2" and has_frozen_batchnorm(cfg["backbone"]):
        raise ValueError(f"fast=True needs frozen layers whose output does not depend on the batch, but with "
                         f"batchnorm='keras2' the frozen BatchNormalization layers of {cfg['backbone']} use batch "
                         "statistics; use fast='auto'")
    cfg["weights"] = resolve_weights(cfg["backbone"], cfg["weights"])
    cfg["seed"] = int(cfg["seed"])
    # the folds of seed itself are the default's: one spelling, one identity
    cfg["split_seed"] = None if cfg["split_seed"] in (None, cfg["seed"]) else int(cfg["split_seed"])
    return cfg


def split_seed_of(cfg: dict) -> int:
    """The seed that draws a run's folds: ``split_seed``, or ``seed`` when that is None.

    >>> split_seed_of(make_config(seed=2)), split_seed_of(make_config(seed=2, split_seed=0))
    (2, 0)
    """
    return cfg["seed"] if cfg.get("split_seed") is None else cfg["split_seed"]


def identity_params(cfg: dict) -> dict:
    """The parameters that make a run's identity: all but the weights path, and the
    :data:`LATER_PARAMS` only where they differ from their default.

    >>> "augment" in identity_params(make_config()), identity_params(make_config(augment="light"))["augment"]
    (False, 'light')
    """
    return {k: v for k, v in cfg.items()
            if k != "weights" and not (k in LATER_PARAMS and v == DEFAULTS[k])}


def run_identity(cfg: dict, weights: dict, manifest_sha256: str, files) -> tuple[dict, str]:
    """What a run is, and its SHA-256: parameters (:func:`identity_params`), starting weights
    (kind and SHA-256 from ``weights``, a :func:`~xray_transfer.models.weights_provenance`
    record), the dataset's manifest hash and the image files in order.

    A resumed run and each of its folds must have the same identity as ``run.json``.
    """
    identity = {"params": identity_params(cfg), "weights": {k: weights[k] for k in ("kind", "sha256")},
                "manifest_sha256": manifest_sha256, "files_sha256": _files_digest(files)}
    return identity, hashlib.sha256(json.dumps(identity, sort_keys=True, default=_jsonable).encode()).hexdigest()


def is_full_protocol(cfg: dict, n_images: int | None = None) -> bool:
    """True when a run used the paper's folds, epochs, batch size and input size."""
    same = all(list(cfg[k]) == list(v) if isinstance(v, tuple) else cfg[k] == v for k, v in PROTOCOL.items())
    return same and (n_images is None or n_images >= 1400)


def make_folds(labels, n_splits=10, seed=0, groups=None) -> np.ndarray:
    """Fold number of every image: stratified, shuffled with ``seed``; patient-grouped if ``groups``.

    Raises
    ------
    ValueError
        If a class has fewer images than folds (a fold would have none of it).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    from .data import CLASSES

    labels = np.asarray(labels)
    sizes = np.bincount(labels, minlength=len(CLASSES))
    few = [f"{CLASSES[k]}: {n}" for k, n in enumerate(sizes) if n < n_splits]
    if few:
        raise ValueError(f"n_splits must be at most the number of images of each class ({', '.join(few)}), "
                         f"got {n_splits}; use fewer folds or more images")
    fold = np.full(len(labels), -1)
    if groups is None:
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels)
    else:
        splits = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, groups)
    for k, (_, test) in enumerate(splits):
        fold[test] = k
    return fold


def folds_drawn_again(run_dir) -> bool:
    """Whether this scikit-learn draws a run's folds (its ``folds.csv``) again.

    Patient-grouped folds depend on scikit-learn's version: its ``StratifiedGroupKFold`` draws
    other folds in 1.9.1 than in 1.7.2, from the same images, patients and seed.
    """
    run_dir = Path(run_dir)
    params = json.loads((run_dir / "run.json").read_text())["params"]
    with open(run_dir / "folds.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in rows])
    groups = np.array([r["patient_id"] for r in rows]) if params.get("group_by_patient") else None
    drawn = make_folds(labels, params["n_splits"], split_seed_of(params), groups)
    return bool(np.array_equal(drawn, [int(r["fold"]) for r in rows]))


def resize_images(images: np.ndarray, image_size) -> np.ndarray:
    """Resize a uint8 batch to (height, width) with PIL (only for reduced smoke settings)."""
    h, w = image_size
    if images.shape[1:3] == (h, w):
        return images
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(a).resize((w, h), Image.Resampling.LANCZOS)) for a in images])


def hide_lungs(images: np.ndarray, keep=0.15, frames=None) -> np.ndarray:
    """Black out everything but a border of width ``keep`` (fraction of each side).

    The lungs lie in the central region of a frontal chest X-ray; a model that
    still tells the classes apart from the border uses something other than the lungs.
    Without ``frames`` the border is that of the whole (letterboxed) image, so for an
    X-ray padded with wide bands it may hold little but band. With ``frames``, one
    ``(x0, y0, x1, y1)`` fraction box per image (:func:`xray_transfer.preprocess.xray_frame`),
    the border is taken inside each X-ray's own frame; the bands stay as they are.
    """
    out = images.copy()
    h, w = images.shape[1:3]
    if frames is None:
        frames = [(0.0, 0.0, 1.0, 1.0)] * len(images)
    for img, (x0, y0, x1, y1) in zip(out, frames):
        fx0, fx1, fy0, fy1 = x0 * w, x1 * w, y0 * h, y1 * h
        dx, dy = keep * (fx1 - fx0), keep * (fy1 - fy0)
        img[int(round(fy0 + dy)):int(round(fy1 - dy)), int(round(fx0 + dx)):int(round(fx1 - dx))] = 0
    return out


def stretch_images(images: np.ndarray, manifest) -> np.ndarray:
    """Every letterboxed image with its X-ray stretched to fill the frame (``resize="stretch"``),
    with :func:`xray_transfer.preprocess.stretch_letterboxed`."""
    from .preprocess import stretch_letterboxed
    try:
        sizes = [(int(r["original_width"]), int(r["original_height"])) for r in manifest]
    except KeyError:
        raise ValueError("resize='stretch' needs original_width and original_height in the manifest; rebuild "
                         "the dataset with `make dataset`") from None
    return np.stack([stretch_letterboxed(a, size) for a, size in zip(images, sizes)])


def prepare_images(images: np.ndarray, manifest, cfg: dict) -> np.ndarray:
    """The uint8 images a run trains on: resized as ``resize`` says, to ``image_size``, masked by ``image_mask``."""
    if cfg.get("resize", "letterbox") == "stretch":
        images = stretch_images(images, manifest)
        # the X-ray now fills the image: hiding the lungs in its frame hides them in the image's
        mask = "lungs_hidden" if cfg["image_mask"] == "lungs_hidden_in_frame" else cfg["image_mask"]
    else:
        mask = cfg["image_mask"]
    return apply_image_mask(resize_images(images, cfg["image_size"]), mask, manifest)


def apply_image_mask(images: np.ndarray, image_mask: str, manifest) -> np.ndarray:
    """The images a run trains on under ``image_mask`` (see :data:`IMAGE_MASKS`)."""
    if image_mask == "lungs_hidden":
        return hide_lungs(images)
    if image_mask == "lungs_hidden_in_frame":
        from .preprocess import xray_frame
        try:
            frames = [xray_frame((int(r["original_width"]), int(r["original_height"]))) for r in manifest]
        except KeyError:
            raise ValueError("image_mask='lungs_hidden_in_frame' needs original_width and original_height in "
                             "the manifest; rebuild the dataset with `make dataset`") from None
        return hide_lungs(images, frames=frames)
    return images


def use_fast_path(cfg: dict) -> tuple[bool, str]:
    """Whether to cache frozen outputs: yes when at least half the base's layers are frozen."""
    spec = get_backbone(cfg["backbone"])
    share = spec.cutoff / spec.n_layers
    if cfg["fast"] in (True, False):
        return bool(cfg["fast"]), f"forced by fast={cfg['fast']} ({share:.0%} of base layers frozen)"
    if cfg.get("augment", "none") != "none":
        return False, (f"augment={cfg['augment']!r} changes the images in every training step, so the frozen "
                       "part's output does too")
    if cfg.get("batchnorm", "keras2") == "keras2" and has_frozen_batchnorm(cfg["backbone"]):
        return False, ("the frozen BatchNormalization layers normalise with each batch's statistics "
                       "(batchnorm='keras2'), so the frozen part's output changes from batch to batch")
    if share >= 0.5:
        return True, f"{share:.0%} of the base's layers are frozen: their outputs are computed once"
    return False, f"only {share:.0%} of the base's layers are frozen: caching would not pay"


def frozen_key(cfg: dict, images: np.ndarray) -> str:
    """What the fast path's frozen outputs depend on: backbone, initial weights, seed, size, pixels
    (so also ``resize`` and ``image_mask``), ``scaling``, ``precision``, and whether frozen
    BatchNormalization layers use batch statistics ('keras2').

    Otherwise the BatchNorm mode, grouping, epochs and learning rate act above the cutoff only;
    ``augment`` other than "none" turns the fast path off (:func:`use_fast_path`).
    """
    keras2 = cfg["batchnorm"] == "keras2" and has_frozen_batchnorm(cfg["backbone"])
    h = hashlib.sha256(json.dumps([cfg["backbone"], cfg["weights"], cfg["seed"], list(cfg["image_size"]),
                                   cfg["batch_size"], keras2, cfg.get("scaling", "preprocess_input"),
                                   images.shape, str(images.dtype), cfg.get("precision", "float32")]).encode())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


class Trainer:
    """Builds the model once and trains it fold after fold from the same initial state.

    Reusing one model (weights and optimizer state reset per fold) keeps the
    compiled training step, so no fold pays for compilation again; :func:`get_trainer`
    reuses it for every run of a process that trains the same model (another split,
    other pixels, the final fit). Held-out images are predicted in full batches, the
    last one padded, so one compiled prediction step serves every fold and run.

    ``feature_store``, a dict, shares the fast path's frozen outputs between trainers
    (runs in one process): runs whose frozen part and images are the same (VGG19's paper,
    patient-grouped and final runs, say; see :func:`frozen_key`) compute them once.
    Without the fast path the network takes the uint8 images and scales them itself
    (:func:`~xray_transfer.models.with_preprocessing`).
    """

    def __init__(self, cfg: dict, images: np.ndarray, feature_store: dict | None = None):
        import keras

        self.cfg = cfg
        self.spec = get_backbone(cfg["backbone"])
        h, w = cfg["image_size"]
        self.model = build_model(cfg["backbone"], input_shape=(h, w, 3), weights=cfg["weights"],
                                 pooling=cfg["pooling"], dropout=cfg["dropout"], seed=cfg["seed"],
                                 batchnorm=cfg["batchnorm"], precision=cfg.get("precision", "float32"))
        self.fast, self.fast_reason = use_fast_path(cfg)
        if self.fast:
            self._frozen, self.net = split_at_cutoff(self.model, self.spec.cutoff)
        else:
            self.net = with_preprocessing(self.model, cfg["backbone"], scaling=cfg["scaling"],
                                          augment=cfg["augment"], seed=cfg["seed"])
        self.net.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                         loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        self.net.optimizer.build(self.net.trainable_variables)
        self._init_model = [v.numpy() for v in self.model.variables]
        self._init_opt = [v.numpy() for v in self.net.optimizer.variables]
        # (mixed_bfloat16 needs no LossScaleOptimizer: bfloat16 has float32's exponent range, so small
        # gradients do not underflow as in float16)
        # the network's own state outside the model: the augmentation's random-number generators
        self._extra = [v for v in self.net.variables if not any(v is w for w in self.model.variables)]
        self._init_extra = [v.numpy() for v in self._extra]
        self.use_images(images, feature_store)

    def use_images(self, images: np.ndarray, feature_store: dict | None = None):
        """Train and predict on ``images`` (uint8, in the run's order) from now on.

        On the fast path their frozen outputs are computed here (or taken from ``feature_store``).
        """
        t0 = time.perf_counter()
        if self.fast:
            key = frozen_key(self.cfg, images) if feature_store is not None else None
            if key in (feature_store or {}):
                self.inputs = feature_store[key]
            else:
                feats = self._frozen.predict(preprocess_input(self.cfg["backbone"], images, self.cfg["scaling"]),
                                             batch_size=self.cfg["batch_size"], verbose=0)
                # float32 arrays whatever the layers computed in (bfloat16 under mixed_bfloat16)
                self.inputs = [np.asarray(f, dtype=np.float32) for f in (feats if isinstance(feats, list) else [feats])]
                if key is not None:
                    feature_store[key] = self.inputs
        else:
            self.inputs = [np.asarray(images, dtype=np.uint8)]
        self.feature_seconds = time.perf_counter() - t0 if self.fast else 0.0

    def reset(self):
        """Back to the initial weights, optimizer state, dropout seed and augmentation seeds."""
        for v, a in zip(self.model.variables, self._init_model):
            v.assign(a)
        for v, a in zip(self._extra, self._init_extra):
            v.assign(a)
        for v, a in zip(self.net.optimizer.variables, self._init_opt):
            v.assign(a)

    def _take(self, idx):
        xs = [a[idx] for a in self.inputs]
        return xs if len(xs) > 1 else xs[0]

    def predict(self, idx) -> np.ndarray:
        """Class probabilities of the images ``idx``, in batches of ``batch_size`` exactly.

        The last batch is padded with copies of the first image (prediction treats every
        image on its own), so one compiled step serves every fold and run.
        """
        n, bs = len(idx), self.cfg["batch_size"]
        padded = np.concatenate([idx, np.repeat(idx[:1], -n % bs)])
        return np.asarray(self.net.predict(self._take(padded), batch_size=bs, verbose=0))[:n]

    def fit_fold(self, train_idx, test_idx, labels, fold_seed, progress=None) -> dict:
        """Train on ``train_idx`` for the configured epochs; return history and test probabilities."""
        from sklearn.metrics import accuracy_score, log_loss

        cfg = self.cfg
        self.reset()
        rng = np.random.default_rng(fold_seed)
        yte = labels[test_idx]
        history = {"loss": [], "accuracy": [], "test_loss": [], "test_accuracy": [], "seconds": []}
        probs, predict_seconds = np.zeros((0, 3)), 0.0
        for epoch in range(cfg["epochs"]):
            perm = train_idx[rng.permutation(len(train_idx))]
            t0 = time.perf_counter()
            h = self.net.fit(self._take(perm), labels[perm], batch_size=cfg["batch_size"], epochs=1,
                             shuffle=False, verbose=0)
            dt = time.perf_counter() - t0
            if not math.isfinite(h.history["loss"][0]):
                raise TrainingDiverged(
                    f"{cfg['backbone']}: training loss became {h.history['loss'][0]} in epoch {epoch + 1}; "
                    f"lower learning_rate (now {cfg['learning_rate']}) and start the run afresh")
            if len(test_idx):  # the held-out fold after this epoch; after the last, the fold's result
                t0 = time.perf_counter()
                probs = self.predict(test_idx)
                predict_seconds = time.perf_counter() - t0
                if not np.isfinite(probs).all():
                    raise TrainingDiverged(
                        f"{cfg['backbone']}: {int((~np.isfinite(probs)).any(1).sum())} test prediction(s) are "
                        f"NaN or infinite in epoch {epoch + 1}; lower learning_rate and start afresh")
                test_loss = log_loss(yte, probs, labels=[0, 1, 2])
                test_accuracy = accuracy_score(yte, probs.argmax(1))
            else:
                test_loss = test_accuracy = float("nan")
            history["loss"].append(float(h.history["loss"][0]))
            history["accuracy"].append(float(h.history["accuracy"][0]))
            history["test_loss"].append(float(test_loss))
            history["test_accuracy"].append(float(test_accuracy))
            history["seconds"].append(dt)
            if progress is not None:
                shown = {"epoch": epoch + 1, "loss": f"{history['loss'][-1]:.3f}", "acc": f"{history['accuracy'][-1]:.3f}"}
                if len(test_idx):  # a final fit on all images has no held-out fold to show
                    shown["test_acc"] = f"{history['test_accuracy'][-1]:.3f}"
                progress.set_postfix(**shown)
                progress.update(1)
        return {"history": history, "probs": np.asarray(probs, dtype=np.float64), "predict_seconds": predict_seconds}


#: Parameters that change neither the model a :class:`Trainer` builds nor how it trains a fold.
RUN_ONLY_PARAMS = ("n_splits", "group_by_patient", "image_mask", "split_seed", "resize")


def get_trainer(cfg: dict, images: np.ndarray, feature_store: dict | None = None,
                trainer_store: dict | None = None) -> Trainer:
    """A :class:`Trainer` for ``cfg`` on ``images``, reused from ``trainer_store`` (a dict) where a
    run of this process built one for the same model and training settings.

    Reused, it keeps its compiled steps: a paper run, its patient-grouped and lungs-hidden
    audit runs and the final fit compile once. Every fold starts from the initial state
    (:meth:`Trainer.reset`), so reuse changes no result.
    """
    if trainer_store is None:
        return Trainer(cfg, images, feature_store)
    key = json.dumps({k: v for k, v in cfg.items() if k not in RUN_ONLY_PARAMS}, sort_keys=True)
    if key not in trainer_store:
        trainer_store[key] = Trainer(cfg, images, feature_store)
        return trainer_store[key]
    trainer = trainer_store[key]
    trainer.cfg = cfg
    trainer.use_images(images, feature_store)
    return trainer


def open_run(dataset, output_dir, **params) -> dict:
    """Create a run folder, or check that it holds this run, before any fold is trained.

    ``run.json`` is created exclusively (a hard link from a temporary file), so two
    processes that start one run folder at once agree on one record: the second reads
    the first's and goes on only if its run identity (parameters, weights, images) is
    the same; otherwise it refuses, naming the host and time that made the record.

    Returns a dict with ``cfg``, ``identity_sha256``, ``fold_of``, ``files``, ``out``,
    ``afresh`` (what to do on a mismatch), ``todo`` (folds without a file) and ``record``.
    """
    cfg = make_config(**params)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "run.json"
    groups = dataset.groups if cfg["group_by_patient"] else None
    fold_of = make_folds(dataset.labels, cfg["n_splits"], split_seed_of(cfg), groups)
    files = [r["file"] for r in dataset.manifest]
    weights = weights_provenance(cfg["weights"])
    identity, identity_sha256 = run_identity(cfg, weights, dataset.manifest_sha256, files)
    afresh = f"delete {out} (or choose another output folder) to start afresh"
    if not record_path.exists():
        stray = sorted(p.name for p in out.glob("fold-*.json"))
        if stray:
            raise RunMismatch(f"{out} has fold files ({', '.join(stray[:3])}) but no run.json, so their "
                              f"parameters are unknown; {afresh}")
        from .provenance import environment, portable_path
        counts = np.bincount(dataset.labels, minlength=3).tolist()
        record = {"params": {**cfg, "weights": portable_path(cfg["weights"])}, "identity": identity, "identity_sha256": identity_sha256, "notes": DEFAULT_NOTES,
                  "full_protocol": is_full_protocol(cfg, len(dataset)),
                  "dataset": {"manifest_sha256": dataset.manifest_sha256, "n_images": len(dataset),
                              "counts": counts},
                  "weights": weights,
                  "environment": environment(), "folds_done": [], "feature_cache": None}
        _create_json(record_path, record)  # False: another process made it first; checked below
    try:
        old = json.loads(record_path.read_text())
    except ValueError:
        raise RunMismatch(f"{record_path}: not valid JSON (damaged?); {afresh}") from None
    if old.get("identity") != identity:
        was = old.get("identity") or {}
        diff = {k: (was.get(k), v) for k, v in identity.items() if was.get(k) != v}
        env = old.get("environment") or {}
        raise RunMismatch(f"{out} holds a run with other parameters, weights or images {diff} (old, new), "
                          f"started on {env.get('host', 'an unknown host')} at {env.get('time_utc', 'an unknown time')}"
                          f"{_holders(out)}; {afresh}")
    if (out / "folds.csv").is_file():
        if not folds_drawn_again(out):
            import sklearn
            was = old.get("environment", {}).get("versions", {}).get("scikit-learn", "another version")
            raise RunMismatch(f"{out}: its folds were drawn by scikit-learn {was}, and scikit-learn "
                              f"{sklearn.__version__} draws others; resume it with scikit-learn {was}, or {afresh}")
    else:  # every process of this run draws the same folds, so any of them may write the file
        tmp = out / f".folds.csv.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["index", "file", "label", "patient_id", "fold"])
            w.writerows([i, r["file"], int(dataset.labels[i]), r["patient_id"], int(fold_of[i])]
                        for i, r in enumerate(dataset.manifest))
        os.replace(tmp, out / "folds.csv")
    todo = []
    for k in range(cfg["n_splits"]):
        path = out / f"fold-{k:02d}.json"
        if not path.exists():
            todo.append(k)
            continue
        check_fold(path, identity_sha256, [files[i] for i in np.flatnonzero(fold_of == k)], afresh)
    return {"cfg": cfg, "identity_sha256": identity_sha256, "fold_of": fold_of, "files": files, "out": out,
            "afresh": afresh, "todo": todo, "record": old}


def run_images(dataset, cfg) -> np.ndarray:
    """The images a run trains on (:func:`prepare_images`)."""
    return prepare_images(dataset.images, dataset.manifest, cfg)


def train_fold(dataset, run: dict, k: int, images=None, feature_store=None, trainer_store=None, progress=None,
               made_by=None, on_wait=None) -> dict | None:
    """Train fold ``k`` of a run opened by :func:`open_run`, holding that fold exclusively.

    The fold is held by a lock file (``.fold-XX.lock``, naming the holder) while it trains:
    another process (another ``train``, another worker of a grid) that reaches it waits,
    then finds it done. The fold file is written atomically once complete; a process
    killed mid-fold leaves no fold file and its lock is released by the system.
    Returns the fold record, or None when another process made the fold.
    """
    made = train_folds(dataset, run, [k], images, feature_store, trainer_store, progress, made_by, on_wait)
    return made[0] if made else None


def train_folds(dataset, run: dict, ks, images=None, feature_store=None, trainer_store=None, progress=None,
                made_by=None, on_wait=None, together=False) -> list[dict]:
    """Train the folds ``ks`` of a run opened by :func:`open_run`, each held as :func:`train_fold` holds it.

    One after the other, or with ``together`` all at once as one compiled JAX program
    (:func:`xray_transfer.fold_parallel.fit_folds`: the same steps, vectorised over the folds;
    Keras on JAX only). Either way each fold gets its own file, written atomically, and
    ``made_by.trained`` says which. Returns the fold records made here (folds another
    process made meanwhile are checked and left out).
    """
    cfg, out, identity_sha256 = run["cfg"], run["out"], run["identity_sha256"]
    fold_of, files = run["fold_of"], run["files"]
    holder = f"folds {', '.join(map(str, ks))} of run {identity_sha256[:12]} by {platform.node()} pid {os.getpid()}"
    with contextlib.ExitStack() as held:
        todo = []
        for k in sorted(ks):  # locks taken in one order, so two processes never wait on each other
            held.enter_context(exclusive(out / f".fold-{k:02d}.lock", holder, on_wait))
            path = out / f"fold-{k:02d}.json"
            if path.exists():  # made while we waited for it
                check_fold(path, identity_sha256, [files[i] for i in np.flatnonzero(fold_of == k)], run["afresh"])
            else:
                todo.append(k)
        if not todo:
            return []
        images = run_images(dataset, cfg) if images is None else images
        t0 = time.perf_counter()
        trainer = get_trainer(cfg, images, feature_store, trainer_store)
        setup_seconds = time.perf_counter() - t0
        splits = [(np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)) for k in todo]
        seeds = [cfg["seed"] * 1000 + k for k in todo]
        if together and len(todo) > 1:
            from .fold_parallel import fit_folds
            t0 = time.perf_counter()
            results = fit_folds(trainer, splits, dataset.labels, seeds, progress=progress)
            walls = [(time.perf_counter() - t0) / len(todo)] * len(todo)  # one program: its time shared
            how = f"together: {len(todo)} folds as one compiled JAX program (jax.vmap)"
        else:
            results, walls = [], []
            for (train_idx, test_idx), seed in zip(splits, seeds):
                t0 = time.perf_counter()
                results.append(trainer.fit_fold(train_idx, test_idx, dataset.labels, fold_seed=seed, progress=progress))
                walls.append(time.perf_counter() - t0)
            how = "one fold at a time"
        made = []
        for k, (train_idx, test_idx), res, wall in zip(todo, splits, results, walls):
            fold = _fold_record(dataset, run, k, train_idx, test_idx, res, wall, trainer,
                                {**(made_by or {}), "trained": how})
            _atomic_json(out / f"fold-{k:02d}.json", fold)
            made.append(fold)
        feature_cache = {"used": trainer.fast, "reason": trainer.fast_reason,
                         "seconds": round(trainer.feature_seconds, 3), "setup_seconds": round(setup_seconds, 3)}
        with exclusive(out / ".run.lock", holder):  # run.json: read, update, replace, one process at a time
            record = json.loads((out / "run.json").read_text())
            record["folds_done"] = sorted(int(p.stem[5:]) for p in out.glob("fold-*.json"))
            was = record.get("feature_cache") or {}
            if feature_cache["setup_seconds"] >= was.get("setup_seconds", 0):  # the set-up a process paid, not a reuse
                record["feature_cache"] = feature_cache
            _atomic_json(out / "run.json", record)
    return made


def _fold_record(dataset, run, k, train_idx, test_idx, res, wall, trainer, made_by) -> dict:
    """The record of fold ``k`` (``fold-XX.json``) from what :meth:`Trainer.fit_fold` returned."""
    from .metrics import confusion
    from .provenance import environment

    cfg, files = run["cfg"], run["files"]
    env = environment()
    y_true, y_pred = dataset.labels[test_idx], res["probs"].argmax(1)
    fit_seconds = sum(res["history"]["seconds"])
    return {"fold": k, "n_train": len(train_idx), "n_test": len(test_idx),
            "test_index": test_idx.tolist(), "test_file": [files[i] for i in test_idx],
            "y_true": y_true.tolist(), "probs": np.round(res["probs"], 6).tolist(),
            "confusion": confusion(y_true, y_pred).tolist(), "history": res["history"],
            "timing": {"wall_seconds": wall, "fit_seconds": fit_seconds,
                       "predict_seconds": res["predict_seconds"],
                       "train_images_per_second": len(train_idx) * cfg["epochs"] / fit_seconds,
                       "fast_path": trainer.fast},
            "backend": env["backend"], "device": env["device"],
            "git": env["git"],  # a resumed run's folds may come from later commits than run.json's
            "made_by": {"host": env["host"], "process": os.getpid(), "scheduler": "none (one process)", **made_by},
            "run_identity_sha256": run["identity_sha256"]}


def cross_validate(dataset, output_dir, progress=True, folds_to_run=None, feature_store=None, trainer_store=None,
                   folds_together=False, **params) -> dict:
    """Run (or resume) k-fold cross-validation and write one artifact per fold.

    Parameters
    ----------
    dataset : xray_transfer.data.Dataset
        Images (uint8), labels, manifest and its hash.
    output_dir : path
        Gets ``run.json`` (parameters and provenance), ``folds.csv`` (fold of every
        image) and ``fold-XX.json`` (history, test probabilities, confusion
        matrix, timings), each written atomically. Folds already there are skipped;
        a fold that another process is training is waited for (see :func:`train_fold`).
    progress : bool, default True
        Progress bars per fold and epoch.
    folds_to_run : list of int, optional
        Only these folds (for tests of resuming); default all.
    feature_store : dict, optional
        Frozen outputs shared with other runs in this process (see :class:`Trainer`).
    trainer_store : dict, optional
        Trainers shared with other runs in this process (see :func:`get_trainer`).
    folds_together : bool, default False
        Train the folds still to do at once, as one compiled JAX program
        (:mod:`xray_transfer.fold_parallel`; Keras on JAX only). The same protocol and seeds:
        it changes the speed, not the run (its identity is the same).
    **params
        Training parameters, see :data:`DEFAULTS` and :func:`make_config`.

    Returns
    -------
    dict
        The run record (``run.json``).
    """
    from tqdm import tqdm

    if folds_together:
        from .fold_parallel import check_backend
        check_backend()  # before the run folder is made
    run = open_run(dataset, output_dir, **params)
    cfg, todo = run["cfg"], run["todo"]
    if folds_to_run is not None:
        todo = [k for k in todo if k in folds_to_run]
    if not todo:
        return run["record"]
    images = run_images(dataset, cfg)
    bar = tqdm(total=len(todo) * cfg["epochs"], desc=f"{cfg['backbone']} folds {todo[0]}-{todo[-1]}",
               unit="epoch", disable=not progress, file=sys.stdout, mininterval=1.0)
    wait = lambda who: print(f"waiting for {who}", file=sys.stderr)  # noqa: E731
    made = []
    if folds_together:
        bar.set_description(f"{cfg['backbone']} {len(todo)} folds together")
        made = [f["fold"] for f in train_folds(dataset, run, todo, images, feature_store, trainer_store,
                                               progress=bar, on_wait=wait, together=True)]
    for k in [] if folds_together else todo:
        bar.set_description(f"{cfg['backbone']} fold {k + 1}/{cfg['n_splits']}")
        if train_fold(dataset, run, k, images, feature_store, trainer_store, progress=bar, on_wait=wait) is not None:
            made.append(k)
    bar.close()
    return {**json.loads((run["out"] / "run.json").read_text()), "made_here": made}


@contextlib.contextmanager
def exclusive(lock_path, holder: str, on_wait=None):
    """Hold ``lock_path`` exclusively (``flock``) while the block runs; wait for another holder.

    The file names its holder (``on_wait`` is called with that text before waiting) and is
    removed on leaving. The system releases the lock of a killed process, so a lock never
    outlives its holder. After taking the lock the file is checked to be still the one at
    ``lock_path`` (a holder that left removed it), so two processes never hold one path.
    """
    import fcntl

    lock_path = Path(lock_path)
    while True:
        f = open(lock_path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait(lock_path.read_text().strip() or "another process")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()  # the holder before us removed that file: take the one at the path now
    try:
        f.seek(0)
        f.truncate()
        f.write(holder + "\n")
        f.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        f.close()


def held_by(lock_path) -> str | None:
    """Who holds ``lock_path`` now (its text), or None when no process holds it."""
    import fcntl
    try:
        with open(lock_path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "another process"
    except FileNotFoundError:
        pass
    return None


def _holders(out: Path) -> str:
    who = [h for h in map(held_by, sorted(Path(out).glob(".fold-*.lock"))) if h]
    return f", and being trained now ({'; '.join(who)})" if who else ""


def _create_json(path: Path, obj) -> bool:
    """Write ``path`` only if it does not exist, atomically; False if another process made it first."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=_jsonable) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink()


def check_fold(path, identity_sha256, test_files, afresh="start the run afresh") -> dict:
    """Read a finished fold file, refusing one that is damaged or belongs to another run."""
    path = Path(path)
    try:
        fold = json.loads(path.read_text())
        if not isinstance(fold, dict):
            raise ValueError
    except ValueError:
        raise RunMismatch(f"{path}: not a valid fold record (empty or damaged); delete it to re-run that fold") from None
    if fold.get("run_identity_sha256") != identity_sha256:
        raise RunMismatch(f"{path}: made by a run with other parameters, weights or images than run.json; {afresh}")
    if fold.get("test_file") != list(test_files):
        raise RunMismatch(f"{path}: its test images differ from this run's fold {fold.get('fold')}; {afresh}")
    return fold


def fit_final(dataset, model_path, progress=True, feature_store=None, trainer_store=None, **params) -> dict:
    """Train on every image with the protocol and save the whole model (``.keras``) for prediction.

    Writes ``model_path`` and, beside it, ``<name>.json`` with the parameters,
    provenance, history and the model file's SHA-256. Returns that record. ``feature_store``
    and ``trainer_store`` as in :func:`cross_validate`.
    """
    from tqdm import tqdm

    from .data import sha256_file
    from .provenance import environment, portable_path, record_sha256

    cfg = make_config(**params)
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    images = prepare_images(dataset.images, dataset.manifest, cfg)
    trainer = get_trainer(cfg, images, feature_store, trainer_store)
    every = np.arange(len(dataset))
    bar = tqdm(total=cfg["epochs"], desc=f"{cfg['backbone']} on all images", unit="epoch",
               disable=not progress, file=sys.stdout, mininterval=1.0)
    t0 = time.perf_counter()
    res = trainer.fit_fold(every, every[:0], dataset.labels, fold_seed=cfg["seed"] * 1000 + 999, progress=bar)
    bar.close()
    tmp = model_path.with_name(f".{model_path.stem}.tmp{os.getpid()}.keras")
    trainer.model.save(tmp)
    os.replace(tmp, model_path)
    record = {"params": {**cfg, "weights": portable_path(cfg["weights"])}, "model_file": model_path.name, "model_sha256": sha256_file(model_path),
              "model_bytes": model_path.stat().st_size, "fit_seconds": time.perf_counter() - t0,
              "history": {k: v for k, v in res["history"].items() if not k.startswith("test_")},
              "dataset": {"manifest_sha256": dataset.manifest_sha256, "n_images": len(dataset),
                          "files_sha256": _files_digest([r["file"] for r in dataset.manifest])},
              "weights": weights_provenance(cfg["weights"]), "environment": environment(),
              "feature_cache": {"used": trainer.fast, "reason": trainer.fast_reason}}
    record = json.loads(json.dumps(record, default=_jsonable))
    record["record_sha256"] = record_sha256(record)  # predict checks the record against itself
    _atomic_json(model_path.with_suffix(".json"), record)
    return record


def _files_digest(files) -> str:
    import hashlib
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def load_folds(output_dir) -> list[dict]:
    """All ``fold-XX.json`` of a run, in fold order."""
    return [json.loads(p.read_text()) for p in sorted(Path(output_dir).glob("fold-*.json"))]
