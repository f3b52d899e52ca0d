"""Every experiment of the book as data, and one runner for any part of it, on Dask.

An :class:`Experiment` is plain data: a name, a kind (``cv`` for a cross-validation,
``final`` for a model trained on all images, ``bench`` for the benchmark), training
parameters, an output folder below ``artifacts/``, a priority, and optionally a subset of
folds or the Keras backend or device it must be made with. :data:`REGISTRY` lists them
all; a family of entries is a function returning a list (see :func:`audit_runs`), so a new
family is one line: ``REGISTRY += my_family()``.

A cross-validation expands to one task per fold. :func:`run_grid` submits every task to a
Dask cluster in priority order; each fold is trained by :func:`xray_transfer.train.train_fold`
on a worker, which holds the fold by a lock while it trains and writes it atomically when
complete. A worker killed mid-fold loses that fold only: Dask runs the task again on
another worker, and a runner started again skips every fold already written.

    xray-transfer experiments list ['audit/*']
    xray-transfer experiments run paper/vgg19 'audit/bn-*' [--scheduler ADDRESS] [--workers N]
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin

#: The paper's five backbones, in Table 1's order.
BACKBONES = ("vgg19", "mobilenet", "inception_v3", "xception", "inception_resnet_v2")
#: Reduced settings that check a grid in a minute or two (``--smoke``).
SMOKE = dict(limit=60, n_splits=2, epochs=1, image_size=(75, 100))
#: Workers per GPU on one machine by default: a fold leaves most of a large GPU idle.
WORKERS_PER_GPU = 4


@dataclass(frozen=True)
class Experiment:
    """One experiment of the book.

    Parameters
    ----------
    name : str
        ``family/what``, e.g. ``paper/vgg19``.
    kind : {"cv", "final", "bench"}
        A cross-validation (one task per fold), a model trained on all images, or the benchmark.
    out : str
        Output below the output root (``artifacts/``): a run folder, a model record, a folder.
    params : dict
        Training parameters (:data:`xray_transfer.train.DEFAULTS`); for ``bench`` the
        arguments of :func:`xray_transfer.benchmark.run_benchmark`.
    priority : int
        Higher runs first.
    folds : tuple of int, optional
        Only these folds of the cross-validation (default all).
    backend, device : str, optional
        The Keras backend (``"tensorflow"``, ``"jax"``) or device kind (``"cpu"``, ``"gpu"``)
        it must be made with; other machines refuse it.
    """

    name: str
    kind: str
    out: str
    params: dict = field(default_factory=dict)
    priority: int = 0
    folds: tuple | None = None
    backend: str | None = None
    device: str | None = None


def paper_runs() -> list[Experiment]:
    """Table 2: each backbone with the paper's protocol."""
    return [Experiment(f"paper/{b}", "cv", f"runs/{b}", {"backbone": b}, priority=100) for b in BACKBONES]


def audit_runs(variant: str, params: dict, backbones, priority: int) -> list[Experiment]:
    """One audit variant (``audit/<variant>-<backbone>``) for several backbones."""
    return [Experiment(f"audit/{variant}-{b}", "cv", f"audit/{variant}-{b}", {"backbone": b, **params},
                       priority=priority) for b in backbones]


def final_models() -> list[Experiment]:
    """Each backbone trained on all images (the audit's probes and ``xray-transfer predict``)."""
    return [Experiment(f"final/{b}", "final", f"models/{b}.json", {"backbone": b}, priority=20) for b in BACKBONES]


def precision_runs() -> list[Experiment]:
    """Table 2's runs with bfloat16 compute (``precision/<backbone>/mixed_bfloat16``), on a GPU, where
    bfloat16 pays: compared fold by fold with the float32 run of the same backend and device
    (:func:`xray_transfer.precision.compare`)."""
    return [Experiment(f"precision/{b}/mixed_bfloat16", "cv", f"precision/{b}/mixed_bfloat16",
                       {"backbone": b, "precision": "mixed_bfloat16"}, priority=58, device="gpu") for b in BACKBONES]


def robustness_runs() -> list[Experiment]:
    """The robustness grid's runs still to make (:func:`xray_transfer.robustness.experiments`), in its
    priority order, after the paper and audit runs and before the final models."""
    from .robustness import experiments

    return [Experiment(e["name"], "cv", e["out"].removeprefix("artifacts/"),
                       {k: v for k, v in e["params"].items() if k != "weights"}, priority=60 - e["priority"],
                       backend=e["backend"], device=e["device"])
            for e in experiments()]


#: Every experiment of the book, in priority order (ties: this order).
REGISTRY: list[Experiment] = [
    *paper_runs(),
    *audit_runs("bn-batch_statistics", {"batchnorm": "batch_statistics"}, ["inception_v3", "mobilenet"], 90),
    *audit_runs("bn-inference", {"batchnorm": "inference"}, ["inception_v3", "mobilenet"], 90),
    *audit_runs("grouped", {"group_by_patient": True}, ["mobilenet", "vgg19"], 80),
    *audit_runs("lungs-hidden-in-frame", {"image_mask": "lungs_hidden_in_frame"}, ["mobilenet", "vgg19"], 80),
    # the same Xception folds as paper/xception (Keras on JAX, an H200), made with Keras on TensorFlow
    Experiment("robustness/xception/backend-tensorflow", "cv", "robustness/xception/backend-tensorflow",
               {"backbone": "xception"}, priority=60, folds=(0, 1), backend="tensorflow"),
    # bfloat16 compute: after the robustness grid's seeds (59), before its learning rate 1e-3 (58, later here)
    *precision_runs(),
    # the robustness grid (seeds, then learning rate 1e-3, then BatchNorm modes, then the rest)
    *robustness_runs(),
    *final_models(),
    # the benchmark holds the device alone: it runs after every other task of a call
    Experiment("benchmark/cpu", "bench", "benchmark", {"epochs": 2, "limit": 400}, priority=0, device="cpu"),
    Experiment("benchmark/gpu", "bench", "benchmark/gpu", {"epochs": 2, "together": True}, priority=0,
               device="gpu"),
]


def find(name: str) -> Experiment:
    """The experiment named ``name``.

    >>> find("audit/grouped-vgg19").params
    {'backbone': 'vgg19', 'group_by_patient': True}
    """
    return select([name])[0]


def select(patterns=None, registry=None) -> list[Experiment]:
    """The experiments matching any of ``patterns`` (names or shell globs), in priority order.

    Raises ValueError naming a pattern that matches nothing.
    """
    registry = REGISTRY if registry is None else registry
    chosen = set()
    for pattern in patterns or ["*"]:
        hits = [e.name for e in registry if fnmatch.fnmatchcase(e.name, pattern)]
        if not hits:
            raise ValueError(f"no experiment matches {pattern!r}; `xray-transfer experiments list` names them all")
        chosen.update(hits)
    return sorted((e for e in registry if e.name in chosen), key=lambda e: -e.priority)


# ---------------------------------------------------------------- what is done


def folds_wanted(exp: Experiment, n_splits: int) -> list[int]:
    """The folds of a cross-validation with ``n_splits`` folds that ``exp`` asks for."""
    return [k for k in range(n_splits) if exp.folds is None or k in exp.folds]


def _read(path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def status(exp: Experiment, root="artifacts", manifest: str | None = None) -> dict:
    """What ``root`` holds of ``exp``: ``state`` (done, running, partial or missing), ``done`` and ``of``.

    A cross-validation is done when every fold it asks for is there, on folds that this
    scikit-learn draws again, made on the dataset whose manifest hash is ``manifest`` (when
    given); running while a process holds one of its folds. A final model is done when its
    record was made on that dataset; the benchmark when it has a row for every backbone.
    """
    from .train import folds_drawn_again, held_by

    out = Path(root) / exp.out
    if exp.kind == "cv":
        run = _read(out / "run.json")
        n_splits = (run.get("params") or {}).get("n_splits", 10)
        wanted = folds_wanted(exp, n_splits)
        done = [k for k in wanted if (out / f"fold-{k:02d}.json").is_file()]
        running = any(held_by(p) for p in out.glob(".fold-*.lock"))
        try:
            good = bool(run) and folds_drawn_again(out) and manifest in (None, run["dataset"]["manifest_sha256"])
        except (OSError, ValueError, KeyError):
            good = False
        state = ("done" if good and len(done) == len(wanted) else "running" if running
                 else "partial" if done else "missing")
        return {"state": state, "done": len(done), "of": len(wanted)}
    if exp.kind == "final":
        made = (_read(out).get("dataset") or {}).get("manifest_sha256")
        ok = made is not None and manifest in (None, made)
        return {"state": "done" if ok else "missing", "done": int(ok), "of": 1}
    record = _read(out / "benchmark.json")
    ok = manifest in (None, record.get("manifest_sha256")) and set(BACKBONES) <= set(record.get("backbones", {}))
    return {"state": "done" if ok else "missing", "done": int(ok), "of": 1}


def manifest_of(root) -> str | None:
    """The manifest hash of the dataset an output root's runs should be made on, if it records one."""
    return _read(Path(root) / "dataset" / "dataset.json").get("manifest_sha256")


# ---------------------------------------------------------------- the tasks, on a worker


class GridState(WorkerPlugin):
    """What a worker keeps between tasks: datasets, run images, frozen outputs, compiled trainers.

    Registered on every worker as a Dask worker plugin (:func:`run_grid`), so tasks that share a
    backbone reuse what an earlier task on the same worker computed or compiled.
    """

    name = "xray-transfer-grid"

    def __init__(self, keep=4):
        self.datasets, self.images = {}, {}
        # the most recently used frozen outputs and trainers (a trainer holds device memory)
        self.features, self.trainers = Recent(keep), Recent(keep)
        self.meter = None

    def setup(self, worker=None):  # WorkerPlugin's hook
        pass

    def dataset(self, path, limit=None, seed=0):
        from .data import load_dataset
        key = (str(path), limit, seed if limit else 0)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(path, limit=limit, seed=seed if limit else 0)
        return self.datasets[key]


class Recent(OrderedDict):
    """A dict that keeps only its ``maxlen`` most recently used entries."""

    def __init__(self, maxlen=4):
        super().__init__()
        self.maxlen = maxlen

    def __getitem__(self, key):
        self.move_to_end(key)
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.maxlen:
            self.popitem(last=False)


_LOCAL = GridState()


def _state() -> tuple[GridState, str | None]:
    """This worker's :class:`GridState` and address (the process's own outside a worker)."""
    from distributed import get_worker
    try:
        worker = get_worker()
    except ValueError:
        return _LOCAL, None
    return worker.plugins.get(GridState.name, _LOCAL), worker.address


def check_machine(exp: Experiment, device: str | None = None) -> str | None:
    """Why this machine may not make ``exp`` (another Keras backend or device kind), or None.

    ``device`` is this machine's device kind, ``"cpu"`` or ``"gpu"`` (default: where Keras computes).
    """
    import keras

    if exp.backend and keras.config.backend() != exp.backend:
        return (f"{exp.name} must be made with Keras on {exp.backend}, and Keras here runs on "
                f"{keras.config.backend()}; run it with KERAS_BACKEND={exp.backend}, or leave it out")
    if exp.device:
        if device is None:
            from .provenance import device as where
            device = where().split(":")[0]
        if device != exp.device:
            return f"{exp.name} is measured on a {exp.device.upper()}, and this machine computes on a {device.upper()}"
    return None


def run_task(task: dict) -> dict:
    """Make one task of the grid (a fold, a final model, the benchmark); return what happened.

    ``task`` holds the experiment (as a dict), ``fold``, ``dataset``, ``root``, ``models``,
    ``settings`` (training parameters over the experiment's), ``weights`` and ``scheduler``.
    A ``fold`` that is a list is a run's folds trained together (:func:`run_grid`'s ``together``).
    """
    from .gpu_plan import _compile_meter
    from .provenance import environment
    from .train import fit_final, open_run, run_images, train_folds

    exp = Experiment(**task["experiment"])
    state, address = _state()
    wrong = check_machine(exp)
    if wrong:
        raise RuntimeError(wrong)
    if state.meter is None:
        state.meter = _compile_meter() or (lambda: (0, 0.0))
    t0, compiled = time.perf_counter(), state.meter()
    settings = dict(task["settings"])
    limit = settings.pop("limit", None)
    root = Path(task["root"])
    env = environment()
    made_by = {"host": platform.node(), "worker": address, "scheduler": task["scheduler"]}
    entry = {"experiment": exp.name, "fold": task["fold"], **made_by, "device": env["device"],
             "backend": env["backend"], "settings": task["settings"]}
    if exp.kind == "bench":
        from .benchmark import run_benchmark
        bench = {**exp.params, **({"backbones": ["vgg19"], **settings, "epochs": 1, "limit": limit} if limit else {})}
        res = run_benchmark(task["dataset"], root / exp.out, **bench)
        entry["status"] = "speed-ups " + ", ".join(f"{k} x{r['protocol_speedup']:.1f}"
                                                    for k, r in res["backbones"].items())
    else:
        params = {"weights": task["weights"], **exp.params, **settings}
        dataset = state.dataset(task["dataset"], limit, params.get("seed", 0))
        if exp.kind == "cv":
            from .safety import check_output_folder
            out = root / exp.out
            if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):  # (another worker's
                check_output_folder(out, "run")  # run.json being made is a hidden file until it is whole)
            run = open_run(dataset, root / exp.out, **params)
            key = (str(root / exp.out), run["identity_sha256"])
            if key not in state.images:
                state.images = {key: run_images(dataset, run["cfg"])}  # one run's images at a time
            together = isinstance(task["fold"], list)
            made = train_folds(dataset, run, task["fold"] if together else [task["fold"]], state.images[key],
                               state.features, state.trainers, made_by=made_by, together=together)
            entry["status"] = ("made by another process" if not made else
                               f"made {len(made)} folds together" if together else "made")
        else:
            from .safety import check_model_path
            model = Path(task["models"]) / f"{exp.params['backbone']}.keras"
            check_model_path(model)
            rec = fit_final(dataset, model, progress=False, feature_store=state.features,
                            trainer_store=state.trainers, **params)
            (root / exp.out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model.with_suffix(".json"), root / exp.out)
            entry["status"] = f"model sha256 {rec['model_sha256'][:12]}"
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["compilations"] = state.meter()[0] - compiled[0]
    entry["compile_seconds"] = round(state.meter()[1] - compiled[1], 1)
    return entry


# ---------------------------------------------------------------- the runner, on the client


def gpu_count() -> int:
    """How many NVIDIA GPUs this machine has (``nvidia-smi -L``), 0 without one."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def local_cluster(workers: int | None = None, dashboard_address=":8787", log_level: int = logging.WARNING):
    """A Dask cluster on this machine: one worker on a CPU (TensorFlow uses every core), or
    :data:`WORKERS_PER_GPU` workers sharing each GPU (``workers`` in all, spread over the GPUs).

    Each GPU worker sees its GPU alone and takes its share of the device memory for JAX
    (``XLA_PYTHON_CLIENT_MEM_FRACTION``, no preallocation). One thread a worker: a worker
    trains one fold at a time. Dask logs at ``log_level`` and above (see :func:`dask_log_level`).
    """
    from distributed import Nanny, Scheduler, SpecCluster

    gpus = gpu_count()
    n = workers or (gpus * WORKERS_PER_GPU if gpus else 1)
    specs = {}
    for i in range(n):
        env = {}
        if gpus:
            share = -(-n // gpus)  # workers on this one's GPU
            env = {"CUDA_VISIBLE_DEVICES": str(i % gpus), "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
                   "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / share:.3f}"}
        specs[f"worker-{i}"] = {"cls": Nanny, "options": {"nthreads": 1, "env": env, "host": "127.0.0.1"}}
    if importlib.util.find_spec("bokeh") is None:  # Dask's dashboard needs bokeh
        dashboard_address = None
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": dashboard_address, "host": "127.0.0.1"}}
    dask_log_level(log_level)
    return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=log_level, name="xray-transfer")


def run_grid(experiments, dataset, root="artifacts", client=None, settings=None, weights="offline",
             models="data/models", scheduler="dask LocalCluster", on_done=None, progress=True, log=print,
             together=False) -> list[dict]:
    """Make every missing task of ``experiments`` on ``client``'s cluster; return one entry per task.

    A task is a fold, or with ``together`` all the missing folds of a run, trained as one
    compiled JAX program on one worker (:mod:`xray_transfer.fold_parallel`; Keras on JAX).

    Tasks are submitted with their experiment's priority (the benchmark after all others, so
    it holds the device alone). Tasks that share a backbone, its weights and seed prefer the
    same worker (loose worker restrictions), where its :class:`GridState` keeps their frozen
    outputs and compiled model. ``on_done(entry)`` is called as each task lands (in a thread of
    its own, one at a time). Each entry is also appended to ``<root>/grid-log.jsonl``.
    """
    from distributed import progress as progress_bar
    from distributed import wait

    root, settings = Path(root), dict(settings or {})
    client.register_plugin(GridState(), name=GridState.name)
    addresses = sorted(client.scheduler_info()["workers"])
    groups: dict = {}
    phases: list[list] = [[], []]
    for exp in experiments:
        base = {"experiment": asdict(exp), "dataset": str(Path(dataset).resolve()), "root": str(root.resolve()),
                "models": str(Path(models).resolve()), "settings": settings, "weights": weights,
                "scheduler": scheduler}
        if exp.kind == "cv":
            n_splits = settings.get("n_splits") or exp.params.get("n_splits", 10)
            folds = [k for k in folds_wanted(exp, n_splits) if not (root / exp.out / f"fold-{k:02d}.json").exists()]
            tasks = ([{**base, "fold": folds}] if together and len(folds) > 1 else [{**base, "fold": k} for k in folds])
        else:
            tasks = [{**base, "fold": None}]
        group = json.dumps([exp.params.get(k) for k in ("backbone", "seed", "weights")])
        where = addresses[groups.setdefault(group, len(groups)) % len(addresses)] if addresses else None
        phases[exp.kind == "bench"] += [(exp, task, where) for task in tasks]
    entries, lock = [], threading.Lock()

    def landed(future):
        try:
            entry = future.result()
        except Exception as err:  # noqa: BLE001 -- a failed task is reported; the others go on
            exp, fold = names[future.key]
            entry = {"experiment": exp, "fold": fold, "status": f"failed: {type(err).__name__}: {err}"}
        with lock:
            entries.append(entry)
            with open(root / "grid-log.jsonl", "a") as f:
                f.write(json.dumps(entry, default=str) + "\n")
            if log is not None and not (progress and sys.stdout.isatty()):
                where = f" on {entry['host']}, {entry['device']}, {entry['seconds']} s" if "host" in entry else ""
                log(f"[{len(entries)}/{n_tasks}] {entry['experiment']}"
                    f"{'' if entry['fold'] is None else ' fold ' + str(entry['fold'])}: {entry['status']}{where}")
            if on_done is not None:
                on_done(entry)

    root.mkdir(parents=True, exist_ok=True)
    names, n_tasks = {}, sum(map(len, phases))
    for phase in phases:
        futures = []
        for exp, task, where in phase:
            key = f"{exp.name} fold {task['fold']}" if task["fold"] is not None else exp.name
            names[key] = (exp.name, task["fold"])
            prefer = {"workers": [where], "allow_other_workers": True} if where and len(addresses) > 1 else {}
            fut = client.submit(run_task, task, key=key, priority=exp.priority, pure=False, **prefer)
            fut.add_done_callback(landed)
            futures.append(fut)
        if not futures:
            continue
        if progress and sys.stdout.isatty():
            progress_bar(futures, notebook=False)
            print()
        wait(futures)
        while len(entries) < sum(map(len, phases[:phases.index(phase) + 1])):  # the callbacks' last lines
            time.sleep(0.05)
    return entries


def commit_paths(repo, paths, message, log=print) -> None:
    """Commit ``paths`` (and only them) in the git checkout ``repo``, retrying while the index is held."""
    for _ in range(10):
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *map(str, paths)], capture_output=True)
        if add.returncode == 0:
            staged = subprocess.run(["git", "-C", str(repo), "diff", "--cached", "--quiet", "--", *map(str, paths)])
            if staged.returncode == 0:
                return
            done = subprocess.run(["git", "-C", str(repo), "commit", "-q", "-m", message, "--", *map(str, paths)],
                                  capture_output=True)
            if done.returncode == 0:
                return
        time.sleep(3)
    log(f"could not commit {' '.join(map(str, paths))}")


def render_page(exp: Experiment, root, dataset) -> Path:
    """Execute the training chapter for the finished run ``exp`` into its folder (``training.ipynb``).

    The chapter trains nothing here (``run_folds=False``): it reads the folds the grid made.
    """
    import jupytext

    from .chapter import execute
    repo = Path(__file__).resolve().parents[2]
    nb = repo / "_build" / "papermill" / f"training-{os.getpid()}.ipynb"
    nb.parent.mkdir(parents=True, exist_ok=True)
    jupytext.write(jupytext.read(repo / "notebooks" / "training.md"), nb)
    out = Path(root).resolve() / exp.out
    here = repo / "notebooks"  # the chapter's paths relative to its working folder: no machine path in the page
    params = [("output_dir", os.path.relpath(out, here)), ("dataset_dir", os.path.relpath(Path(dataset).resolve(), here)),
              ("run_folds", "False"),
              *((k, str(v)) for k, v in exp.params.items())]
    execute(nb, out / ".training.tmp.ipynb", parameters=params, cwd=repo / "notebooks")
    os.replace(out / ".training.tmp.ipynb", out / "training.ipynb")
    return out / "training.ipynb"


def after_each_task(root, dataset, repo=".", commit=False, pages=False, log=print):
    """An ``on_done`` for :func:`run_grid`: as each task lands, render the training page of a run it
    completed (``pages``; and Tables 1-3, README's block and figure after a paper run), and commit
    what it wrote (``commit``: each fold, model and benchmark; only those paths)."""
    root, repo = Path(root).resolve(), Path(repo).resolve()

    def on_done(entry):
        if entry.get("status", "").startswith("failed") or entry.get("status") == "made by another process":
            return
        exp = find(entry["experiment"])
        paths = [root / exp.out]
        what = f"fold {entry['fold']}" if entry["fold"] is not None else "made"
        if pages and exp.kind == "cv" and status(exp, root)["state"] == "done":
            try:
                render_page(exp, root, dataset)
                what += ", run complete, page rendered"
                if exp.name.startswith("paper/") and root == repo / "artifacts":
                    for flag in (["--write"], ["--glance", "book/images/at_a_glance.png"]):
                        subprocess.run([sys.executable, "-m", "xray_transfer.results", *flag], cwd=repo, check=True,
                                       capture_output=True)
                    paths += [repo / "results", repo / "README.md", repo / "book" / "images" / "at_a_glance.png"]
            except Exception as err:  # noqa: BLE001 -- the folds stay; the page can be rendered later
                log(f"{exp.name}: page not rendered ({type(err).__name__}: {err})")
        if commit:
            if repo not in root.parents:
                log(f"{root}: outside the checkout {repo}, not committed")
                return
            commit_paths(repo, [p.relative_to(repo) for p in paths],
                         f"{exp.name}: {what} ({entry.get('device')}, {entry.get('seconds')} s)", log)
    return on_done


def dask_log_level(level: int = logging.WARNING) -> None:
    """Let Dask log at ``level`` and above, in this process and in the worker processes started after.

    Dask's documented ``logging`` setting, as the environment variable ``DASK_LOGGING__DISTRIBUTED``:
    a worker process reads it when it imports distributed, before any setting sent by its nanny.
    """
    os.environ["DASK_LOGGING__DISTRIBUTED"] = logging.getLevelName(level).lower()
    logging.getLogger("distributed").setLevel(level)


def connect(scheduler: str | None, workers: int | None, log=print, debug: bool = False):
    """A Dask client: to the scheduler at ``scheduler``, or to a new :func:`local_cluster`.

    Dask logs warnings and errors; with ``debug`` also its INFO lines (workers starting, ...).
    """
    from distributed import Client

    level = logging.INFO if debug else logging.WARNING
    dask_log_level(level)
    if scheduler:
        try:
            client = Client(scheduler, timeout="5s")
        except (OSError, TimeoutError) as err:
            raise ConnectionError(f"--scheduler {scheduler}: no Dask scheduler answers there ({err}); start one "
                                  "(`dask scheduler`) or leave --scheduler out for this machine") from None
        return client, f"dask scheduler {scheduler}"
    cluster = local_cluster(workers, log_level=level)
    client = Client(cluster)
    dashboard = (f"dashboard {client.dashboard_link}" if importlib.util.find_spec("bokeh")
                 else "no dashboard (`pip install bokeh` for Dask's)")
    log(f"Dask LocalCluster: {len(cluster.workers)} worker(s) on {cluster.scheduler_address}; {dashboard}")
    return client, f"dask local cluster ({len(cluster.workers)} workers)"


def missing_weights(exp: Experiment, weights="offline") -> str | None:
    """Why ``exp``'s initial weights are not on this machine, or None."""
    from .models import resolve_weights
    if "backbone" not in exp.params or weights != "offline":
        return None
    try:
        resolve_weights(exp.params["backbone"], "offline")
    except FileNotFoundError as err:
        return str(err)
    return None
