"""Table 1 as data, and the model builder: a keras.applications base, frozen up to the
paper's layer cutoff, with the paper's classifier on top.

Backend-agnostic Keras 3 (TensorFlow on the CPU here, JAX on a GPU machine).
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import sha256_file
from .provenance import portable_path


@dataclass(frozen=True)
class Backbone:
    """One row of the paper's Table 1 plus what Keras needs to build it."""

    key: str            #: our identifier (papermill parameter ``backbone``)
    name: str           #: the paper's name
    application: str    #: constructor in ``keras.applications``
    module: str         #: ``keras.applications`` module holding ``preprocess_input``
    cutoff: int         #: untrainable layers from the input (Table 1)
    hidden: tuple       #: hidden layer sizes of the classifier (Table 1)
    n_layers: int       #: layers of the base with include_top=False
    frozen_batchnorm: bool = True  #: BatchNormalization among the layers below the cutoff


#: The paper's Table 1: layer cutoff and classifier per backbone.
TABLE1 = (
    Backbone("vgg19", "VGG19", "VGG19", "vgg19", 18, (1024,), 22, frozen_batchnorm=False),
    Backbone("mobilenet", "MobileNet v1", "MobileNet", "mobilenet", 10, (1000, 750), 86),
    Backbone("inception_v3", "Inception v3", "InceptionV3", "inception_v3", 249, (1000,), 311),
    Backbone("xception", "Xception", "Xception", "xception", 120, (1000, 750), 132),
    Backbone("inception_resnet_v2", "Inception ResNet v2", "InceptionResNetV2",
             "inception_resnet_v2", 730, (), 780),
)
BACKBONES = {b.key: b for b in TABLE1}


def get_backbone(key: str) -> Backbone:
    """Look up a Table 1 row by key, with a clear error for unknown names."""
    try:
        return BACKBONES[key]
    except KeyError:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {key!r}") from None

@dataclass(frozen=True)
class OfflineWeights:
    """An ImageNet weights file of a base recovered offline (``../shared/weights``), in words."""

    file: str       #: file name in the weights folder
    sha256: str     #: SHA-256 of that file, checked when it is used
    label: str      #: how the book names this initialisation
    differs: str    #: what differs from Keras' own float32 ImageNet weights
    evidence: str   #: why we believe the file holds ImageNet weights


#: The offline weights, one per backbone that has any: the only place their files are named.
OFFLINE_WEIGHTS = {
    "vgg19": OfflineWeights(
        "vgg19_imagenet_notop.uint8.fp16.weights.h5",
        "a920a7c8bdd5a1a26b489696258c017fbf7d9bbb22309a6b9a70b54aeb9868dd",
        "ImageNet (8-bit, complete)",
        "all 32 tensors are ImageNet values, but blocks 4-5 (17.7 M of 20.0 M parameters) come from "
        "an 8-bit export (256 levels per tensor); all values rounded to float16",
        "the complete with-top network of the same 8-bit export labels a cat photograph as a cat "
        "and an espresso as espresso (weights README)"),
    "mobilenet": OfflineWeights(
        "mobilenet_1_0_224_imagenet_notop.partial.weights.h5",
        "83f1a59254a27426bb6ddbcb3cc4d3608e1fe45c2237d54dba494fb40caaed9d",
        "ImageNet, partial: conv_pw_13 trained from scratch",
        "conv_pw_13/kernel (1.05 M of 3.23 M parameters) missing, drawn from Keras' initializer; "
        "the rest exact float32",
        "BatchNorm moving means match the batch means of real images (test_models)"),
    "inception_v3": OfflineWeights(
        "inception_v3_imagenet_notop.partial.fp16.weights.h5",
        "e18b8ab85d4ae99cb1675a8bc4e4096c5941684398ad3ab1f69a6a5bbe2cda9b",
        "ImageNet, partial: two mixed9-10 kernels trained from scratch",
        "the 3x3 448->384 kernels of mixed9 and mixed10 (3.1 M of 21.8 M parameters) missing, drawn "
        "from Keras' initializer; the rest rounded to float16",
        "BatchNorm moving means match the batch means of real images (test_models)"),
    "xception": OfflineWeights(
        "xception_imagenet_notop.partial.fp16.weights.h5",
        "4dcf368110a355149a50a2656d56bcd87c410dcb97d4bbe608f33bb033f6f166",
        "ImageNet, partial: block14 trained from scratch",
        "block14's two separable convolutions (4.7 M of 20.9 M parameters) missing, drawn from "
        "Keras' initializer; the rest rounded to float16",
        "BatchNorm moving means match the batch means of real images (test_models; weights README)"),
}
#: Environment variable naming the folder of the offline weights files.
WEIGHTS_ENV = "XRAY_WEIGHTS_DIR"
#: Where the offline weights are in this workplace when no folder is given.
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "weights"


def resolve_weights(backbone: str, weights="offline", weights_dir=None) -> str:
    """Turn a ``weights`` argument into ``"none"``, ``"imagenet"`` or a file path.

    ``"offline"`` means the file registered for ``backbone`` in :data:`OFFLINE_WEIGHTS`,
    looked up in ``weights_dir`` (default ``$XRAY_WEIGHTS_DIR``, else ``../shared/weights``);
    ``"none"`` if the backbone has no offline file (Inception ResNet v2). A missing
    file is an error that says what to do.
    """
    if weights != "offline":
        return "none" if weights is None else str(weights)
    get_backbone(backbone)
    reg = OFFLINE_WEIGHTS.get(backbone)
    if reg is None:
        return "none"
    folder = Path(weights_dir or os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR)
    path = folder / reg.file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the offline ImageNet weights of {backbone} are not there; set "
                                f"{WEIGHTS_ENV} to the folder holding {reg.file}, or pass weights='imagenet' "
                                "(online) or weights='none'")
    return str(path)


def init_label(weights: dict) -> str:
    """How a backbone was initialised, in words, from a run record's ``weights`` block.

    >>> init_label({"kind": "none"})
    'random'
    >>> init_label({"kind": "file", "sha256": OFFLINE_WEIGHTS["xception"].sha256})
    'ImageNet, partial: block14 trained from scratch'
    """
    w = weights or {}
    if w.get("kind") == "none":
        return "random"
    if w.get("kind") == "imagenet (keras download)":
        return "ImageNet (Keras, complete)"
    for reg in OFFLINE_WEIGHTS.values():
        if w.get("sha256") == reg.sha256:
            return reg.label
    if w.get("missing_tensors"):
        return f"ImageNet, partial: {len(w['missing_tensors'])} tensors trained from scratch (unregistered file)"
    return f"weights file {w.get('file')} (not registered)"



#: How the uint8 pixels are scaled before the network (``scaling``), in words.
SCALINGS = {
    "preprocess_input": "each backbone's own keras.applications preprocess_input (VGG19: BGR, ImageNet mean "
                        "subtracted; the others: [-1, 1])",
    "unit": "plain [0, 1]: every pixel divided by 255",
}
#: Light augmentation (``augment="light"``): at most 5 degrees of rotation, 5 % shift and 5 % zoom,
#: new pixels black like the letterbox bands; no left-right flip, because a flip moves the heart.
LIGHT_AUGMENTATION = {"rotation_degrees": 5.0, "shift": 0.05, "zoom": 0.05}
#: What each ``augment`` value does while training (never at prediction), in words.
AUGMENTATIONS = {
    "none": "no augmentation: every epoch sees the same images",
    "light": "random rotation up to ±{rotation_degrees:g}°, shift up to ±{shift:.0%} and zoom up to ±{zoom:.0%} "
             "in every training step, filled black; no flip".format(**LIGHT_AUGMENTATION),
}


def _scale(backbone: str, x, scaling: str):
    """Scale float pixels in [0, 255] (array or tensor) as ``scaling`` says (:data:`SCALINGS`)."""
    import keras

    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {tuple(SCALINGS)}, got {scaling!r}")
    if scaling == "unit":
        return x / 255.0
    return getattr(keras.applications, get_backbone(backbone).module).preprocess_input(x)


def preprocess_input(backbone: str, images: np.ndarray, scaling: str = "preprocess_input") -> np.ndarray:
    """Scale uint8 RGB images the way the backbone's ImageNet weights expect (float32).

    VGG19: 'caffe' (BGR, ImageNet mean subtracted); the others: [-1, 1]. With
    ``scaling="unit"``: plain [0, 1] for every backbone (:data:`SCALINGS`).
    """
    return np.asarray(_scale(backbone, np.asarray(images, dtype=np.float32).copy(), scaling), dtype=np.float32)


def augmentation(augment: str = "none", seed: int = 0):
    """The random layers of ``augment`` (:data:`AUGMENTATIONS`) as a ``keras.Sequential``, or None for "none".

    They act on float pixels in [0, 255] while training only; at prediction they pass
    the images through unchanged.
    """
    import keras

    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {tuple(AUGMENTATIONS)}, got {augment!r}")
    if augment == "none":
        return None
    a = LIGHT_AUGMENTATION
    black = dict(fill_mode="constant", fill_value=0.0)
    return keras.Sequential([
        keras.layers.RandomRotation(a["rotation_degrees"] / 360.0, seed=seed, **black),
        keras.layers.RandomTranslation(a["shift"], a["shift"], seed=seed + 1, **black),
        keras.layers.RandomZoom(a["zoom"], seed=seed + 2, **black)], name="augment_light")


def with_preprocessing(model, backbone: str, scaling: str = "preprocess_input", augment: str = "none", seed: int = 0):
    """``model`` behind :func:`preprocess_input`, as a model that takes the uint8 images themselves.

    It shares ``model``'s layers (training it trains ``model``). Fed uint8, the host gathers
    and copies a quarter of the bytes that float32 inputs take, and the scaling runs where
    the model runs, on the GPU if there is one. Keras' ``preprocess_input`` does the same
    arithmetic on tensors as on arrays. ``augment`` puts :func:`augmentation`'s random
    layers (training only, seeded with ``seed``) before the scaling.
    """
    import keras

    images = keras.Input(model.input_shape[1:], dtype="uint8", name="uint8_images")
    layers = augmentation(augment, seed)
    x = images
    if layers is not None:
        x = layers(keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"), name="to_float")(x))
    scaled = keras.layers.Lambda(lambda t: _scale(backbone, keras.ops.cast(t, "float32"), scaling),
                                 name="preprocess_input")(x)
    return keras.Model(images, model(scaled), name=f"{model.name}_from_uint8")


class WeightsUnavailable(RuntimeError):
    """ImageNet weights were asked for but cannot be had; the message says what to do."""


def weights_provenance(weights) -> dict:
    """Describe a ``weights`` argument: kind, file, SHA-256, and what the JSON file of the same name
    beside it (its description: missing and quantized tensors, origin) says.

    ``weights`` is ``"none"``, ``"imagenet"`` (Keras' own download) or a path to a
    Keras ``.weights.h5`` file of the base (include_top=False).
    """
    if weights in (None, "none"):
        return {"requested": "none", "kind": "none", "file": None, "sha256": None,
                "complete_imagenet": False, "missing_tensors": None, "label": "random"}
    if weights == "imagenet":
        return {"requested": "imagenet", "kind": "imagenet (keras download)", "file": None,
                "sha256": None, "complete_imagenet": True, "missing_tensors": [],
                "label": "ImageNet (Keras, complete)"}
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found; pass an existing .weights.h5, 'imagenet' or 'none'")
    card_path = path.with_name(path.name.replace(".weights.h5", ".json"))
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    missing = card.get("missing_tensors")
    partial = bool(missing) or ".partial." in path.name
    record = {"requested": portable_path(weights), "kind": "partial imagenet file" if partial else "file",
              "file": path.name, "sha256": sha256_file(path), "complete_imagenet": False if partial else None,
              "missing_tensors": missing, "missing_parameters": card.get("missing_parameters"),
              "dequantized_tensors": card.get("dequantized_tensors"),
              "dequantized_parameters": card.get("dequantized_parameters"),
              "stored_values": card.get("stored_values"), "origin": card.get("origin")}
    record["label"] = init_label(record)
    return record


#: How BatchNormalization layers behave while fine-tuning (see :func:`build_model`), in words.
BATCHNORM_MODES = {
    "keras2": "Keras 2.3 / TensorFlow 2.1: every BatchNormalization layer, frozen ones included, "
              "normalises with the batch's statistics while training",
    "batch_statistics": "Keras 3 (and TensorFlow 2.2 on): frozen BatchNormalization layers use their "
                        "ImageNet statistics, trainable ones the batch's",
    "inference": "keras.io transfer-learning guide: every BatchNormalization layer frozen, using its "
                 "ImageNet statistics",
}


#: The arithmetic a model computes in (``precision``), in words.
PRECISIONS = {
    "float32": "float32 throughout (Keras' default)",
    "mixed_bfloat16": "Keras' mixed precision: layers compute in bfloat16 and keep float32 variables; "
                      "the classifier's softmax output is float32",
}


@contextlib.contextmanager
def compute_precision(precision: str = "float32"):
    """Build the layers made inside the block with ``precision``'s Keras dtype policy (:data:`PRECISIONS`);
    the policy set before is back after it, even on an error.

    A layer keeps the policy it was built with, so a model built here computes in ``precision``
    while a process (a Dask worker) builds its next model with the policy it had. Keras keeps the
    global policy per thread.
    """
    import keras

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def has_frozen_batchnorm(backbone: str) -> bool:
    """Whether layers below Table 1's cutoff include BatchNormalization (all but VGG19)."""
    return get_backbone(backbone).frozen_batchnorm


def _batch_statistics_when_frozen(layer):
    """Make a frozen BatchNormalization layer normalise with batch statistics while training.

    This is what Keras 2.3 and TensorFlow 2.1's ``keras.applications`` did with a layer set
    to ``trainable=False`` (keras-team/keras#9965, tensorflow/tensorflow#36700): batch mean
    and variance in the training phase, moving averages left as loaded (a non-trainable
    layer's updates were not run), moving averages at inference. Keras 3 instead runs a
    frozen layer in inference mode. The layer's class and saved form are unchanged.
    """
    from keras import backend, ops

    def call(inputs, training=None, mask=None):
        if not training:
            return type(layer).call(layer, inputs, training=training, mask=mask)
        x = ops.cast(inputs, backend.result_type(inputs.dtype, "float32"))
        mean, variance = layer._moments(x, mask)
        out = ops.batch_normalization(
            x, mean, variance, axis=layer.axis, epsilon=layer.epsilon,
            offset=ops.cast(layer.beta, x.dtype) if layer.center else None,
            scale=ops.cast(layer.gamma, x.dtype) if layer.scale else None)
        return ops.cast(out, layer.compute_dtype)

    layer.call = call


def _own_default_seeds(seed: int) -> None:
    """Let Keras draw the default seeds of its initializers from a generator of our own.

    Keras draws them from Python's global ``random``, which other threads of the process (a
    Dask worker's event loop) draw from too, so a model built in a worker got other initial
    weights than the same model built alone. ``random.Random(seed)`` draws what the global
    generator draws after ``random.seed(seed)``, so a model built alone is unchanged.
    """
    import random

    import keras

    try:  # where Keras keeps that generator (keras 3.15): a private module, so checked
        from keras.src.random import seed_generator
        ok = isinstance(seed_generator.python_random, random.Random) or seed_generator.python_random is random
        ok = ok and "python_random" in seed_generator.make_default_seed.__code__.co_names
    except (ImportError, AttributeError):
        ok = False
    if not ok:
        raise RuntimeError(f"Keras {keras.__version__} no longer draws its default seeds from "
                           "keras.src.random.seed_generator.python_random, so models built in a Dask worker "
                           "could get other initial weights than alone; install the Keras of requirements.txt "
                           "or update xray_transfer.models._own_default_seeds")
    seed_generator.python_random = random.Random(seed)


def build_model(backbone: str, input_shape=(200, 266, 3), weights="none", pooling="avg",
                dropout=0.5, n_classes=3, seed=0, batchnorm="keras2", precision="float32"):
    """Build Table 1's network for ``backbone``: base frozen below the cutoff, classifier on top.

    Parameters
    ----------
    backbone : str
        A key of :data:`BACKBONES`.
    input_shape : (int, int, int), default (200, 266, 3)
        Height, width, channels.
    weights : {"none", "imagenet"} or path, default "none"
        Base initialisation: random, Keras' ImageNet download (needs internet),
        or a local ``.weights.h5`` of the base.
    pooling : {"avg", "max", "flatten"}, default "avg"
        How the base's feature map becomes a vector (unstated in the paper).
    dropout : float, default 0.5
        Dropout rate between the two hidden layers, where Table 1 has two.
    n_classes : int, default 3
    seed : int, default 0
        Seed for the random initialisation of every layer.
    batchnorm : {"keras2", "batch_statistics", "inference"}, default "keras2"
        How BatchNormalization layers behave while training (:data:`BATCHNORM_MODES`).
        "keras2": every one normalises with the batch's statistics, frozen ones (below
        the cutoff) included, which keep their moving averages: the behaviour of Keras
        2.3 and TensorFlow 2.1, which the paper (early 2020) most likely had.
        "batch_statistics": frozen ones run in inference mode, trainable ones use and
        update batch statistics (Keras 3, TensorFlow >= 2.2). "inference": every one
        is frozen in inference mode (the keras.io transfer-learning guide). At
        inference all three use the moving averages.
    precision : {"float32", "mixed_bfloat16"}, default "float32"
        The arithmetic of every layer (:data:`PRECISIONS`). The softmax is float32 in both, as
        the Keras mixed-precision guide advises for the output layer.

    Returns
    -------
    keras.Model
        A flat functional model: ``model.layers[:cutoff]`` are the frozen base layers.
    """
    import keras

    spec = get_backbone(backbone)
    if pooling not in ("avg", "max", "flatten"):
        raise ValueError(f"pooling must be 'avg', 'max' or 'flatten', got {pooling!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if batchnorm not in BATCHNORM_MODES:
        raise ValueError(f"batchnorm must be one of {BATCHNORM_MODES}, got {batchnorm!r}")
    with compute_precision(precision):
        return _build(spec, input_shape, weights, pooling, dropout, n_classes, seed, batchnorm)


def _build(spec, input_shape, weights, pooling, dropout, n_classes, seed, batchnorm):
    """:func:`build_model`'s body, under the dtype policy in force."""
    import keras

    backbone = spec.key
    keras.utils.set_random_seed(seed)
    _own_default_seeds(seed)
    ctor = getattr(keras.applications, spec.application)
    keras_weights = None
    if weights == "imagenet":
        keras_weights = "imagenet"
    elif weights not in (None, "none"):
        weights_provenance(weights)  # existence check with a clear error
    try:
        base = ctor(include_top=False, weights=keras_weights, input_shape=tuple(input_shape))
    except Exception as err:  # the download failed (offline) or Keras refused the shape
        if keras_weights == "imagenet":
            reg = OFFLINE_WEIGHTS.get(backbone)
            local = f" (an offline copy: weights='offline', file {reg.file})" if reg else ""
            raise WeightsUnavailable(
                f"Keras could not get the ImageNet weights of {spec.application} ({type(err).__name__}: {err}). "
                f"Offline, pass weights=<path to a .weights.h5 of the base>{local}, or weights='none' "
                "to train from a random initialisation (the book then labels the backbone).") from None
        raise
    if keras_weights is None and weights not in (None, "none"):
        import warnings
        with warnings.catch_warnings(record=True) as caught:  # shown below unless the load fails
            try:
                base.load_weights(str(weights))
            except Exception as err:  # h5py or Keras: garbage file, or another architecture's weights
                first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
                raise WeightsUnavailable(f"{weights}: not weights of the {spec.application} base "
                                         f"(include_top=False) that Keras can load ({first}); pass that "
                                         "backbone's .weights.h5, weights='offline' or weights='none'") from None
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if len(base.layers) != spec.n_layers:
        raise RuntimeError(f"{spec.application} has {len(base.layers)} layers in this Keras, Table 1 assumes "
                           f"{spec.n_layers}; the cutoff {spec.cutoff} would not mean the paper's layer")
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= spec.cutoff
        if isinstance(layer, keras.layers.BatchNormalization):
            if batchnorm == "inference":
                layer.trainable = False  # a frozen BatchNormalization layer runs in inference mode
            elif batchnorm == "keras2" and not layer.trainable:
                _batch_statistics_when_frozen(layer)
    x = base.output
    x = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D,
         "flatten": keras.layers.Flatten}[pooling](name="head_pool")(x)
    for j, units in enumerate(spec.hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense_{j + 1}")(x)
        if len(spec.hidden) == 2 and j == 0:
            x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    out = keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="head_softmax")(x)
    return keras.Model(base.input, out, name=f"{backbone}_transfer")


def n_frozen(model) -> int:
    """Number of layers that training leaves untouched (Table 1's cutoff, if built by :func:`build_model`)."""
    return sum(not layer.trainable for layer in model.layers)


def split_at_cutoff(model, cutoff: int):
    """Split a flat model into the frozen part and the trainable tail.

    Returns ``(frozen, tail)``: ``frozen`` maps the input to every tensor that a
    layer at or after ``cutoff`` reads from a layer before it (several when skip
    connections cross the cutoff); ``tail`` maps those tensors to the output and
    shares its layers, hence its weights, with ``model``.
    """
    import keras

    before = {id(layer) for layer in model.layers[:cutoff]}
    crossing, seen = [], set()
    for layer in model.layers[cutoff:]:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                op = t._keras_history[0]
                if id(op) in before and id(t) not in seen:
                    seen.add(id(t))
                    crossing.append(t)
    if not crossing:
        raise ValueError(f"no tensor crosses cutoff {cutoff}")
    frozen = keras.Model(model.input, crossing, name="frozen_part")
    tail = keras.Model(crossing, model.output, name="trainable_tail")
    return frozen, tail
