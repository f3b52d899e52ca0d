"""A GPU lease: what comes back from ``scripts/gpu_run.sh`` is adopted into ``artifacts/``.

``scripts/gpu_run.sh`` makes the experiments ``artifacts/`` lacks with ``xray-transfer experiments
run`` (:mod:`xray_transfer.experiments`) on the GPU machine, into ``.gpu/out`` laid out as
``artifacts/``, and packs it for the way back. Here:

    python -m xray_transfer.gpu_plan adopt .gpu/out --repo .   # take finished runs into artifacts/
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


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


def _complete(run_dir: Path) -> bool:
    """Whether a run has every fold, on folds that this scikit-learn draws again."""
    from .train import folds_drawn_again

    try:
        rec = json.loads((run_dir / "run.json").read_text())
        return len(list(run_dir.glob("fold-*.json"))) == rec["params"]["n_splits"] and folds_drawn_again(run_dir)
    except (OSError, ValueError, KeyError):  # no folds.csv, or a damaged record
        return False


def lease_name(gpu_log) -> str:
    """A lease's folder name: the start of its first call, from ``gpu-log.txt`` ("2026-11-28T04-58-46Z")."""
    try:
        first = next(line for line in Path(gpu_log).read_text().splitlines() if line.startswith("start "))
    except (OSError, StopIteration):
        return "unknown-start"
    return first.split()[1].replace(":", "-")


#: The logs a lease brings back: the grid's (one line per task) and the older plan's.
LOGS = ("grid-log.jsonl", "plan-log.jsonl")


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
            shutil.copytree(run_dir, tmp, ignore=shutil.ignore_patterns(".*"))  # no stale locks
            shutil.rmtree(dest, ignore_errors=True)
            tmp.rename(dest)
            written.append(str(dest))
            log(f"{dest}: adopted")
    log_lines = [json.loads(line) for name in LOGS if (src / name).is_file()
                 for line in (src / name).read_text().splitlines()]
    if any(not e.get("smoke") and not e.get("settings") for e in log_lines):  # the logs of a book's run
        dest = art / "gpu-plan" / lease_name(src / "gpu-log.txt")
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*LOGS, "gpu-log.txt"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
                written.append(str(dest / name))
    for bench in [src / "benchmark" / "benchmark.json", src / "benchmark" / "gpu" / "benchmark.json"]:
        if not bench.is_file():
            continue
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
    a = sub.add_parser("adopt", help="copy finished runs and the benchmark into artifacts/")
    a.add_argument("src")
    a.add_argument("--repo", default=".")
    args = p.parse_args(argv)
    adopt(args.src, args.repo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
