"""A GPU lease: what comes back from ``scripts/gpu_run.sh`` is adopted into ``artifacts/``.

``scripts/gpu_run.sh`` makes the experiments ``artifacts/`` lacks with ``xray-transfer experiments
run`` (:mod:`xray_transfer.experiments`) on the GPU machine, into ``.gpu/out`` laid out as
``artifacts/``, and packs it for the way back. Here:

    python -m xray_transfer.gpu_plan adopt .gpu/out --repo .   # take finished runs into artifacts/

A lease that makes again runs the repository already has (``REMAKE=1 scripts/gpu_run.sh``) is
checked fold by fold against them (:func:`agreement`): the same run (the same identity: parameters,
starting weights, data, image files) must give the same calls, exactly where it was made the same
way, otherwise within what chance moves a run.
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


#: Folders of an output root (laid out as ``artifacts/``) that hold cross-validation runs.
RUN_FAMILIES = ("runs", "audit", "robustness", "precision")
#: Runs a lease makes only to be compared with the committed ones, never adopted: ``together/<backbone>``,
#: Table 2's runs with their folds trained together (``TOGETHER=... scripts/gpu_run.sh``).
COMPARED_ONLY = ("together",)


def run_dirs(root, families=RUN_FAMILIES) -> list[Path]:
    """Every run folder (one with a ``run.json``) of ``families`` under ``root``."""
    root = Path(root)
    return sorted(p.parent for fam in families for p in (root / fam).glob("**/run.json"))


#: The logs a lease brings back: the grid's (one line per task) and the older plan's.
LOGS = ("grid-log.jsonl", "plan-log.jsonl")


def adopt(src_root, repo=".", log=print) -> list[str]:
    """Copy the finished runs and the benchmark from a plan's output into ``artifacts/``.

    A run folder (of :data:`RUN_FAMILIES`) replaces the repository's only when it is complete and the repository's is
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
    for run_dir in run_dirs(src):
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
    remade = agreement(src, repo)
    log_lines = [json.loads(line) for name in LOGS if (src / name).is_file()
                 for line in (src / name).read_text().splitlines()]
    if any(not e.get("smoke") and not e.get("settings") for e in log_lines):  # the logs of a book's run
        dest = art / "gpu-plan" / lease_name(src / "gpu-log.txt")
        dest.mkdir(parents=True, exist_ok=True)
        for name in (*LOGS, "gpu-log.txt"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dest / name)
                written.append(str(dest / name))
        if remade:
            (dest / "agreement.json").write_text(json.dumps(remade, indent=1) + "\n")
            written.append(str(dest / "agreement.json"))
            for r in remade:
                log(f"{r['remade']}: {r['verdict']} ({r['calls_same']} of {r['n']} calls the same as {r['committed']})")
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


def _identity(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("identity_sha256")
    except (OSError, ValueError):
        return None


def agreement(src_root, repo=".") -> list[dict]:
    """Each complete run under ``src_root`` that the repository already has complete, compared fold
    by fold with it.

    Runs are matched by identity (``identity_sha256``: parameters, starting weights, data and image
    files), wherever they lie: the default made again with Keras on JAX
    (``robustness/<backbone>/backend-jax``) is Table 2's run made another way. One dict per pair:
    ``remade`` and ``committed`` (paths), ``made_with`` and ``committed_with`` (backend / device),
    ``n`` (held-out images), ``calls_same`` (images called the same), ``max_prob_diff`` (largest
    difference of a class probability), per metric of Table 2 the pooled value of both
    (``metrics``, percent) and the ``verdict``: "identical calls" or "calls differ" (then how far
    the pooled metrics moved is what the robustness chapter's seed yardstick judges).
    """
    import numpy as np

    from .metrics import pooled
    from .results import is_complete, load_run
    from .robustness import METRICS, devices

    committed = {}
    art = Path(repo) / "artifacts"
    for d in run_dirs(art):
        run = load_run(d)
        if is_complete(run) and _complete(d):
            committed.setdefault(run["record"].get("identity_sha256"), d)
    out = []
    for d in run_dirs(src_root, RUN_FAMILIES + COMPARED_ONLY):
        match = committed.get(_identity(d))
        if match is None or not _complete(d):
            continue
        new, old = load_run(d), load_run(match)
        if [f["test_file"] for f in new["folds"]] != [f["test_file"] for f in old["folds"]]:
            continue  # the same identity holds the same folds; a damaged copy is not compared
        calls = [np.asarray(f["probs"]).argmax(1) for f in new["folds"]], \
            [np.asarray(f["probs"]).argmax(1) for f in old["folds"]]
        same = sum(int((a == b).sum()) for a, b in zip(*calls))
        n = sum(len(a) for a in calls[0])
        diff = max(float(np.abs(np.asarray(a["probs"]) - np.asarray(b["probs"])).max())
                   for a, b in zip(new["folds"], old["folds"]))
        pn, po = pooled(new["folds"]), pooled(old["folds"])
        out.append({"remade": str(d.relative_to(src_root)), "committed": str(match.relative_to(repo)),
                    "made_with": devices(new), "committed_with": devices(old), "n": n, "calls_same": same,
                    "max_prob_diff": round(diff, 6),
                    "metrics": {m: {"remade": 100 * pn[m], "committed": 100 * po[m]} for m in METRICS},
                    "verdict": "identical calls" if same == n else "calls differ"})
    return out


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
