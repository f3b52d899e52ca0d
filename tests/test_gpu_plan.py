"""Tests of a GPU lease: scripts/gpu_run.sh runs end to end
with smoke settings on the CPU, writing records that name the device and backend, skipping jobs
whose weights are not there, and packing what comes back."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from xray_transfer import benchmark, experiments, gpu_plan, train
from xray_transfer.data import assemble, pack
from xray_transfer.models import TABLE1

ROOT = Path(__file__).resolve().parents[1]


def test_status_says_what_artifacts_lack(tmp_path):
    """`experiments list` (and gpu_run.sh's default): what artifacts/ lacks, in priority order."""
    art = tmp_path / "artifacts"

    def write(path, record):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    write(art / "dataset" / "dataset.json", {"manifest_sha256": "m"})
    labels, patients = [0, 0, 1, 1, 2, 2, 0, 1, 2, 2], [f"p{i // 2}" for i in range(10)]
    for run, folds, manifest, grouped in [("runs/vgg19", 2, "m", False), ("runs/mobilenet", 1, "m", False),
                                          ("runs/xception", 2, "old", False), ("audit/grouped-vgg19", 2, "m", True)]:
        params = {"n_splits": 2, "seed": 0, "group_by_patient": grouped}
        write(art / run / "run.json", {"params": params, "dataset": {"manifest_sha256": manifest}})
        fold = train.make_folds(labels, 2, 0, patients if grouped else None)
        if grouped:
            fold = 1 - fold  # as if another scikit-learn had drawn the folds
        (art / run / "folds.csv").write_text("index,file,label,patient_id,fold\n" + "".join(
            f"{i},f{i}.png,{y},{g},{k}\n" for i, (y, g, k) in enumerate(zip(labels, patients, fold))))
        for k in range(folds):
            write(art / run / f"fold-{k:02d}.json", {})
    write(art / "models" / "vgg19.json", {"dataset": {"manifest_sha256": "m"}})
    write(art / "models" / "mobilenet.json", {"dataset": {"manifest_sha256": "old"}})
    row = {"plain": {}, "fast": {}}
    write(art / "benchmark" / "gpu" / "benchmark.json", {"manifest_sha256": "m", "backbones": {"vgg19": row}})
    manifest = experiments.manifest_of(art)

    def left():
        return [e.name for e in experiments.REGISTRY if experiments.status(e, art, manifest)["state"] != "done"]

    assert left()[:4] == ["paper/mobilenet", "paper/inception_v3", "paper/xception", "paper/inception_resnet_v2"]
    assert "final/vgg19" not in left() and "final/mobilenet" in left()  # made on another dataset
    assert experiments.status(experiments.find("paper/mobilenet"), art, manifest) == {"state": "partial", "done": 1, "of": 2}
    assert "paper/xception" in left()  # every fold, but made on another dataset
    assert "audit/grouped-vgg19" in left()  # every fold, but on folds this scikit-learn does not draw
    assert "benchmark/gpu" in left()
    write(art / "benchmark" / "gpu" / "benchmark.json",
          {"manifest_sha256": "m", "backbones": {b.key: row for b in TABLE1}})
    assert "benchmark/gpu" not in left()  # a row for every network: done


def staged_gpu_dir(tmp):
    """``tmp/gpu`` as `make gpu-stage` leaves .gpu: the pack of 18 synthetic X-rays and a stand-in for
    VGG19's offline weights file (random values, the registered name)."""
    import keras

    from xray_transfer.data import synthetic_collections
    from xray_transfer.models import OFFLINE_WEIGHTS

    cxr = synthetic_collections(tmp / "cxr")
    assemble(cxr, tmp / "ds", counts={"covid": 6, "normal": 6, "pneumonia": 6}, progress=False)
    work = tmp / "gpu"
    work.mkdir()
    pack(tmp / "ds", work / "dataset.npz")
    keras.applications.VGG19(include_top=False, weights=None, input_shape=(75, 100, 3)).save_weights(
        work / OFFLINE_WEIGHTS["vgg19"].file)
    return work


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """scripts/gpu_run.sh with SMOKE=1 on 18 synthetic X-rays: VGG19's run, MobileNet's (no weights file
    here: left out), VGG19's final model (sharing the run's frozen outputs) and the benchmark."""
    tmp = tmp_path_factory.mktemp("gpu")
    work = staged_gpu_dir(tmp)
    (work / "jax-cache").mkdir()  # as an earlier call of the lease left it
    (work / "jax-cache" / "an-earlier-entry").write_bytes(b"compiled")
    env = {**os.environ, "SMOKE": "1", "GPU_DIR": str(work), "OUT": str(tmp / "out"), "PYTHON": sys.executable,
           "KERAS_BACKEND": os.environ.get("SMOKE_BACKEND", "tensorflow")}
    for name in ("XRAY_WEIGHTS_DIR", "DATASET"):  # the script would take these over the smoke files
        env.pop(name, None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "paper/vgg19", "paper/mobilenet",
                           "final/vgg19", "benchmark/cpu"], env=env, capture_output=True, text=True, timeout=900)
    return proc, tmp


def test_gpu_script_runs_end_to_end_with_smoke_settings(smoke_run):
    proc, tmp = smoke_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp / "gpu" / "out"
    log = [json.loads(line) for line in (out / "grid-log.jsonl").read_text().splitlines()]
    assert [(e["experiment"], e["fold"]) for e in log] == [("paper/vgg19", 0), ("paper/vgg19", 1), ("final/vgg19", None),
                                                           ("benchmark/cpu", None)]  # priority order, benchmark last
    text = (tmp / "out" / "gpu-log.txt").read_text()
    assert "left out paper/mobilenet" in text and "mobilenet_1_0_224_imagenet_notop" in text
    assert all(e["device"] and e["backend"] and e["worker"] for e in log)
    assert "total command time:" in text
    assert "total command time:" in (out / "gpu-log.txt").read_text()  # kept on the machine, and packed
    # the cross-validation: every fold file says which device and backend made it
    run = json.loads((out / "runs" / "vgg19" / "run.json").read_text())
    assert run["folds_done"] == [0, 1] and run["params"]["n_splits"] == 2
    assert run["weights"]["file"].startswith("vgg19_imagenet_notop")
    assert run["feature_cache"]["used"] is True
    for f in sorted((out / "runs" / "vgg19").glob("fold-*.json")):
        fold = json.loads(f.read_text())
        assert fold["backend"] == log[0]["backend"] and fold["device"] == log[0]["device"]
        assert fold["made_by"]["scheduler"].startswith("dask local cluster")
    # the final model's record, and the benchmark in the schema of every device
    final = json.loads((out / "models" / "vgg19.json").read_text())
    assert final["params"]["backbone"] == "vgg19" and final["weights"]["sha256"] == run["weights"]["sha256"]
    bench = json.loads((out / "benchmark" / "benchmark.json").read_text())
    benchmark.check_record(bench)
    assert bench["persistent_compilation_cache"] is None  # plain fit compiled as in anyone's script
    new_entries = [p for p in (tmp / "gpu" / "jax-cache").iterdir() if p.name != "an-earlier-entry"]
    assert new_entries or log[0]["backend"] != "jax"  # the runs had the cache


def test_gpu_script_packs_everything_but_the_models_for_the_way_back(smoke_run):
    proc, tmp = smoke_run
    with tarfile.open(tmp / "out" / "gpu-out.tgz") as tar:
        names = set(tar.getnames())
    assert {"out/runs/vgg19/fold-01.json", "out/models/vgg19.json", "out/benchmark/benchmark.json",
            "out/grid-log.jsonl"} <= names
    assert not any(n.endswith(".keras") for n in names)


def test_gpu_script_sends_the_compilation_cache_back_for_a_later_lease(smoke_run):
    proc, tmp = smoke_run
    with tarfile.open(tmp / "out" / "jax-cache.tgz") as tar:
        assert "jax-cache/an-earlier-entry" in tar.getnames()
    assert "KiB packed in jax-cache.tgz" in (tmp / "out" / "gpu-log.txt").read_text()


def test_a_compilation_cache_too_large_for_the_way_back_is_named_and_left_on_the_machine(tmp_path):
    # only the script's packing is under test: `true` stands in for the plan's Python, which trains nothing
    work = tmp_path / "gpu"
    (work / "jax-cache").mkdir(parents=True)
    (work / "jax-cache" / "a-large-entry").write_bytes(os.urandom(17 * 1024 * 1024))  # does not compress
    env = {**os.environ, "GPU_DIR": str(work), "OUT": str(tmp_path / "out"), "PYTHON": "true"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "paper/vgg19"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "compilation cache: 1 entries" in proc.stdout and "(too large to come back)" in proc.stdout
    assert not (tmp_path / "out" / "jax-cache.tgz").exists()  # a file over 16 MiB would not come back
    assert (work / "jax-cache" / "a-large-entry").exists()  # the warm machine keeps it for the next call


def test_adopt_takes_only_finished_runs_and_never_replaces_one(smoke_run, tmp_path):
    proc, tmp = smoke_run
    out = tmp / "gpu" / "out"
    repo = tmp_path / "repo"
    (repo / "artifacts" / "runs").mkdir(parents=True)
    written = gpu_plan.adopt(out, repo, log=lambda *_: None)
    assert str(repo / "artifacts" / "runs" / "vgg19") in written
    assert (repo / "artifacts" / "runs" / "vgg19" / "fold-01.json").is_file()
    assert (repo / "artifacts" / "benchmark" / "benchmark.json").is_file()  # made on a CPU
    assert not (repo / "artifacts" / "gpu-plan").exists()  # a smoke run's logs are not the book's
    # a finished run in the repository is never replaced
    before = (repo / "artifacts" / "runs" / "vgg19" / "run.json").read_text()
    (out / "runs" / "vgg19" / "run.json").write_text(before.replace('"folds_done"', '"folds_done" '))
    assert str(repo / "artifacts" / "runs" / "vgg19") not in gpu_plan.adopt(out, repo, log=lambda *_: None)
    # an unfinished run is not adopted
    (out / "runs" / "vgg19" / "fold-01.json").rename(out / "runs" / "vgg19" / "x.json")
    try:
        repo2 = tmp_path / "repo2"
        assert not any("runs" in w for w in gpu_plan.adopt(out, repo2, log=lambda *_: None))
    finally:
        (out / "runs" / "vgg19" / "x.json").rename(out / "runs" / "vgg19" / "fold-01.json")
    # folds that this scikit-learn does not draw (another version drew them): not adopted; replaced here
    folds_csv = out / "runs" / "vgg19" / "folds.csv"
    drawn = folds_csv.read_text()
    head, *rows = drawn.splitlines()
    redrawn = "\n".join([head, *(r[:-1] + str(1 - int(r[-1])) for r in rows)]) + "\n"  # folds 0 and 1 swapped
    folds_csv.write_text(redrawn)
    try:
        assert not any("runs" in w for w in gpu_plan.adopt(out, tmp_path / "repo3", log=lambda *_: None))
    finally:
        folds_csv.write_text(drawn)
    (repo / "artifacts" / "runs" / "vgg19" / "folds.csv").write_text(redrawn)
    assert str(repo / "artifacts" / "runs" / "vgg19") in gpu_plan.adopt(out, repo, log=lambda *_: None)
    assert (repo / "artifacts" / "runs" / "vgg19" / "folds.csv").read_text() == drawn


def test_feature_store_shares_frozen_outputs_of_runs_with_the_same_frozen_part():
    import numpy as np

    from xray_transfer import train

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    cfg = train.make_config(backbone="vgg19", n_splits=2, epochs=1, batch_size=4, image_size=(32, 32))
    store = {}
    paper = train.Trainer(cfg, images, store)
    bn = train.Trainer({**cfg, "batchnorm": "inference"}, images, store)  # same frozen part and pixels
    assert len(store) == 1 and bn.inputs is paper.inputs
    alone = train.Trainer(cfg, images)  # computed afresh: the same values
    np.testing.assert_array_equal(alone.inputs[0], paper.inputs[0])
    train.Trainer(cfg, train.hide_lungs(images), store)  # other pixels: other frozen outputs
    assert len(store) == 2


def test_adopt_keeps_each_lease_s_logs_in_a_folder_of_its_own(tmp_path):
    for start in ("2026-11-27T22:41:14Z", "2026-11-28T04:58:46Z"):
        src = tmp_path / start / "out"
        src.mkdir(parents=True)
        (src / "grid-log.jsonl").write_text(json.dumps({"experiment": "paper/vgg19", "settings": {}}) + "\n")
        (src / "gpu-log.txt").write_text(f"start {start}\nNVIDIA H200\ntotal command time: 9 s (rc 0)\n")
        gpu_plan.adopt(src, tmp_path / "repo", log=lambda *_: None)
    leases = tmp_path / "repo" / "artifacts" / "gpu-plan"
    assert sorted(p.name for p in leases.iterdir()) == ["2026-11-27T22-41-14Z", "2026-11-28T04-58-46Z"]
    assert "start 2026-11-27T22:41:14Z" in (leases / "2026-11-27T22-41-14Z" / "gpu-log.txt").read_text()


def test_a_remade_run_is_compared_fold_by_fold_with_the_committed_run_of_the_same_identity(smoke_run, tmp_path):
    """Matched by identity wherever it lies (Table 2's run made again on JAX is committed as
    robustness/<backbone>/backend-jax); identical calls found identical, a changed call counted."""
    import numpy as np

    _, tmp = smoke_run
    src = tmp_path / "out"
    shutil.copytree(tmp / "gpu" / "out" / "runs", src / "runs")
    repo = tmp_path / "repo"
    shutil.copytree(src / "runs" / "vgg19", repo / "artifacts" / "robustness" / "vgg19" / "backend-jax")
    (src / "grid-log.jsonl").write_text(json.dumps({"experiment": "paper/vgg19", "settings": {}}) + "\n")
    (src / "gpu-log.txt").write_text("start 2026-12-05T00:00:00Z\n")
    [row] = gpu_plan.agreement(src, repo)
    assert row["committed"] == "artifacts/robustness/vgg19/backend-jax" and row["remade"] == "runs/vgg19"
    assert (row["verdict"], row["calls_same"], row["max_prob_diff"]) == ("identical calls", row["n"], 0)
    # one held-out image called otherwise in the remake
    fold = src / "runs" / "vgg19" / "fold-00.json"
    rec = json.loads(fold.read_text())
    probs = np.asarray(rec["probs"])
    rec["probs"][0] = np.roll(probs[0], 1).tolist()
    fold.write_text(json.dumps(rec))
    [row] = gpu_plan.agreement(src, repo)
    assert (row["verdict"], row["calls_same"]) == ("calls differ", row["n"] - 1) and row["max_prob_diff"] > 0
    # adopt keeps the committed run and writes the comparison beside the lease's logs
    gpu_plan.adopt(src, repo, log=lambda *_: None)
    kept = json.loads((repo / "artifacts/gpu-plan/2026-12-05T00-00-00Z/agreement.json").read_text())
    assert kept == [row]
    # another identity (another seed) has nothing to be compared with
    run = json.loads((src / "runs" / "vgg19" / "run.json").read_text())
    (src / "runs" / "vgg19" / "run.json").write_text(json.dumps({**run, "identity_sha256": "0" * 64}))
    assert gpu_plan.agreement(src, repo) == []


def test_a_call_stops_its_grid_at_the_budget_and_still_packs_what_finished(tmp_path):
    """BUDGET_S stops `experiments run` (here a stand-in that would take 60 s) and the call ends
    normally: rc 0, a line in the log, the output packed for the way back."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/bash\ncase "$*" in *"experiments run"*) sleep 60 ;; esac\nexit 0\n')
    fake.chmod(0o755)
    work = tmp_path / "gpu"
    env = {**os.environ, "GPU_DIR": str(work), "OUT": str(tmp_path / "out"), "PYTHON": str(fake), "BUDGET_S": "2"}
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "paper/vgg19"], env=env,
                          capture_output=True, text=True, timeout=50)
    assert time.perf_counter() - t0 < 30
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stopped after BUDGET_S=2 s" in proc.stdout
    assert (tmp_path / "out" / "gpu-out.tgz").is_file()


def test_table2s_run_with_its_folds_together_is_timed_and_compared_with_the_run_made_fold_by_fold(tmp_path):
    """TOGETHER=vgg19: the same run (same identity) as the grid's paper/vgg19, its folds trained as one
    vmapped JAX program; the log gives its time, agreement compares it, adopt leaves it out."""
    pytest.importorskip("jax")
    work = staged_gpu_dir(tmp_path)
    env = {**os.environ, "SMOKE": "1", "TOGETHER": "vgg19", "GPU_DIR": str(work), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    for name in ("XRAY_WEIGHTS_DIR", "DATASET"):
        env.pop(name, None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "paper/vgg19"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"together vgg19: \d+ s \(rc 0\)", proc.stdout)
    src = work / "out"
    folds = [json.loads(p.read_text()) for p in sorted((src / "together" / "vgg19").glob("fold-*.json"))]
    assert len(folds) == 2 and all(f["made_by"]["trained"].startswith("together: 2 folds") for f in folds)
    repo = tmp_path / "repo"
    shutil.copytree(src / "runs" / "vgg19", repo / "artifacts" / "runs" / "vgg19")  # as if committed
    rows = {r["remade"]: r for r in gpu_plan.agreement(src, repo)}
    row = rows["together/vgg19"]
    assert row["committed"] == "artifacts/runs/vgg19" and row["max_prob_diff"] < 1e-3
    (src / "gpu-log.txt").write_text("start 2026-12-06T00:00:00Z\n")
    gpu_plan.adopt(src, repo, log=lambda *_: None)
    assert not (repo / "artifacts" / "together").exists()  # compared, never adopted
    # FOLDS_TOGETHER=1: the grid's task is a run, its folds trained together on one worker
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_run.sh"), "robustness/vgg19/seed-1"],
                          env={**env, "TOGETHER": "", "FOLDS_TOGETHER": "1"}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "robustness/vgg19/seed-1 fold [0, 1]: made 2 folds together" in proc.stdout
    folds = [json.loads(p.read_text()) for p in sorted((src / "robustness/vgg19/seed-1").glob("fold-*.json"))]
    assert [f["made_by"]["trained"] for f in folds] == ["together: 2 folds as one compiled JAX program (jax.vmap)"] * 2
    assert all(f["made_by"]["scheduler"].startswith("dask local cluster") for f in folds)
