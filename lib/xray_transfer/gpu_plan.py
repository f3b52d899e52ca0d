"""Every experiment of the book in one process, in priority order: the plan for a GPU lease.

The jobs are the paper runs, the audit runs and the final models (``scripts/cpu_queue.sh``
runs these on a CPU, from this list: ``python -m xray_transfer.gpu_plan queue``), then the
benchmark. One process runs them all, so the dataset is read once, each model is built and
compiled once and reused by every run that trains it (``train.get_trainer``: a paper run, its
audit runs and its final fit), and the fast path's frozen outputs are computed once per
backbone, weights, image size and pixels, then shared by every run that has the same frozen
part. With JAX's persistent compilation cache (``scripts/gpu_run.sh`` sets it), a call after the first compiles
nothing it compiled before (the script runs the benchmark in a process of its own,
without that cache, so that its plain path compiles as anyone's would). A job whose offline weights file is not on this machine is
skipped with a note (a later call that brings the file runs it); every run resumes from its
finished folds, so a call can be repeated until all is done.

    python -m xray_transfer.gpu_plan run --dataset data/dataset.npz --out .gpu/out [--smoke] [JOB ...]
    python -m xray_transfer.gpu_plan adopt .gpu/out --repo .   # take finished runs into artifacts/
    python -m xray_transfer.gpu_plan jobs                      # the jobs in priority order

Output, under ``--out``, as in ``artifacts/``: ``runs/<backbone>``, ``audit/<name>``,
``models/<backbone>.json`` (the ``.keras`` files stay in ``keras/``, too large to travel
back), ``benchmark/benchmark.json``, and ``plan-log.jsonl`` (one line per job: seconds,
device, backend, what happened, and with JAX the XLA compilations and their seconds).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

#: The jobs, in priority order: the paper runs, the audit runs (BatchNorm comparison first), the
#: final models, then the benchmark. ``scripts/cpu_queue.sh`` takes all but the benchmark from here.
JOBS = ("paper/vgg19", "paper/mobilenet", "paper/inception_v3", "paper/xception", "paper/inception_resnet_v2",
        "audit/bn-batch_statistics-inception_v3", "audit/bn-batch_statistics-mobilenet",
        "audit/bn-inference-inception_v3", "audit/bn-inference-mobilenet", "audit/grouped-mobilenet",
        "audit/grouped-vgg19", "audit/lungs-hidden-in-frame-mobilenet", "audit/lungs-hidden-in-frame-vgg19",
        "final/vgg19", "final/mobilenet", "final/inception_v3", "final/xception", "final/inception_resnet_v2",
        "bench/all")
#: Reduced settings that check the plan itself in a minute or two (``--smoke``).
SMOKE = dict(limit=60, n_splits=2, epochs=1, image_size=(75, 100))
#: The benchmark's settings (the whole dataset); with ``--smoke`` VGG19 alone, with the smoke settings.
BENCH = dict(epochs=2)


def job_spec(job: str) -> dict:
    """What a job runs: ``kind`` (cv, final, bench), output path below the root, training parameters.

    >>> job_spec("audit/grouped-vgg19")["params"]
    {'backbone': 'vgg19', 'group_by_patient': True}
    """
    from .models import BACKBONES

    kind, _, name = job.partition("/")
    variants = {"bn-inference-": {"batchnorm": "inference"}, "bn-batch_statistics-": {"batchnorm": "batch_statistics"},
                "grouped-": {"group_by_patient": True}, "lungs-hidden-in-frame-": {"image_mask": "lungs_hidden_in_frame"}}
    spec = None
    if kind == "paper":
        spec = {"kind": "cv", "out": f"runs/{name}", "params": {"backbone": name}}
    elif kind == "audit":
        for prefix, extra in variants.items():
            if name.startswith(prefix):
                spec = {"kind": "cv", "out": f"audit/{name}", "params": {"backbone": name[len(prefix):], **extra}}
    elif kind == "final":
        spec = {"kind": "final", "out": f"models/{name}.json", "params": {"backbone": name}}
    elif job == "bench/all":
        spec = {"kind": "bench", "out": "benchmark", "params": {}}
    if spec is None or spec["params"].get("backbone", "vgg19") not in BACKBONES:
        raise ValueError(f"unknown job {job!r}; known: {', '.join(JOBS)}")
    return spec


def queue_line(job: str) -> str:
    """One job as ``scripts/cpu_queue.sh`` reads it, tab-separated: job, kind, output below
    ``artifacts/``, the ``xray-transfer train``/``final`` flags, the training chapter's papermill
    parameters.

    >>> queue_line("audit/grouped-vgg19").split("\\t")
    ['audit/grouped-vgg19', 'cv', 'audit/grouped-vgg19', '--backbone vgg19 --group-by-patient', '-p backbone vgg19 -p group_by_patient True']
    """
    spec = job_spec(job)
    flags, params = [], []
    for key, value in spec["params"].items():
        flags += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
        params += ["-p", key, str(value)]
    return "\t".join([job, spec["kind"], spec["out"], " ".join(flags), " ".join(params)])


def _weights_missing(backbone: str) -> str | None:
    from .models import resolve_weights
    try:
        resolve_weights(backbone, "offline")
    except FileNotFoundError as err:
        return str(err)
    return None


def _compile_meter():
    """With Keras on JAX: a function giving (compilations, seconds) so far, from ``jax.monitoring``."""
    import keras
    if keras.backend.backend() != "jax":
        return None
    import jax.monitoring

    total = [0, 0.0]

    def note(name, secs, **_):
        if name == "/jax/core/compile/backend_compile_duration":
            total[0] += 1
            total[1] += secs

    jax.monitoring.register_event_duration_secs_listener(note)
    return lambda: tuple(total)


def run_plan(dataset_path, out_root, jobs=JOBS, smoke=False, progress=False, log=print) -> list[dict]:
    """Run ``jobs`` in order into ``out_root``; return one record per job (also in ``plan-log.jsonl``).

    A job that fails is recorded and the plan goes on with the next one. Run ``bench/all`` in a
    process of its own without JAX's persistent compilation cache (``scripts/gpu_run.sh`` does),
    so that plain ``model.fit`` compiles as in anyone's script and holds the device alone.
    """
    from .benchmark import run_benchmark
    from .data import load_dataset
    from .provenance import environment
    from .train import cross_validate, fit_final

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    settings = dict(SMOKE) if smoke else {}
    limit = settings.pop("limit", None)
    dataset = load_dataset(dataset_path, limit=limit)
    env = environment()
    store: dict = {}  # frozen outputs shared between runs
    trainers: dict = {}  # one Trainer per model and training settings, its compiled steps kept
    meter = _compile_meter()
    done = []
    for job in jobs:
        spec = job_spec(job)
        t0, compiled = time.perf_counter(), meter() if meter else None
        entry = {"job": job, "device": env["device"], "backend": env["backend"], "smoke": smoke}
        missing = _weights_missing(spec["params"]["backbone"]) if "backbone" in spec["params"] else None
        try:
            if missing:
                entry["status"] = "skipped: weights file not on this machine"
                entry["detail"] = missing
            elif spec["kind"] == "cv":
                rec = cross_validate(dataset, out_root / spec["out"], progress=progress, feature_store=store,
                                     trainer_store=trainers, weights="offline", **spec["params"], **settings)
                entry["status"] = f"folds done {rec['folds_done']}"
            elif spec["kind"] == "final":
                key = spec["params"]["backbone"]
                record = out_root / spec["out"]
                if record.is_file() and json.loads(record.read_text())["dataset"]["manifest_sha256"] == \
                        dataset.manifest_sha256 and not smoke:
                    entry["status"] = "done before"
                else:
                    rec = fit_final(dataset, out_root / "keras" / f"{key}.keras", progress=progress,
                                    feature_store=store, trainer_store=trainers, weights="offline",
                                    **spec["params"], **settings)
                    record.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out_root / "keras" / f"{key}.json", record)
                    entry["status"] = f"model sha256 {rec['model_sha256'][:12]}"
            elif _benchmarked(out_root / spec["out"] / "benchmark.json", dataset.manifest_sha256) and not smoke:
                entry["status"] = "done before"
            else:
                bench = (dict(BENCH, epochs=1, backbones=["vgg19"], limit=SMOKE["limit"], n_splits=SMOKE["n_splits"],
                              image_size=SMOKE["image_size"]) if smoke else dict(BENCH))
                res = run_benchmark(dataset_path, out_root / spec["out"], **bench)
                entry["status"] = "speed-ups " + ", ".join(
                    f"{k} x{r['protocol_speedup']:.1f}" for k, r in res["backbones"].items())
        except Exception as err:  # one job's failure must not cost the others their device time
            entry["status"] = f"failed: {type(err).__name__}: {err}"
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        if meter:  # where the time goes: XLA compilations (count, seconds) during the job
            entry["compilations"] = meter()[0] - compiled[0]
            entry["compile_seconds"] = round(meter()[1] - compiled[1], 1)
        done.append(entry)
        log(f"== {job}: {entry['status']} ({entry['seconds']} s)")
        with open(out_root / "plan-log.jsonl", "a") as f:
            f.write(json.dumps(entry, default=str) + "\n")
    return done


def _benchmarked(path: Path, manifest_sha256: str) -> bool:
    """Whether ``path`` is a benchmark record of this dataset with a row for every network."""
    from .models import BACKBONES
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return record.get("manifest_sha256") == manifest_sha256 and set(BACKBONES) <= set(record.get("backbones", {}))


def _complete(run_dir: Path) -> bool:
    """Whether a run has every fold, on folds that this scikit-learn draws again."""
    from .train import folds_drawn_again

    try:
        rec = json.loads((run_dir / "run.json").read_text())
        return len(list(run_dir.glob("fold-*.json"))) == rec["params"]["n_splits"] and folds_drawn_again(run_dir)
    except (OSError, ValueError, KeyError):  # no folds.csv, or a damaged record
        return False


def todo(repo=".", jobs=JOBS) -> list[str]:
    """The jobs whose results the repository's ``artifacts/`` lacks, in priority order: what a lease
    should run (``scripts/gpu_run.sh`` with no job named runs these).

    A run is done when every fold is there, on folds that this scikit-learn draws again, and it
    was made on the dataset of ``artifacts/dataset/dataset.json``; a final model when its record
    was; the benchmark when the GPU's record was and has a row for every network.
    """
    art = Path(repo) / "artifacts"
    manifest = json.loads((art / "dataset" / "dataset.json").read_text())["manifest_sha256"]

    def made_on(path, *keys):
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        for key in keys:
            record = record.get(key, {})
        return record or None

    left = []
    for job in jobs:
        spec = job_spec(job)
        out = art / spec["out"]
        if spec["kind"] == "cv":
            done = _complete(out) and made_on(out / "run.json", "dataset", "manifest_sha256") == manifest
        elif spec["kind"] == "final":
            done = made_on(out, "dataset", "manifest_sha256") == manifest
        else:
            done = _benchmarked(art / "benchmark" / "gpu" / "benchmark.json", manifest)
        if not done:
            left.append(job)
    return left


def lease_name(gpu_log) -> str:
    """A lease's folder name: the start of its first call, from ``gpu-log.txt`` ("2026-11-28T04-58-46Z")."""
    try:
        first = next(line for line in Path(gpu_log).read_text().splitlines() if line.startswith("start "))
    except (OSError, StopIteration):
        return "unknown-start"
    return first.split()[1].replace(":", "-")


def adopt(src_root, repo=".", log=print) -> list[str]:
    """Copy the finished runs and the benchmark from a plan's output into ``artifacts/``.

    A run folder replaces the repository's only when it is complete and the repository's is
    missing or incomplete (never a finished run). Complete means every fold, on folds that this
    scikit-learn draws again: a run made where another version drew other patient-grouped folds
    is not adopted, and one in the repository is replaced. A GPU's benchmark goes to
    ``artifacts/benchmark/gpu/``, a CPU's to ``artifacts/benchmark/`` (where `make benchmark`
    writes). The plan's logs (not a smoke run's) go to ``artifacts/gpu-plan/<lease>/``, a folder
    per lease named by :func:`lease_name`. Final-model records are not adopted: their ``.keras``
    files cannot travel back. Returns the paths written.
    """
    src, art = Path(src_root), Path(repo) / "artifacts"
    written = []
    for run_dir in sorted([*src.glob("runs/*"), *src.glob("audit/*")]):
        dest = art / run_dir.relative_to(src)
        if not _complete(run_dir):
            log(f"{run_dir}: unfinished, or on folds this scikit-learn does not draw: not adopted")
        elif _complete(dest):
            log(f"{dest}: already finished, kept")
        else:
            tmp = dest.with_name(f".{dest.name}.adopt")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(run_dir, tmp)
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            written.append(str(dest))
            log(f"{dest}: adopted")
    log_lines = (src / "plan-log.jsonl").read_text().splitlines() if (src / "plan-log.jsonl").is_file() else []
    if any(not json.loads(line).get("smoke") for line in log_lines):  # the logs of a real plan
        dest = art / "gpu-plan" / lease_name(src / "gpu-log.txt")
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("plan-log.jsonl", "gpu-log.txt"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
                written.append(str(dest / name))
    bench = src / "benchmark" / "benchmark.json"
    if bench.is_file():
        device = json.loads(bench.read_text())["environment"]["device"]
        dest = art / "benchmark" / ("" if device.startswith("cpu") else "gpu") / "benchmark.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bench, dest)
        written.append(str(dest))
        log(f"{dest}: adopted ({device})")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m xray_transfer.gpu_plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the jobs in priority order (resumes)")
    r.add_argument("jobs", nargs="*", help=f"default: all, i.e. {' '.join(JOBS)}")
    r.add_argument("--dataset", required=True, help="dataset folder or .npz pack")
    r.add_argument("--out", required=True, help="output root (runs/, audit/, models/, benchmark/)")
    r.add_argument("--smoke", action="store_true", help=f"tiny settings {SMOKE} to check the plan")
    r.add_argument("--progress", action="store_true")
    a = sub.add_parser("adopt", help="copy finished runs and the benchmark into artifacts/")
    a.add_argument("src")
    a.add_argument("--repo", default=".")
    sub.add_parser("jobs", help="print the jobs in priority order")
    t = sub.add_parser("todo", help="print the jobs whose results artifacts/ lacks, in priority order")
    t.add_argument("--repo", default=".")
    q = sub.add_parser("queue", help="print the CPU queue's jobs (all but the benchmark), a line each: "
                                     "job, kind, output, train flags, chapter parameters (tab-separated)")
    q.add_argument("jobs", nargs="*", help="default: all but bench/all")
    args = p.parse_args(argv)
    if args.cmd == "jobs":
        print("\n".join(JOBS))
    elif args.cmd == "todo":
        print("\n".join(todo(args.repo)))
    elif args.cmd == "queue":
        try:
            lines = [queue_line(job) for job in args.jobs or [j for j in JOBS if job_spec(j)["kind"] != "bench"]]
        except ValueError as err:
            print(f"cpu_queue: {err}", file=sys.stderr)
            return 2
        print("\n".join(lines))
    elif args.cmd == "adopt":
        adopt(args.src, args.repo)
    else:
        for job in args.jobs:
            job_spec(job)
        done = run_plan(args.dataset, args.out, args.jobs or JOBS, smoke=args.smoke, progress=args.progress)
        return int(any(e["status"].startswith("failed") for e in done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
