"""How much arithmetic a run is: XLA's own FLOP count of each compiled step, times the protocol's steps.

The GPU benchmark divides these counts by its measured seconds to give achieved TFLOP/s, and by
the chip's dense peak to give the share of the limit. The count is XLA's ``cost_analysis`` of the
step Keras itself runs (``train_step``, ``predict_step``), lowered with JAX for the run's shapes;
it does not depend on the device, so it is made once, on any machine, with Keras on JAX::

    KERAS_BACKEND=jax python -m xray_transfer.flops --out artifacts/benchmark/flops.json

A step's count is for one batch. The protocol count (:func:`protocol_flops`) adds, per fold, every
training step of every epoch, the held-out fold predicted after each epoch (as
:meth:`xray_transfer.train.Trainer.fit_fold` does), and on the fast path the frozen part run
once over every image.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

#: Dense peak of chips the benchmark may run on, in TFLOP/s, from NVIDIA's data sheets (the
#: sheets' TF32 and BF16 figures are with sparsity: halved here). The H200 and the H100 SXM
#: (reported as "NVIDIA H100 80GB HBM3") have the same peaks: 67 TFLOP/s FP32, 494.5 TF32
#: dense, 989 BF16 dense. The H100 PCIe is slower and is not listed.
PEAK_TFLOPS = {"NVIDIA H200": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.0},
               "NVIDIA H100 80GB HBM3": {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.0}}
#: The arithmetic of each name in :data:`PEAK_TFLOPS`, in words.
ARITHMETIC = {"float32": "FP32", "tf32": "TF32 tensor cores", "bfloat16": "BF16 tensor cores"}


def arithmetic(device: str, backend: str, precision: str = "float32", matmul_precision=None,
               tf32_override=None) -> tuple[str | None, str]:
    """Which of a chip's peaks bounds a run's convolutions and matrix products, and why.

    ``precision`` is the run's (:data:`xray_transfer.models.PRECISIONS`); ``matmul_precision`` is
    JAX's ``jax_default_matmul_precision`` (None: XLA's default) and ``tf32_override`` the
    ``NVIDIA_TF32_OVERRIDE`` environment variable, as the benchmark records them.
    Returns ``(key of PEAK_TFLOPS' entry or None, reason)``; None on a CPU or with a backend
    whose default we have not checked.

    >>> arithmetic("gpu: NVIDIA H200", "jax")[0], arithmetic("gpu: NVIDIA H200", "jax", "mixed_bfloat16")[0]
    ('tf32', 'bfloat16')
    >>> arithmetic("cpu: Intel(R) Xeon(R) Processor x2", "tensorflow")[0] is None
    True
    """
    if not device.startswith("gpu"):
        return None, "no dense peak is known for this device"
    if precision == "mixed_bfloat16":
        return "bfloat16", "mixed_bfloat16: convolutions and matrix products in bfloat16"
    if str(tf32_override) == "0":
        return "float32", "NVIDIA_TF32_OVERRIDE=0 turns TF32 off"
    if backend == "jax":
        # XLA's default precision lets cuBLAS/cuDNN run float32 convolutions and matrix products
        # on TF32 tensor cores on Ampere and later (jax-ml/jax#12008, "Many JAX tests fail on A100
        # because of TF32 math"; jax.default_matmul_precision: 'float32' asks for full float32).
        if matmul_precision in (None, "default", "fastest", "tensorfloat32", "bfloat16_3x"):
            return "tf32", "float32 under JAX's default matmul precision runs on TF32 tensor cores"
        return "float32", f"jax_default_matmul_precision={matmul_precision!r}: full float32"
    if backend == "tensorflow":  # TF32 is on by default (tf.config.experimental.enable_tensor_float_32_execution)
        return "tf32", "TensorFlow runs float32 convolutions and matrix products in TF32 by default"
    return None, f"the default arithmetic of Keras on {backend} on a GPU is not checked here"


def peak(device: str, backend: str, precision: str = "float32", matmul_precision=None,
         tf32_override=None) -> dict:
    """The chip's dense peak (TFLOP/s) for a run's arithmetic (:func:`arithmetic`), never a guess.

    Returns ``chip``, ``arithmetic`` (a key of :data:`ARITHMETIC` or None), ``peak_tflops``
    (None when the chip or its arithmetic is not in :data:`PEAK_TFLOPS`) and ``note``.

    >>> peak("gpu: NVIDIA H200", "jax")["peak_tflops"], peak("gpu: NVIDIA A100", "jax")["peak_tflops"]
    (494.5, None)
    >>> peak("gpu: NVIDIA H100 80GB HBM3", "jax", "mixed_bfloat16")["peak_tflops"], peak("gpu: NVIDIA H100 PCIe", "jax")["peak_tflops"]
    (989.0, None)
    """
    chip = device.split(": ", 1)[-1]
    kind, why = arithmetic(device, backend, precision, matmul_precision, tf32_override)
    value = PEAK_TFLOPS.get(chip, {}).get(kind) if kind else None
    if kind and value is None:
        why = f"{why}; no data-sheet peak of {chip} is recorded here"
    return {"chip": chip, "arithmetic": kind, "peak_tflops": value, "note": why}


def _lowered_flops(fn, *args) -> float:
    """XLA's FLOP count of ``fn(*args)`` compiled with JAX (``cost_analysis()['flops']``)."""
    import jax

    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
        cost = cost[0]
    return float(cost["flops"])


def step_flops(cfg: dict) -> dict:
    """FLOPs of one batch of each step a run of ``cfg`` (:func:`xray_transfer.train.make_config`) executes.

    Returns ``train_step``, ``predict_step`` and ``frozen_step`` (0 unless the run takes the fast
    path, where the frozen part runs once per image before training), for a batch of
    ``cfg["batch_size"]`` images of ``cfg["image_size"]``.
    """
    import keras

    from .models import build_model, get_backbone, split_at_cutoff, with_preprocessing
    from .train import use_fast_path

    if keras.backend.backend() != "jax":
        raise RuntimeError("FLOP counts come from XLA through JAX: set KERAS_BACKEND=jax")
    h, w = cfg["image_size"]
    bs = cfg["batch_size"]
    model = build_model(cfg["backbone"], input_shape=(h, w, 3), weights="none", pooling=cfg["pooling"],
                        dropout=cfg["dropout"], seed=cfg["seed"], batchnorm=cfg["batchnorm"])
    fast, _ = use_fast_path(cfg)
    frozen = None
    if fast:
        frozen, net = split_at_cutoff(model, get_backbone(cfg["backbone"]).cutoff)
    else:
        net = with_preprocessing(model, cfg["backbone"])
    net.compile(optimizer=keras.optimizers.Adam(cfg["learning_rate"]),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    net.optimizer.build(net.trainable_variables)
    images = np.zeros((bs, h, w, 3), np.float32 if fast else np.uint8)
    if fast:
        frozen_inputs = frozen(images)
        x = [np.zeros(t.shape, np.float32) for t in (frozen_inputs if isinstance(frozen_inputs, list)
                                                      else [frozen_inputs])]
        x = x if len(x) > 1 else x[0]
    else:
        x = images
    y = np.zeros((bs,), np.int32)
    values = lambda vs: [v.value for v in vs]  # noqa: E731
    metrics_vars = [v for m in net.metrics for v in m.variables]
    state = (values(net.trainable_variables), values(net.non_trainable_variables),
             values(net.optimizer.variables), values(metrics_vars))
    out = {"train_step": _lowered_flops(net.train_step, state, (x, y)),
           "predict_step": _lowered_flops(net.predict_step, state[:2], (x,)),
           "frozen_step": 0.0}
    if fast:
        fstate = (values(frozen.trainable_variables), values(frozen.non_trainable_variables))
        out["frozen_step"] = _lowered_flops(frozen.predict_step, fstate, (images,))
    return {**out, "batch_size": bs, "image_size": [h, w], "fast_path": bool(fast)}


def protocol_flops(steps: dict, n_images: int = 1428, n_splits: int = 10, epochs: int = 10,
                   predictions: int | None = None) -> float:
    """FLOPs of a whole cross-validation from :func:`step_flops`' per-batch counts.

    Per fold: ``epochs`` passes over the training images in batches (the last one partial,
    counted in proportion), the held-out fold predicted ``predictions`` times (default after
    every epoch, as our trainer does; a plain ``model.fit`` with validation and a final predict:
    ``epochs + 1``) in full padded batches; on the fast path, the frozen part once over all images.

    >>> protocol_flops({"train_step": 2.0, "predict_step": 1.0, "frozen_step": 0.0, "batch_size": 10},
    ...                n_images=100, n_splits=10, epochs=1)  # 10 folds of (9 steps x 2 + 1 prediction x 1)
    190.0
    """
    bs = steps["batch_size"]
    n_test = n_images / n_splits
    n_train = n_images - n_test
    predictions = epochs if predictions is None else predictions
    per_fold = epochs * n_train / bs * steps["train_step"] + predictions * math.ceil(n_test / bs) * steps["predict_step"]
    frozen = math.ceil(n_images / bs) * steps["frozen_step"]
    return n_splits * per_fold + frozen


#: The protocol :func:`main` counts: the paper's 10 folds of 10 epochs over the 1428 images.
PROTOCOL = {"n_images": 1428, "n_splits": 10, "epochs": 10}


def main(argv=None) -> int:
    from .models import BACKBONES
    from .provenance import environment
    from .train import make_config, use_fast_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    p.add_argument("--batchnorm", nargs="+", default=["keras2", "inference"],
                   choices=["keras2", "batch_statistics", "inference"])
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():  # only an earlier count of this command is replaced
        try:
            ours = json.loads(out.read_text()).get("what", "").startswith("XLA cost_analysis")
        except (ValueError, AttributeError):
            ours = False
        if not ours:
            print(f"--out {out}: exists and is not a FLOP count of this command, so it is left alone; "
                  "choose another file", file=sys.stderr)
            return 1
    rows = {}
    for b in args.backbones:
        for mode in args.batchnorm:
            cfg = make_config(backbone=b, batchnorm=mode, weights="none")
            # our trainer's path; under the benchmark's BatchNorm mode also the whole network, as a
            # plain model.fit trains it, where ours takes the fast path
            todo = [("", cfg)]
            if mode == "keras2" and use_fast_path(cfg)[0]:
                todo.append(("/whole", make_config(backbone=b, batchnorm=mode, weights="none", fast=False)))
            for suffix, c in todo:
                steps = step_flops(c)
                key = f"{b}/{mode}{suffix}"
                rows[key] = {**steps, "backbone": b, "batchnorm": mode,
                             "config": {k: v for k, v in c.items() if k != "weights"},
                             "protocol": PROTOCOL, "protocol_flops": protocol_flops(steps, **PROTOCOL)}
                print(f"{key:36s} train {steps['train_step'] / 1e12:7.3f} TFLOP/batch  "
                      f"protocol {rows[key]['protocol_flops'] / 1e15:6.2f} PFLOP", flush=True)
    record = {"what": "XLA cost_analysis FLOPs per batch of each step, and per 10-fold protocol",
              "command": "python -m xray_transfer.flops " + " ".join(argv if argv is not None else sys.argv[1:]),
              "weights": "none: random values (a FLOP count does not depend on them)",
              "data": "none: random inputs of the counted shapes (no images are read)",
              "environment": environment(), "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
