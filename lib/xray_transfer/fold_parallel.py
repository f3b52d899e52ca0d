"""The folds of a run trained at once: one compiled JAX program steps every fold's model.

The fold models have the same shapes and differ only in their data, so their state
(trainable variables, the non-trainable ones that change: BatchNorm moving statistics and
the dropout and augmentation seed generators, and Adam's variables) is stacked along a
leading fold axis and one training step, vectorised over that axis with ``jax.vmap`` and
compiled with ``jax.jit``, steps every fold. Frozen layers' variables, which training never
changes, are shared by the folds (not stacked), so a frozen convolution runs as one
convolution over the folds' batches.

Each fold gets what :meth:`~xray_transfer.train.Trainer.fit_fold` gives it: the Trainer's
initial state, its own batch order (``np.random.default_rng(fold_seed)``, a permutation per
epoch), the same loss (sparse categorical cross-entropy, mean over the batch) and Adam
(Keras 3's stateless API: ``model.stateless_call``, ``optimizer.stateless_apply``), and its
held-out images predicted after every epoch. Folds of other sizes end an epoch with other
batch sizes: a step runs the folds whose batch has one size together, so no batch is padded
(BatchNorm in training mode sees every fold's real batch only). Keras 3 on JAX only.

The result is the run trained fold by fold up to floating-point rounding (the vectorised
convolutions add in another order). Adam's first steps move every weight by about the learning
rate whatever its gradient's size, so rounding in a near-zero gradient can flip a step: from
random weights MobileNet's predictions then differ by about the learning rate, while at a
learning rate of 1e-7 they are the same to the bit (``tests/test_fold_parallel.py``).
:func:`xray_transfer.train.cross_validate` uses it with ``folds_together=True``; the run's
identity is unchanged and each fold file says how it was trained (``made_by.trained``).
"""
from __future__ import annotations

import math
import time

import numpy as np


def check_backend() -> None:
    """Raise RuntimeError unless Keras runs on JAX (fold-parallel training is a JAX program)."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"fold-parallel training needs Keras on JAX (KERAS_BACKEND=jax), and Keras here runs on "
                           f"{keras.backend.backend()}; set KERAS_BACKEND=jax or train the folds one by one")


def batch_sizes(n_train: int, batch_size: int) -> list[int]:
    """The sizes of one epoch's batches, as ``model.fit`` cuts ``n_train`` images.

    >>> batch_sizes(10, 4)
    [4, 4, 2]
    """
    return [min(batch_size, n_train - i) for i in range(0, n_train, batch_size)]


def _layers(layer):
    yield layer
    for sub in getattr(layer, "layers", []):
        yield from _layers(sub)


class FoldSteps:
    """The compiled training and prediction steps of ``net`` over a leading fold axis.

    Parameters
    ----------
    net : keras.Model
        A compiled model (its optimizer built), as :class:`~xray_transfer.train.Trainer` has.
    """

    def __init__(self, net):
        import jax
        import keras

        check_backend()
        self.net = net
        frozen = {id(w) for layer in _layers(net) if not layer.trainable for w in layer.weights}
        ntv = net.non_trainable_variables
        #: positions of the non-trainable variables that training changes, and of the frozen (shared) ones
        self.own = [i for i, v in enumerate(ntv) if id(v) not in frozen]
        self.shared = [i for i, v in enumerate(ntv) if id(v) in frozen]
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        def merge(own, shared):
            ntv = [None] * (len(own) + len(shared))
            for i, v in zip(self.own, own):
                ntv[i] = v
            for i, v in zip(self.shared, shared):
                ntv[i] = v
            return ntv

        def loss_and_updates(tv, own, shared, x, y):
            y_pred, ntv = net.stateless_call(tv, merge(own, shared), x, training=True)
            return loss_fn(y, y_pred), (y_pred, [ntv[i] for i in self.own])

        def train_step(tv, own, opt, shared, data, labels, idx):
            x = [d[idx] for d in data]
            y = labels[idx]
            (loss, (y_pred, own)), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(
                tv, own, shared, x if len(x) > 1 else x[0], y)
            tv, opt = net.optimizer.stateless_apply(opt, grads, tv)
            correct = keras.ops.sum(keras.ops.cast(keras.ops.argmax(y_pred, axis=-1) == y, "int32"))
            return tv, own, opt, loss, correct

        def predict_step(tv, own, shared, data, idx):
            x = [d[idx] for d in data]
            y_pred, _ = net.stateless_call(tv, merge(own, shared), x if len(x) > 1 else x[0], training=False)
            return y_pred

        fold = 0, 0, 0, None, None, None, 0  # which arguments have a fold axis
        self.train_step = jax.jit(jax.vmap(train_step, in_axes=fold))
        self.predict_step = jax.jit(jax.vmap(predict_step, in_axes=(0, 0, None, None, 0)))

    def initial_state(self, n_folds: int):
        """The net's current state (trainable, own non-trainable, optimizer), stacked ``n_folds`` times,
        and the shared frozen variables."""
        import jax.numpy as jnp

        net = self.net
        ntv = [v.value for v in net.non_trainable_variables]
        stack = lambda values: [jnp.stack([jnp.asarray(v)] * n_folds) for v in values]  # noqa: E731
        state = (stack(v.value for v in net.trainable_variables), stack(ntv[i] for i in self.own),
                 stack(v.value for v in net.optimizer.variables))
        return state, [ntv[i] for i in self.shared]


def steps_of(trainer) -> FoldSteps:
    """The :class:`FoldSteps` of a trainer's net, made once per trainer (so compiled once)."""
    steps = getattr(trainer, "_fold_steps", None)
    if steps is None or steps.net is not trainer.net:
        steps = trainer._fold_steps = FoldSteps(trainer.net)
    return steps


def fit_folds(trainer, folds, labels, fold_seeds, progress=None) -> list[dict]:
    """Train several folds at once; return, per fold, what ``trainer.fit_fold`` returns.

    Parameters
    ----------
    trainer : xray_transfer.train.Trainer
        Builds nothing new: its net, optimizer, initial state (:meth:`Trainer.reset`) and inputs.
    folds : list of (array, array)
        Training and held-out image indices of each fold (each fold needs held-out images).
    labels : array of int
        Every image's class.
    fold_seeds : list of int
        Each fold's batch-order seed, as :meth:`Trainer.fit_fold` takes it.
    progress : tqdm, optional
        Advanced by the number of folds after each epoch.

    Returns
    -------
    list of dict
        ``history`` (``seconds``: the epoch's wall seconds shared by all folds), ``probs`` and
        ``predict_seconds`` (the last epoch's prediction of all folds), per fold.
    """
    import jax
    import jax.numpy as jnp
    from sklearn.metrics import accuracy_score, log_loss

    from .train import TrainingDiverged

    cfg, bs, n = trainer.cfg, trainer.cfg["batch_size"], len(folds)
    steps = steps_of(trainer)
    trainer.reset()
    (tv, own, opt), shared = steps.initial_state(n)
    data = [jnp.asarray(a) for a in trainer.inputs]  # the run's inputs on the device, once
    y_all = jnp.asarray(np.asarray(labels), dtype="int32")
    rngs = [np.random.default_rng(s) for s in fold_seeds]
    sizes = [batch_sizes(len(tr), bs) for tr, _ in folds]
    # held-out images, padded as Trainer.predict pads them (prediction treats every image alone)
    width = -(-max(len(te) for _, te in folds) // bs) * bs
    test = np.stack([np.concatenate([te, np.repeat(te[:1], width - len(te))]) for _, te in folds])
    history = [{"loss": [], "accuracy": [], "test_loss": [], "test_accuracy": [], "seconds": []} for _ in folds]
    probs, predict_seconds = None, 0.0
    for epoch in range(cfg["epochs"]):
        perms = [tr[rng.permutation(len(tr))] for (tr, _), rng in zip(folds, rngs)]
        t0 = time.perf_counter()
        logged = []
        for j in range(max(map(len, sizes))):
            groups: dict = {}  # batch size -> folds that take a batch of that size at step j
            for f, s in enumerate(sizes):
                if j < len(s):
                    groups.setdefault(s[j], []).append(f)
            for size, fs in groups.items():
                idx = jnp.asarray(np.stack([perms[f][j * bs:j * bs + size] for f in fs]))
                if len(fs) == n:
                    tv, own, opt, loss, correct = steps.train_step(tv, own, opt, shared, data, y_all, idx)
                else:  # only these folds step: take their state out, step it, put it back
                    at = jnp.asarray(fs)
                    sub = [[a[at] for a in part] for part in (tv, own, opt)]
                    *sub, loss, correct = steps.train_step(*sub, shared, data, y_all, idx)
                    tv, own, opt = [[a.at[at].set(b) for a, b in zip(part, new)]
                                    for part, new in zip((tv, own, opt), sub)]
                logged.append((fs, size, loss, correct))
        jax.block_until_ready((tv, own, opt))
        seconds = time.perf_counter() - t0
        loss_sum, seen, correct_sum = np.zeros(n), np.zeros(n), np.zeros(n)
        for fs, size, loss, correct in logged:  # as Keras' epoch logs: batch losses weighted by batch size
            loss_sum[fs] += np.asarray(loss, dtype=np.float64) * size
            correct_sum[fs] += np.asarray(correct)
            seen[fs] += size
        t0 = time.perf_counter()
        out = [steps.predict_step(tv, own, shared, data, jnp.asarray(test[:, i:i + bs])) for i in range(0, width, bs)]
        probs = np.asarray(jnp.concatenate(out, axis=1), dtype=np.float64)
        predict_seconds = time.perf_counter() - t0
        for f, (_, te) in enumerate(folds):
            loss = loss_sum[f] / seen[f]
            if not math.isfinite(loss):
                raise TrainingDiverged(
                    f"{cfg['backbone']}: training loss of fold {f + 1} of {n} trained at once became {loss} in "
                    f"epoch {epoch + 1}; lower learning_rate (now {cfg['learning_rate']}) and start the run afresh")
            p = probs[f, :len(te)]
            if not np.isfinite(p).all():
                raise TrainingDiverged(
                    f"{cfg['backbone']}: {int((~np.isfinite(p)).any(1).sum())} test prediction(s) of fold {f + 1} "
                    f"of {n} trained at once are NaN or infinite in epoch {epoch + 1}; lower learning_rate and "
                    "start afresh")
            h, yte = history[f], labels[te]
            h["loss"].append(float(loss))
            h["accuracy"].append(float(correct_sum[f] / seen[f]))
            h["test_loss"].append(float(log_loss(yte, p, labels=[0, 1, 2])))
            h["test_accuracy"].append(float(accuracy_score(yte, p.argmax(1))))
            h["seconds"].append(seconds)
        if progress is not None:
            progress.set_postfix(epoch=epoch + 1, loss=f"{np.mean([h['loss'][-1] for h in history]):.3f}",
                                 test_acc=f"{np.mean([h['test_accuracy'][-1] for h in history]):.3f}")
            progress.update(n)
    return [{"history": h, "probs": probs[f, :len(te)], "predict_seconds": predict_seconds}
            for f, (h, (_, te)) in enumerate(zip(history, folds))]
