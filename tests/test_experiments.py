"""The grid of experiments on Dask: the same fold records as one process, nothing lost when a
worker or the whole runner is killed, two runners never make one fold twice, clear errors.

Tiny settings throughout (VGG19 from random weights on the fast path, 2 folds, 1 epoch, small
images); the CPU is slow to start Keras in a new process, so each test starts few of them.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from xray_transfer import cli, train
from xray_transfer import experiments as grid
from xray_transfer.data import assemble, load_dataset, pack, synthetic_collections

E = grid.Experiment
#: two runs of one backbone (sharing a worker's compiled model) and one of another seed
EXPERIMENTS = [E("t/vgg19", "cv", "runs/vgg19", {"backbone": "vgg19"}, priority=10),
               E("t/grouped-vgg19", "cv", "audit/grouped-vgg19", {"backbone": "vgg19", "group_by_patient": True}, 5)]
SETTINGS = dict(n_splits=2, epochs=1, batch_size=8, image_size=(48, 64))


@pytest.fixture(scope="module")
def pack_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    cxr = synthetic_collections(root / "cxr", n_covid=20, n_normal=20, n_pneumonia=20)
    assemble(cxr, root / "ds", counts={"covid": 20, "normal": 20, "pneumonia": 20}, progress=False)
    return pack(root / "ds", root / "ds.npz")


def cluster(n_workers):
    from distributed import Client, LocalCluster
    c = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                     silence_logs=50)
    return c, Client(c)


def folds_of(run_dir):
    return {f["fold"]: f for f in train.load_folds(run_dir)}


@pytest.fixture(scope="module")
def two_workers(pack_path, tmp_path_factory):
    """The grid on a LocalCluster of two worker processes, and the same runs in this process."""
    out = tmp_path_factory.mktemp("two")
    c, client = cluster(2)
    with c, client:
        entries = grid.run_grid(EXPERIMENTS, pack_path, out / "grid", client, settings=SETTINGS, weights="none",
                                progress=False, log=None)
    ds = load_dataset(pack_path)
    for exp in EXPERIMENTS:
        train.cross_validate(ds, out / "serial" / exp.out, progress=False, weights="none", **exp.params, **SETTINGS)
    return out, entries


def test_two_workers_make_the_fold_records_one_process_makes(two_workers):
    out, entries = two_workers
    assert sorted((e["experiment"], e["fold"], e["status"]) for e in entries) == sorted(
        (exp.name, k, "made") for exp in EXPERIMENTS for k in (0, 1))
    assert len({e["worker"] for e in entries}) == 2  # both workers trained
    for exp in EXPERIMENTS:
        grid_run, serial = folds_of(out / "grid" / exp.out), folds_of(out / "serial" / exp.out)
        assert sorted(grid_run) == sorted(serial) == [0, 1]
        for k in (0, 1):
            assert grid_run[k]["test_file"] == serial[k]["test_file"]
            assert grid_run[k]["confusion"] == serial[k]["confusion"]
            # TensorFlow on the CPU is deterministic here: the same probabilities, to the records' 6 decimals
            np.testing.assert_allclose(grid_run[k]["probs"], serial[k]["probs"], atol=2e-6)
            made = grid_run[k]["made_by"]
            assert made["scheduler"] == "dask LocalCluster" and made["worker"].startswith("tcp://")
            assert made["host"] and grid_run[k]["device"]
        run = json.loads((out / "grid" / exp.out / "run.json").read_text())
        assert run["identity"] == json.loads((out / "serial" / exp.out / "run.json").read_text())["identity"]
        assert run["folds_done"] == [0, 1]
        assert not [p.name for p in (out / "grid" / exp.out).iterdir() if p.name.startswith(".")]  # no lock, no tmp
    assert len((out / "grid" / "grid-log.jsonl").read_text().splitlines()) == 4


def test_a_worker_killed_mid_fold_loses_only_that_fold(pack_path, tmp_path):
    """One worker (its nanny starts it again): once a fold is written, the worker training the next is
    killed with SIGKILL. Dask runs that task again; the run completes and the written fold is kept."""
    root = tmp_path / "grid"
    first = root / EXPERIMENTS[0].out / "fold-00.json"
    c, client = cluster(1)
    with c, client:
        result = {}
        runner = threading.Thread(target=lambda: result.update(entries=grid.run_grid(
            EXPERIMENTS, pack_path, root, client, settings=SETTINGS, weights="none", progress=False, log=None)))
        runner.start()
        killed = None
        deadline = time.time() + 600
        while killed is None and time.time() < deadline and runner.is_alive():
            if first.exists():
                locks = [p for p in root.glob("*/*/.fold-*.lock") if p != first.with_name(".fold-00.lock")]
                held = [h for h in map(train.held_by, locks) if h]
                if held:
                    pid = int(held[0].split(" pid ")[1])
                    mtime = first.stat().st_mtime_ns
                    os.kill(pid, signal.SIGKILL)
                    killed = held[0]
            time.sleep(0.2)
        runner.join(900)
    assert killed, "no fold was in progress after the first was written"
    assert first.stat().st_mtime_ns == mtime  # the finished fold is kept as it was
    for exp in EXPERIMENTS:
        assert sorted(folds_of(root / exp.out)) == [0, 1]
        assert not [p.name for p in (root / exp.out).iterdir() if p.name.startswith(".")]  # nothing half-written
    assert all(e["status"] == "made" for e in result["entries"]), result["entries"]


def xray_transfer(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "xray_transfer.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def smoke_run(pack_path, out):
    return xray_transfer("experiments", "run", "paper/vgg19", "--smoke", "--weights", "none", "--dataset", pack_path,
                         "--out", out, "--workers", "1")


def test_resume_after_the_runner_is_stopped(pack_path, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "vgg19"
    proc = smoke_run(pack_path, out)
    deadline = time.time() + 600
    while not (run_dir / "fold-00.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its cluster and its worker
    proc.communicate()
    first = (run_dir / "fold-00.json").read_bytes()
    again = smoke_run(pack_path, out)
    stdout, stderr = again.communicate(timeout=900)
    assert again.returncode == 0, stdout + stderr
    assert (run_dir / "fold-00.json").read_bytes() == first  # kept, not made again
    assert sorted(folds_of(run_dir)) == [0, 1]
    assert "to make, in priority order: paper/vgg19" in stdout
    log = [json.loads(line) for line in (out / "grid-log.jsonl").read_text().splitlines()]
    made = [e["fold"] for e in log if e["status"] == "made"]
    assert made.count(1) == 1 and made.count(0) <= 1  # fold 0's line lands only if the kill came after it
    assert "[1/1] paper/vgg19 fold 1: made" in stdout  # the second runner made fold 1 only


def test_two_runners_on_one_grid_never_make_one_fold_twice(pack_path, tmp_path):
    out = tmp_path / "out"
    procs = [smoke_run(pack_path, out) for _ in range(2)]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stdout + stderr
    log = [json.loads(line) for line in (out / "grid-log.jsonl").read_text().splitlines()]
    made = sorted(e["fold"] for e in log if e["status"] == "made")
    assert made == [0, 1], log  # each fold made once, by one of the two runners
    assert sorted(folds_of(out / "runs" / "vgg19")) == [0, 1]
    listing = subprocess.run([sys.executable, "-m", "xray_transfer.cli", "experiments", "list", "paper/vgg19",
                              "--out", out], capture_output=True, text=True)
    assert "paper/vgg19" in listing.stdout and " done " in listing.stdout and " 2/2 " in listing.stdout


def test_two_train_processes_on_one_folder_share_its_folds_and_another_run_is_refused(pack_path, tmp_path):
    """Issue 28, item 6: two `xray-transfer train` on one --out at once train each fold once, between
    them; a third with another seed refuses, naming the run that is there and who trains it."""
    out = tmp_path / "run"
    args = ["train", "--dataset", pack_path, "--out", out, "--backbone", "vgg19", "--weights", "none",
            "--n-splits", "2", "--epochs", "1", "--batch-size", "8", "--image-size", "48", "64"]
    procs = [xray_transfer(*args) for _ in range(2)]
    deadline = time.time() + 600
    while not list(out.glob(".fold-*.lock")) and time.time() < deadline:
        time.sleep(0.1)
    other = xray_transfer(*args, "--seed", "1")
    o_out, o_err = other.communicate(timeout=600)
    made = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stdout + stderr
        made += json.loads(stdout.split("made by this process ")[1].splitlines()[0])
    assert sorted(made) == [0, 1]  # each fold trained by one of the two, never by both
    assert other.returncode == 1 and "Traceback" not in o_err
    assert "holds a run with other parameters" in o_err and "'seed': 0" in o_err and "started on" in o_err
    assert json.loads((out / "run.json").read_text())["params"]["seed"] == 0
    assert {f["run_identity_sha256"] for f in folds_of(out).values()} == {
        json.loads((out / "run.json").read_text())["identity_sha256"]}


def run_cli(capsys, *argv):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_an_unknown_experiment_is_named_exit_1_no_traceback(capsys, tmp_path):
    status, out, err = run_cli(capsys, "experiments", "run", "paper/resnet50", "--out", tmp_path)
    assert status == 1 and "Traceback" not in err
    assert "no experiment matches 'paper/resnet50'" in err and "experiments list" in err


def test_an_unreachable_scheduler_is_named_exit_1_no_traceback(capsys, tmp_path, pack_path):
    status, out, err = run_cli(capsys, "experiments", "run", "paper/vgg19", "--smoke", "--weights", "none",
                               "--dataset", pack_path, "--out", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:9")
    assert status == 1 and "Traceback" not in err
    assert "--scheduler tcp://127.0.0.1:9: no Dask scheduler answers there" in err


def test_an_experiment_pinned_to_another_backend_is_refused(capsys, tmp_path, pack_path, monkeypatch):
    pinned = E("check/jax-vgg19", "cv", "audit/jax-vgg19", {"backbone": "vgg19"}, backend="jax")
    monkeypatch.setattr(grid, "REGISTRY", [*grid.REGISTRY, pinned])
    status, out, err = run_cli(capsys, "experiments", "run", "check/jax-vgg19", "--weights", "none",
                               "--dataset", pack_path, "--out", tmp_path / "out")
    assert status == 1 and "Traceback" not in err
    assert "must be made with Keras on jax" in err and "KERAS_BACKEND=jax" in err
    assert not (tmp_path / "out" / "audit").exists()


def test_the_registry_names_every_committed_run_and_list_matches_artifacts(capsys):
    repo = Path(__file__).resolve().parents[1]
    outs = {e.out for e in grid.REGISTRY}
    for run in [*repo.glob("artifacts/runs/*/run.json"), *repo.glob("artifacts/audit/*/run.json"),
                *repo.glob("artifacts/robustness/*/*/run.json")]:
        assert str(run.parent.relative_to(repo / "artifacts")) in outs, run
    status, out, err = run_cli(capsys, "experiments", "list", "--out", repo / "artifacts")
    assert status == 0
    assert any(line.startswith("paper/vgg19 ") and " done " in line for line in out.splitlines())
    assert grid.find("robustness/xception/backend-tensorflow").folds == (0, 1)
    assert [e.name for e in grid.select(["paper/*"])] == [f"paper/{b}" for b in grid.BACKBONES]


def test_every_registered_experiment_has_parameters_its_function_takes():
    """A typo in the registry (a parameter the trainer or the benchmark does not take) fails here, not in a GPU lease."""
    import inspect

    from xray_transfer import benchmark

    for exp in grid.REGISTRY:
        if exp.kind == "bench":
            inspect.signature(benchmark.run_benchmark).bind("dataset", "out", **exp.params)
        else:
            train.make_config(**exp.params)
    assert grid.find("benchmark/gpu").params["together"] is True  # the GPU benchmark times the folds together
